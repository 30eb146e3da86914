// flowtel serve: live updates without a page reload (no inline script; CSP script-src 'self').
// A page whose <main> carries data-live-events subscribes to that Server-Sent Events stream;
// on each "run" event it fetches data-live-source (HTML rendered and escaped by the server)
// and puts it into the element whose id is data-live-target, at most every 250 ms.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.liveEvents || !window.EventSource) return;
  var state = document.getElementById("live-state");
  var target = document.getElementById(main.dataset.liveTarget);
  var source = main.dataset.liveSource;
  var pending = false, busy = false, ready = false;

  function show(text, down) {
    if (!state) return;
    state.hidden = false;
    state.textContent = text;
    state.classList.toggle("down", !!down);
  }

  function refresh() {
    if (busy) { pending = true; return; }
    busy = true; pending = false;
    fetch(source, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (target) target.innerHTML = html; // server-rendered, every value escaped there
        main.dataset.updated = String(Date.now());
        show("live", false);
      })
      .catch(function () { show("database unavailable, retrying…", true); })
      .finally(function () {
        busy = false;
        if (pending) window.setTimeout(refresh, 250);
      });
  }

  // The events before "ready" describe the state the page was rendered with; after a
  // reconnection the page may be stale, so it is refreshed once. A server that answers 503
  // (too many open pages, see --max-streams) closes the stream: try again after a while.
  function connect() {
    var events = new EventSource(main.dataset.liveEvents);
    events.addEventListener("ready", function () {
      if (ready) refresh();
      ready = true;
      show("live", false);
    });
    events.addEventListener("run", function () { if (ready) refresh(); });
    events.addEventListener("unavailable", function () { show("database unavailable, retrying…", true); });
    events.onerror = function () {
      if (events.readyState === EventSource.CLOSED) {
        show("live updates paused (server busy), retrying…", true);
        window.setTimeout(connect, 10000);
      } else {
        show("reconnecting…", true);
      }
    };
  }
  connect();
})();
