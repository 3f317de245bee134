// gridpilot's web view: the pages work without this; with it,
// - a page that asks to be refreshed (data-refresh on <body>, in seconds) has its <main> replaced in place from the
//   same URL instead of reloading, and stops while the tab is hidden;
// - a job's page appends its trace's new lines while the job runs (polling /ui/jobs/ID/trace?after=LAST every
//   data-every seconds; stops when the job has ended, then reloads once to show the final fields), and its category
//   checkboxes show and hide lines without a reload.
// A sign-in that ran out (401, or a redirect to the form) reloads the page, which shows the form. No inline handler: the CSP
// forbids them, so every listener is attached here.
(function () {
  "use strict";
  var HEADERS = { "X-Requested-With": "gridpilot-ui" };
  // As jobpage.MAX_TRACE_LINES: the live view keeps at most this many lines, dropping the oldest after the start.
  var MAX_LINES = 10000;

  function get(url) {
    return fetch(url, { credentials: "same-origin", headers: HEADERS }).then(function (r) {
      // Signed out meanwhile (the server answers this script 401, a page 303 to the form): the reload shows the form.
      if (r.redirected || r.status === 401) { window.location.reload(); return null; }
      return r.ok ? r.text() : null;
    });
  }

  // -- the trace's category filter --
  function hiddenCategories() {
    var out = [];
    document.querySelectorAll("#trace-filter input[name=category]").forEach(function (box) {
      if (!box.checked) { out.push(box.value); }
    });
    return out;
  }
  function applyFilter() {
    var hidden = hiddenCategories();
    document.querySelectorAll("#trace li").forEach(function (li) {
      li.hidden = hidden.indexOf(li.className.replace("cat-", "")) >= 0;
    });
  }
  function setupFilter() {
    var form = document.getElementById("trace-filter");
    if (!form) { return; }
    var served = (form.getAttribute("data-served") || "").split(",");
    form.addEventListener("change", function () {
      // A category the server left out (a ?category= filter) has no line on the page: ask for them.
      var missing = false;
      form.querySelectorAll("input[name=category]").forEach(function (box) {
        if (box.checked && served.indexOf(box.value) < 0) { missing = true; }
      });
      if (missing) { form.submit(); } else { applyFilter(); }
    });
  }

  // -- the live trace --
  function setupLive() {
    var box = document.getElementById("trace");
    if (!box) { return; }
    var part = box.querySelector(".trace-part");
    if (!part || part.getAttribute("data-live") !== "1") { return; }
    var every = parseInt(box.getAttribute("data-every") || "5", 10) * 1000;
    var base = box.getAttribute("data-url");
    var busy = false;
    var timer = window.setInterval(poll, every);

    function poll() {
      if (document.hidden || busy) { return; }
      busy = true;
      var sep = base.indexOf("?") >= 0 ? "&" : "?";
      get(base + sep + "after=" + encodeURIComponent(part.getAttribute("data-last") || "0"))
        .then(function (html) { if (html) { append(html); } })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { busy = false; });
    }

    function append(html) {
      var fresh = new DOMParser().parseFromString(html, "text/html").querySelector(".trace-part");
      if (!fresh) { return; }
      if (parseInt(fresh.getAttribute("data-omitted") || "0", 10) > 0) { window.location.reload(); return; }
      var lists = box.querySelectorAll("ol.trace");
      var list = lists[lists.length - 1];
      var hidden = hiddenCategories();
      fresh.querySelectorAll("li").forEach(function (li) {
        var node = document.importNode(li, true);
        node.hidden = hidden.indexOf(node.className.replace("cat-", "")) >= 0;
        list.appendChild(node);
      });
      var total = box.querySelectorAll("li").length;
      while (total > MAX_LINES && list.firstElementChild) { list.removeChild(list.firstElementChild); total--; }
      part.setAttribute("data-last", fresh.getAttribute("data-last"));
      var state = document.getElementById("job-state"), now = fresh.getAttribute("data-state");
      if (state && now && state.textContent !== now) {
        state.textContent = now;
        state.className = "state s-" + now;
      }
      if (fresh.getAttribute("data-live") !== "1") {
        window.clearInterval(timer);
        window.location.reload();  // the ended job's exit code, message, kill reason and outputs
      }
    }
  }

  // -- the whole page, in place --
  var refreshEvery = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  function refresh() {
    // Not while the person is filling in a filter form (replacing <main> would undo it).
    var active = document.activeElement;
    if (document.hidden || (active && active.closest && active.closest("main form"))) { return; }
    get(window.location.href).then(function (html) {
      if (!html) { return; }
      var doc = new DOMParser().parseFromString(html, "text/html");
      ["main", "footer"].forEach(function (sel) {
        var fresh = doc.querySelector(sel), old = document.querySelector(sel);
        if (fresh && old) { old.replaceWith(fresh); }
      });
      document.dispatchEvent(new CustomEvent("gridpilot:refreshed"));
    }).catch(function () { /* the next tick tries again */ });
  }

  setupFilter();
  applyFilter();
  setupLive();
  // A job's page refreshes its trace itself (setupLive); without this script it reloads (data-refresh's <meta>).
  if (refreshEvery > 0 && !document.getElementById("trace")) { window.setInterval(refresh, refreshEvery * 1000); }
})();
