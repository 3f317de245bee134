// gridpilot's web view: the pages work without this; with it, a page that asks to be refreshed (data-refresh on
// <body>, in seconds) has its <main> replaced in place from the same URL instead of reloading, and stops while the
// tab is hidden. A sign-in that ran out (a redirect to the form) reloads the page, which shows the form.
(function () {
  "use strict";
  var every = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "gridpilot-ui" } })
      .then(function (r) {
        if (r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["main", "footer"].forEach(function (sel) {
          var fresh = doc.querySelector(sel), old = document.querySelector(sel);
          if (fresh && old) { old.replaceWith(fresh); }
        });
        document.dispatchEvent(new CustomEvent("gridpilot:refreshed"));
      })
      .catch(function () { /* the next tick tries again */ });
  }
  if (every > 0) { window.setInterval(refresh, every * 1000); }
})();
