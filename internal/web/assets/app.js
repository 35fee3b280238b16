// forge's pages: live lists and states without reloads, the badge copy button, the
// cross-build search and the pools page. Everything from the API goes into
// the page through textContent; the lists come as the server's own markup.
(function () {
  "use strict";
  var DONE = ["success", "failure", "error", "skipped", "canceled"];
  function getJSON(url) {
    return fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"}).then(function (r) {
      if (r.status === 404) return null;
      if (!r.ok) throw new Error(url + " answered " + r.status);
      return r.json();
    });
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function dur(start, end) {
    if (!start || start.indexOf("0001-") === 0) return "";
    var s = Math.max(0, Math.round(((end ? Date.parse(end) : Date.now()) - Date.parse(start)) / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + ("0" + s % 60).slice(-2) + "s";
    return Math.floor(s / 3600) + "h " + ("0" + Math.floor(s / 60) % 60).slice(-2) + "m";
  }
  function setStatus(badge, st) {
    if (!badge || !st || badge.textContent === st) return;
    badge.textContent = st;
    badge.className = "badge st-" + st;
  }
  // poll calls f every 2 s while it returns true, skipping hidden tabs.
  function poll(f) {
    var busy = false;
    function tick() {
      if (document.hidden || busy) return;
      busy = true;
      Promise.resolve(f()).then(function (more) {
        busy = false;
        if (more === false) clearInterval(id);
      }, function () { busy = false; });
    }
    var id = setInterval(tick, 2000);
  }
  // The log page (log.js) shares these.
  window.forge = {dur: dur};

  // liveList keeps a page's list up to date: every 2 s it asks the page
  // again for just its list (X-Forge-Part: list, the same query, so
  // filters and paging hold) and merges it in.
  function liveList(box) {
    poll(function () {
      return fetch(location.pathname + location.search, {headers: {"X-Forge-Part": "list"}, credentials: "same-origin"}).then(function (r) {
        if (!r.ok || r.redirected) return;
        return r.text().then(function (html) {
          var t = document.createElement("template");
          t.innerHTML = html; // the server's escaped markup, never log text
          box.querySelectorAll("[data-keyed]").forEach(function (old) {
            var neu = t.content.getElementById(old.id);
            if (neu) mergeKeyed(old, neu);
          });
          box.querySelectorAll("[data-swap]").forEach(function (old) {
            var neu = t.content.getElementById(old.id);
            if (neu && neu.outerHTML !== old.outerHTML) old.replaceWith(neu);
          });
        });
      });
    });
  }
  // mergeKeyed makes old's children (each with a data-key) those of neu,
  // in neu's order: new ones are inserted, gone ones removed, and of a
  // changed one only the changed cells are replaced, so focus and
  // scrolling stay where they are.
  function mergeKeyed(old, neu) {
    var have = {}, want = [];
    Array.prototype.forEach.call(old.children, function (c) { have[c.dataset.key] = c; });
    Array.prototype.forEach.call(neu.children, function (n) {
      var o = have[n.dataset.key];
      if (!o) { want.push(n); return; }
      delete have[n.dataset.key];
      if (o.outerHTML !== n.outerHTML) {
        if (o.tagName !== n.tagName || o.children.length !== n.children.length || o.className !== n.className) { want.push(n); return; }
        Array.prototype.slice.call(n.children).forEach(function (c, i) {
          if (o.children[i].outerHTML !== c.outerHTML) o.replaceChild(c, o.children[i]);
        });
      }
      want.push(o);
    });
    Object.keys(have).forEach(function (k) { have[k].remove(); });
    want.forEach(function (n, i) {
      if (old.children[i] !== n) old.insertBefore(n, old.children[i] || null);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    // Copy buttons.
    document.querySelectorAll("[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        var input = document.getElementById(b.dataset.copy);
        input.select();
        (navigator.clipboard ? navigator.clipboard.writeText(input.value) : Promise.reject()).then(
          function () { b.textContent = "Copied"; }, function () { document.execCommand("copy"); b.textContent = "Copied"; });
      });
    });

    // The repositories and a repository's builds: new ones appear, states
    // change.
    document.querySelectorAll("[data-live-list]").forEach(liveList);

    // A build: its state, its jobs' states, the buttons.
    var actions = document.getElementById("actions");
    if (actions && actions.dataset.live && actions.dataset.done !== "true") poll(function () {
      return Promise.all([getJSON(actions.dataset.live), getJSON(actions.dataset.live + "/jobs")]).then(function (r) {
        var b = r[0], jobs = r[1] && r[1].jobs || [];
        if (!b) return false;
        setStatus(document.getElementById("build-status"), b.status);
        document.getElementById("build-duration").textContent = dur(b.started, b.finished);
        jobs.forEach(function (j) {
          var tr = document.querySelector('#jobs tr[data-job="' + j.id + '"]');
          if (tr) {
            setStatus(tr.querySelector("[data-status]"), j.status);
            tr.querySelector("[data-duration]").textContent = dur(j.started, j.finished);
            tr.querySelector("[data-attempt]").textContent = j.attempt;
          }
          var g = document.querySelector('svg g[data-job="' + j.id + '"]');
          if (g) g.setAttribute("class", "node st-" + j.status);
        });
        var finished = DONE.indexOf(b.status) >= 0;
        var c = document.getElementById("cancel-form"), s = document.getElementById("restart-form");
        if (c) c.hidden = finished;
        if (s) s.hidden = !finished;
        return !finished;
      });
    });

    // The job page's state (the log viewer follows the lines).
    var js = document.getElementById("job-status"), log = document.getElementById("log");
    if (js && log && DONE.indexOf(log.dataset.status) < 0) poll(function () {
      return getJSON(log.dataset.api).then(function (j) {
        if (!j) return false;
        setStatus(js, j.status);
        document.getElementById("job-duration").textContent = dur(j.started, j.finished);
        // The log viewer re-folds its steps as they start and end.
        log.dispatchEvent(new CustomEvent("forge:job", {detail: j}));
        return DONE.indexOf(j.status) < 0;
      });
    });

    // Search across builds.
    var xs = document.getElementById("xsearch");
    if (xs) xs.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var q = xs.querySelector("input").value, out = document.getElementById("xresults");
      if (!q) { out.replaceChildren(); return; }
      out.replaceChildren(el("p", "muted", "searching…"));
      getJSON(xs.dataset.api + "?q=" + encodeURIComponent(q)).then(function (res) {
        if (res === null) { out.replaceChildren(el("p", "muted", "Search across builds is not available on this server.")); return; }
        var hits = Array.isArray(res) ? res : res.results || [];
        if (!hits.length) { out.replaceChildren(el("p", "muted", "No build printed that.")); return; }
        var ul = el("ul", "hits");
        hits.forEach(function (h) {
          var li = el("li");
          var a = el("a", "", "#" + h.build + " " + h.job_name + " line " + h.line);
          a.href = xs.dataset.base + "/builds/" + h.build + "/jobs/" + h.job + "#L" + h.line;
          li.appendChild(a);
          li.appendChild(el("code", "hit", " " + h.text.replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, "")));
          ul.appendChild(li);
        });
        out.replaceChildren(ul);
      }).catch(function (e) { out.replaceChildren(el("p", "error-msg", "search failed: " + e.message)); });
    });

    // Lease pools.
    var pools = document.getElementById("pools");
    if (pools) {
      var draw = function () {
        return getJSON(pools.dataset.live).then(function (b) {
          var list = b && b.pools || [];
          var frag = document.createDocumentFragment();
          if (!list.length) frag.appendChild(el("p", "muted", b ? "No pools are configured." : "This server has no lease pools."));
          list.forEach(function (p) {
            var sec = el("section", "pool");
            sec.appendChild(el("h2", "", p.name + (p.deleted ? " (deleted)" : "")));
            sec.appendChild(el("p", "muted", p.size + " resources: " + p.free + " free, " + p.in_use + " in use, " + p.disabled + " disabled" + (p.checking ? ", " + p.checking + " checking" : "") + " · order " + p.order));
            var t = el("table", "res");
            var hr = el("tr");
            ["Resource", "State", "Holder", "Since", "Labels"].forEach(function (h) { hr.appendChild(el("th", "", h)); });
            t.appendChild(el("thead")).appendChild(hr);
            var tb = t.appendChild(el("tbody"));
            (p.resources || []).forEach(function (r) {
              var tr = el("tr");
              tr.appendChild(el("td", "", r.id));
              var st = el("td");
              st.appendChild(el("span", "badge res-" + r.state, r.state + (r.disabled && r.state === "leased" ? " (disabled)" : "") + (r.removing ? " (removing)" : "") +
                (r.state === "disabled" && r.disabled_by ? " by " + r.disabled_by : "")));
              tr.appendChild(st);
              // A resource out of service shows why in the holder's place
              // (an operator's reason, a failed check's output, a holder's
              // report), since when in Since.
              var why = r.state === "disabled" ? r.disabled_reason || "" : "";
              tr.appendChild(el("td", why ? "muted" : "", r.holder || (why.length > 200 ? why.slice(0, 200) + "…" : why)));
              var since = r.since || (r.state === "disabled" ? r.disabled_since : "");
              tr.appendChild(el("td", "", since ? new Date(since).toLocaleString() + " (" + dur(since) + ")" : ""));
              tr.appendChild(el("td", "muted", Object.keys(r.labels || {}).map(function (k) { return k + "=" + r.labels[k]; }).join(" ")));
              tb.appendChild(tr);
            });
            sec.appendChild(t);
            var q = p.queue || [];
            sec.appendChild(el("h3", "", "Queue (" + q.length + ")"));
            if (q.length) {
              var ol = el("ol", "queue");
              q.forEach(function (w) { ol.appendChild(el("li", "", w.holder + " waiting " + dur(w.since) + " for " + (w.wants || []).map(function (x) { return (x.count || 1) + " of " + (x.pool || p.name); }).join(", "))); });
              sec.appendChild(ol);
            }
            frag.appendChild(sec);
          });
          pools.replaceChildren(frag);
        }).catch(function (e) { pools.replaceChildren(el("p", "error-msg", "could not load the pools: " + e.message)); });
      };
      draw();
      poll(draw);
    }
  });
})();
