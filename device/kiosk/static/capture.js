/* The capture page: shows the capture loop's instruction as it changes, lets the worker take the
   photo by hand, and sends the photo on for screening as soon as the loop has taken it. The page's
   capture token goes with every question: once another page has taken the camera over, this one
   says so, stops, and sends nothing. */
(function () {
  "use strict";
  var root = document.getElementById("capture");
  if (!root) return;
  var _ = window.GlaucoScreen._;
  var instruction = document.getElementById("instruction");
  var steady = document.getElementById("steady");
  var press = document.getElementById("press");
  var preview = document.getElementById("preview");
  var POLL_MS = 250;
  var SHUTTER_MS = 350;  // the flash plays out before the page moves on
  var done = false;
  var misses = 0;
  var token = root.dataset.token;
  var stateUrl = root.dataset.stateUrl + "?token=" + encodeURIComponent(token);

  // The photo is taken: a white flash and a short click, so the worker knows without looking at the
  // screen. The moment is kept for the page that follows (and for the browser test) in sessionStorage.
  function shutter() {
    var flash = document.getElementById("shutter");
    if (flash) flash.classList.add("shutter-on");
    try {
      var audio = new (window.AudioContext || window.webkitAudioContext)();
      var tone = audio.createOscillator();
      var gain = audio.createGain();
      tone.frequency.value = 1200;
      gain.gain.setValueAtTime(0.2, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.12);
      tone.connect(gain).connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.12);
    } catch (e) { /* no sound on this browser: the flash says it */ }
    try { window.sessionStorage.setItem("glaucoscreen.shutter", String(Date.now())); } catch (e) { /* private mode */ }
  }

  function taken() {  // the camera is another page's now: say so, send nothing
    leave();
    press.hidden = true;
    document.getElementById("steady").parentNode.hidden = true;
    instruction.hidden = true;
    document.getElementById("camera-taken").hidden = false;
  }

  function leave() {
    done = true;
    preview.removeAttribute("src");  // close the live stream before the next page loads
  }

  function show(state) {
    if (state.stale) {
      taken();
      return;
    }
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
      shutter();
      document.getElementById("working").hidden = false;
      window.setTimeout(function () { document.getElementById("accept").submit(); }, SHUTTER_MS);
    }
  }

  function poll() {
    if (done) return;
    fetch(stateUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
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
        if (misses > 8) instruction.textContent = _("The unit is not answering. Wait a moment.");
      })
      .finally(function () {
        if (!done) window.setTimeout(poll, POLL_MS);
      });
  }

  press.addEventListener("click", function () {
    press.disabled = true;
    instruction.textContent = _("Taking the photo - hold still");
    var body = new URLSearchParams({ token: token });
    fetch(root.dataset.pressUrl, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": root.dataset.csrf }, body: body })
      .then(function (response) { if (response.status === 409) taken(); })
      .finally(function () { window.setTimeout(function () { press.disabled = false; }, 3000); });
  });

  // A page brought back from the browser's history cache holds a spent token: ask the server afresh.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) window.location.reload();
  });

  poll();
})();
