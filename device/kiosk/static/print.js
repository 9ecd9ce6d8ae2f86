/* The slip's Print button (inline handlers are not allowed by the kiosk's content policy). */
(function () {
  "use strict";
  var button = document.getElementById("print");
  if (button) button.addEventListener("click", function () { window.print(); });
})();
