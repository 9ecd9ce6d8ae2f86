/* The capture page: shows the capture loop's instruction as it changes, lets the worker take the
   photo by hand, and sends the photo on for screening as soon as the loop has taken it. */
(function () {
  "use strict";
  var root = document.getElementById("capture");
  if (!root) return;
  var instruction = document.getElementById("instruction");
  var steady = document.getElementById("steady");
  var press = document.getElementById("press");
  var preview = document.getElementById("preview");
  var POLL_MS = 250;
  var done = false;
  var misses = 0;

  function leave() {
    done = true;
    preview.removeAttribute("src");  // close the live stream before the next page loads
  }

  function show(state) {
    if (state.error) {  // the server's page says what went wrong and what to do
      leave();
      window.location.reload();
      return;
    }
    instruction.textContent = state.instruction;
    instruction.classList.toggle("instruction-good", !!state.gradable);
    steady.max = state.needed || 1;
    steady.value = Math.min(state.streak || 0, steady.max);
    if (state.captured) {
      leave();
      document.getElementById("working").hidden = false;
      document.getElementById("accept").submit();
    }
  }

  function poll() {
    if (done) return;
    fetch(root.dataset.stateUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          leave();
          window.location.href = root.dataset.signinUrl + "?next=" + encodeURIComponent(window.location.pathname);
          return null;
        }
        return response.json();
      })
      .then(function (state) {
        if (state) { misses = 0; show(state); }
      })
      .catch(function () {
        misses += 1;
        if (misses > 8) instruction.textContent = "The unit is not answering. Wait a moment.";
      })
      .finally(function () {
        if (!done) window.setTimeout(poll, POLL_MS);
      });
  }

  press.addEventListener("click", function () {
    press.disabled = true;
    instruction.textContent = "Taking the photo - hold still";
    fetch(root.dataset.pressUrl, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": root.dataset.csrf } })
      .finally(function () { window.setTimeout(function () { press.disabled = false; }, 3000); });
  });

  poll();
})();
