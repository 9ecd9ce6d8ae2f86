/* The export page while an export runs: the progress bar follows the unit's export, and the page
   reloads to show the result (or the error) once it ends. Without this script a reload does the same. */
(function () {
  "use strict";
  var job = document.getElementById("export-job");
  if (!job || job.dataset.status !== "running") return;
  var bar = document.getElementById("export-progress");
  var count = document.getElementById("export-count");
  var POLL_MS = 1000;

  function poll() {
    fetch(job.dataset.stateUrl, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("state " + response.status);
        return response.json();
      })
      .then(function (state) {
        if (state.status !== "running") {
          window.location.reload();
          return;
        }
        if (state.total !== null && state.total !== undefined) {
          bar.max = state.total || 1;
          bar.value = state.done || 0;
          count.textContent = state.progress;  // in the page's words, from the server
        }
        window.setTimeout(poll, POLL_MS);
      })
      .catch(function () { window.location.reload(); });  // signed out, or the unit restarted: the page says which
  }
  window.setTimeout(poll, POLL_MS);
})();
