/* The scripts' words in the page's language. Every page carries them in a JSON block (#kiosk-words) that the
   server fills from the catalogs with the `_("...")` messages Babel finds in these scripts; a word the block
   lacks is shown as written. */
(function () {
  "use strict";
  var words = {};
  var block = document.getElementById("kiosk-words");
  try { words = JSON.parse(block ? block.textContent : "{}"); } catch (e) { /* the page still works, in English */ }
  window.GlaucoScreen = window.GlaucoScreen || {};
  window.GlaucoScreen._ = function (message) { return words[message] || message; };
})();
