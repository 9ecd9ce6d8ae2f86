/* An on-screen keypad for the PIN: the kiosk's touchscreen may have no keyboard. */
(function () {
  "use strict";
  document.querySelectorAll(".keypad").forEach(function (pad) {
    var input = document.getElementById(pad.dataset.for);
    if (!input) return;
    pad.hidden = false;
    pad.addEventListener("click", function (event) {
      var key = event.target.closest("[data-key]");
      if (!key) return;
      var k = key.dataset.key;
      if (k === "clear") input.value = "";
      else if (k === "back") input.value = input.value.slice(0, -1);
      else if (input.value.length < (input.maxLength > 0 ? input.maxLength : 8)) input.value += k;
    });
  });
})();
