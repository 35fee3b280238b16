// forge's log viewer. Log text is hostile: it only ever reaches the page
// through textContent, never as markup. The page holds only the lines in
// view (virtual scrolling), fetched in chunks from the API.
(function () {
  "use strict";
  var root = document.getElementById("log");
  if (!root) return;
  var API = root.dataset.api;
  var total = parseInt(root.dataset.total, 10) || 0;
  var status = root.dataset.status;
  var steps = [];
  try { steps = JSON.parse(root.dataset.steps || "[]") || []; } catch (e) { steps = []; }
  var DONE = ["success", "failure", "error", "skipped", "canceled"];
  var done = DONE.indexOf(status) >= 0;

  var LH = 18;                 // px per row, as in forge.css
  var MAXPX = 15000000;        // browsers cap an element's height
  var CHUNK = 500;             // lines per request
  var KEEP = 40;               // chunks kept in memory
  var vp = document.getElementById("viewport");
  var spacer = document.getElementById("spacer");
  var rowsEl = document.getElementById("rows");
  var stateEl = document.getElementById("lstate");
  var chunks = new Map();      // chunk index -> {lines: [], full: bool, at: ms} | "pending"
  var early = new Map();       // live lines that arrived while their chunk was being fetched
  var showTime = false, follow = false, hl = null, cur = 0;
  var matches = [], mi = -1;
  // The errors-and-warnings searches scan the whole log on the server: they
  // wait until the lines in view have come, so they never delay them.
  var problemsAsked = false;

  // ---- the rows model: step headers and the lines of open steps ----
  if (!steps.length) steps = [{index: -2, name: "", from: 1, to: total, open: true, bare: true}];
  function lastStep() { return steps[steps.length - 1]; }
  function setTotal(n) {
    if (n <= total) return;
    total = n;
    lastStep().to = total;
  }
  function rowCount() {
    var n = 0;
    for (var i = 0; i < steps.length; i++) {
      var s = steps[i];
      if (!s.bare) n++;
      if (s.open) n += Math.max(0, s.to - s.from + 1);
    }
    return n;
  }
  function rowAt(r) {
    for (var i = 0; i < steps.length; i++) {
      var s = steps[i];
      if (!s.bare) { if (r === 0) return {step: s}; r--; }
      if (s.open) {
        var len = Math.max(0, s.to - s.from + 1);
        if (r < len) return {line: s.from + r};
        r -= len;
      }
    }
    return null;
  }
  function stepOf(n) {
    for (var i = 0; i < steps.length; i++) if (n >= steps[i].from && n <= steps[i].to) return steps[i];
    return null;
  }
  function rowOf(n) {
    var r = 0;
    for (var i = 0; i < steps.length; i++) {
      var s = steps[i];
      if (!s.bare) r++;
      if (n >= s.from && n <= s.to) { s.open = true; return r + n - s.from; }
      if (s.open) r += Math.max(0, s.to - s.from + 1);
    }
    return r;
  }

  // splitSteps places a running job's steps (as the API lists them) by
  // their recorded first lines, as the server placed them for the page
  // (stepRanges in internal/web/logs.go); null when a started step has no
  // recorded line (an older forge recorded it: the server's placement
  // stays).
  function splitSteps(list, jobStatus) {
    var failed = jobStatus === "failure" || jobStatus === "error";
    var out = [], at = 1, i;
    list = list.slice().sort(function (a, b) { return a.index - b.index; });
    for (i = 0; i < list.length; i++) {
      var s = list[i];
      if (!s.first_line) { if (s.started) return null; continue; }
      var from = Math.max(s.first_line, at);
      if (!out.length && from > 1) out.push({index: -1, name: "set up", status: "success", from: 1, open: !failed});
      out.push({index: s.index, name: s.name, status: s.status, duration: window.forge ? window.forge.dur(s.started, s.finished) : "",
        from: from, last: s.first_line === from && DONE.indexOf(s.status) >= 0 ? s.last_line : 0,
        open: !failed || s.status === "failure" || s.status === "error"});
      at = from;
    }
    for (i = 0; i < out.length; i++) {
      out[i].to = i + 1 < out.length ? out[i + 1].from - 1 : total;
      if (out[i].last < out[i].from - 1 || out[i].last > out[i].to) out[i].last = 0;
    }
    return out;
  }
  // The page's poll of the job (app.js) brings its steps: a step that
  // starts gets its fold, and states and durations change; what the
  // reader folded stays folded.
  root.addEventListener("forge:job", function (ev) {
    var next = splitSteps(ev.detail.steps || [], ev.detail.status);
    if (!next || !next.length) return;
    var was = {};
    steps.forEach(function (s) { if (!s.bare) was[s.index] = s; });
    next.forEach(function (s) { if (was[s.index]) s.open = was[s.index].open; });
    steps = next;
    if (follow) toEnd(); else render();
  });

  // ---- ANSI SGR to styled spans ----
  var C256 = null;
  function color256(n) {
    if (!C256) {
      C256 = [];
      var base = ["#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
        "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"];
      for (var i = 0; i < 16; i++) C256.push(base[i]);
      var lv = [0, 95, 135, 175, 215, 255];
      for (var r = 0; r < 6; r++) for (var g = 0; g < 6; g++) for (var b = 0; b < 6; b++)
        C256.push("rgb(" + lv[r] + "," + lv[g] + "," + lv[b] + ")");
      for (var k = 0; k < 24; k++) { var v = 8 + k * 10; C256.push("rgb(" + v + "," + v + "," + v + ")"); }
    }
    return C256[n];
  }
  // ansiInto appends text's runs to el; every escape sequence but SGR is
  // dropped, and so are control characters.
  function ansiInto(el, text) {
    var st = {};
    var re = /\x1b\[([0-9;:]*)m|\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b.?|[\x00-\x08\x0b-\x1f\x7f]/g;
    var last = 0, m;
    function emit(s) {
      if (!s) return;
      var sp = document.createElement("span");
      sp.textContent = s;
      var cls = [];
      var fg = st.fg, bg = st.bg;
      if (st.inv) { var t = fg; fg = bg === undefined ? "inv-fg" : bg; bg = t === undefined ? "inv-bg" : t; }
      if (typeof fg === "number") cls.push("f" + fg); else if (fg === "inv-fg") cls.push("finv");
      else if (fg) sp.style.color = fg;
      if (typeof bg === "number") cls.push("b" + bg); else if (bg === "inv-bg") cls.push("binv");
      else if (bg) sp.style.backgroundColor = bg;
      if (st.bold) cls.push("bo"); if (st.dim) cls.push("di"); if (st.it) cls.push("it");
      if (st.ul) cls.push("ul"); if (st.st) cls.push("sk"); if (st.hid) cls.push("hid");
      if (cls.length) sp.className = cls.join(" ");
      el.appendChild(sp);
    }
    while ((m = re.exec(text)) !== null) {
      emit(text.slice(last, m.index));
      last = re.lastIndex;
      if (m[1] === undefined) continue;
      var p = m[1].split(/[;:]/).map(function (x) { return x === "" ? 0 : parseInt(x, 10); });
      for (var i = 0; i < p.length; i++) {
        var c = p[i];
        if (c === 0) st = {};
        else if (c === 1) st.bold = true; else if (c === 2) st.dim = true; else if (c === 3) st.it = true;
        else if (c === 4) st.ul = true; else if (c === 7) st.inv = true; else if (c === 8) st.hid = true;
        else if (c === 9) st.st = true; else if (c === 22) st.bold = st.dim = false;
        else if (c === 23) st.it = false; else if (c === 24) st.ul = false; else if (c === 27) st.inv = false;
        else if (c === 28) st.hid = false; else if (c === 29) st.st = false;
        else if (c >= 30 && c <= 37) st.fg = c - 30; else if (c >= 90 && c <= 97) st.fg = c - 82;
        else if (c >= 40 && c <= 47) st.bg = c - 40; else if (c >= 100 && c <= 107) st.bg = c - 92;
        else if (c === 39) st.fg = undefined; else if (c === 49) st.bg = undefined;
        else if (c === 38 || c === 48) {
          var col;
          if (p[i + 1] === 5 && p[i + 2] >= 0 && p[i + 2] < 256) { col = p[i + 2] < 16 ? p[i + 2] : color256(p[i + 2]); i += 2; }
          else if (p[i + 1] === 2 && i + 4 < p.length) {
            col = "rgb(" + [p[i + 2], p[i + 3], p[i + 4]].map(function (v) { return Math.max(0, Math.min(255, v | 0)); }).join(",") + ")";
            i += 4;
          } else break;
          if (c === 38) st.fg = col; else st.bg = col;
        }
      }
    }
    emit(text.slice(last));
  }
  var ERR = /\b(error|errors|fail|failed|failure|fatal|panic)\b/i, WARN = /\bwarn(ing)?s?\b/i;
  function plain(text) { return text.replace(/\x1b\[[0-?]*[ -\/]*[@-~]/g, ""); }

  // ---- fetching lines ----
  function jsonOr404(res) {
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    return res.json();
  }
  function fetchChunk(c) {
    var have = chunks.get(c);
    if (have === "pending" || have && (have.full || done && have.lines.length)) return;
    // A running job's partial chunk is asked again at most once a second.
    if (have && Date.now() - have.at < 1000) return;
    chunks.set(c, "pending");
    var from = c * CHUNK + 1;
    fetch(API + "/log?from=" + from + "&limit=" + CHUNK, {headers: {Accept: "application/json"}, credentials: "same-origin"})
      .then(function (res) {
        if (!res.ok) throw new Error("the log answered " + res.status);
        var ct = res.headers.get("Content-Type") || "";
        if (ct.indexOf("json") >= 0) return res.json().then(function (b) {
          if (typeof b.total === "number") setTotal(b.total);
          return (b.lines || []).map(function (l) { return {n: l.number, t: l.time, s: l.stream, x: l.text}; });
        });
        // The raw text endpoint: one line per line, numbered from from.
        return res.text().then(function (txt) {
          var parts = txt.split("\n");
          if (parts.length && parts[parts.length - 1] === "") parts.pop();
          return parts.map(function (x, i) { return {n: from + i, x: x}; });
        });
      })
      .then(function (lines) {
        var ch = {lines: [], full: lines.length >= CHUNK, at: Date.now()};
        lines.forEach(function (l) { ch.lines[l.n - from] = l; });
        var prev = chunks.get(c);
        if (prev && prev !== "pending") prev.lines.forEach(function (l, i) { if (l && !ch.lines[i]) ch.lines[i] = l; });
        early.forEach(function (l, n) {
          if (n >= from && n < from + CHUNK) { if (!ch.lines[n - from]) ch.lines[n - from] = l; early.delete(n); }
        });
        ch.full = isFull(ch);
        chunks.set(c, ch);
        if (lines.length) setTotal(lines[lines.length - 1].n);
        evict();
        render();
        if (!problemsAsked) { problemsAsked = true; setTimeout(problems, 0); }
      })
      .catch(function (e) { chunks.delete(c); stateEl.textContent = "could not load lines: " + e.message; });
  }
  function isFull(ch) {
    if (ch.lines.length < CHUNK) return false;
    for (var i = 0; i < CHUNK; i++) if (!ch.lines[i]) return false;   // holes too
    return true;
  }
  function evict() {
    if (chunks.size <= KEEP) return;
    var first = Math.floor(cur / CHUNK);
    var keys = Array.from(chunks.keys()).sort(function (a, b) { return Math.abs(b - first) - Math.abs(a - first); });
    for (var i = 0; chunks.size > KEEP && i < keys.length; i++) if (chunks.get(keys[i]) !== "pending") chunks.delete(keys[i]);
  }
  function lineAt(n) {
    var ch = chunks.get(Math.floor((n - 1) / CHUNK));
    return ch && ch !== "pending" ? ch.lines[(n - 1) % CHUNK] : undefined;
  }
  function addLive(l) {
    var c = Math.floor((l.n - 1) / CHUNK);
    var ch = chunks.get(c);
    if (ch === "pending") { early.set(l.n, l); return setTotal(l.n); }   // merged when the fetch lands
    if (!ch) { ch = {lines: [], full: false, at: 0}; chunks.set(c, ch); }
    ch.lines[(l.n - 1) % CHUNK] = l;
    ch.full = isFull(ch);
    setTotal(l.n);
  }

  // ---- drawing ----
  var scheduled = false;
  function render() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(draw);
  }
  function draw() {
    scheduled = false;
    var rows = rowCount();
    var h = Math.min(rows * LH, MAXPX);
    spacer.style.height = h + "px";
    var vh = vp.clientHeight || 400;
    var visible = Math.ceil(vh / LH) + 1;
    var first;
    if (rows * LH <= MAXPX) first = Math.floor(vp.scrollTop / LH);
    else first = Math.round(vp.scrollTop / Math.max(1, h - vh) * Math.max(0, rows - visible + 1));
    first = Math.max(0, Math.min(first, Math.max(0, rows - visible + 1)));
    rowsEl.style.transform = "translateY(" + (rows * LH <= MAXPX ? first * LH : vp.scrollTop) + "px)";
    var frag = document.createDocumentFragment();
    var want = {};
    for (var r = first; r < Math.min(rows, first + visible); r++) {
      var it = rowAt(r);
      if (!it) break;
      frag.appendChild(it.step ? headerRow(it.step) : lineRow(it.line, want));
      if (it.line) cur = it.line;
    }
    rowsEl.replaceChildren(frag);
    stepList();
    Object.keys(want).forEach(function (c) { fetchChunk(+c); });
    if (!total) stateEl.textContent = done ? "this job printed nothing" : "waiting for output…";
    else if (!stateEl.dataset.err) stateEl.textContent = total.toLocaleString() + " lines";
  }
  // The steps, listed above the log: fold or unfold, or jump to one.
  function stepList() {
    var ol = document.getElementById("steplist");
    var frag = document.createDocumentFragment();
    steps.forEach(function (s) {
      if (s.bare) return;
      var li = document.createElement("li");
      li.className = "st-" + s.status;
      var b = document.createElement("button");
      b.type = "button";
      b.className = "fold";
      b.setAttribute("aria-expanded", s.open ? "true" : "false");
      b.textContent = (s.open ? "▾ " : "▸ ") + s.name;
      b.title = s.open ? "Fold this step" : "Unfold this step";
      b.addEventListener("click", function () { s.open = !s.open; render(); });
      li.appendChild(b);
      var a = document.createElement("a");
      a.href = "#L" + s.from;
      a.textContent = s.status + (s.duration ? " · " + s.duration : "") + " · " + Math.max(0, s.to - s.from + 1) + " lines";
      li.appendChild(a);
      frag.appendChild(li);
    });
    ol.replaceChildren(frag);
  }
  function headerRow(s) {
    var d = document.createElement("div");
    d.className = "row steprow st-" + s.status;
    var b = document.createElement("button");
    b.type = "button";
    b.className = "fold";
    b.setAttribute("aria-expanded", s.open ? "true" : "false");
    b.textContent = (s.open ? "▾ " : "▸ ") + s.name;
    b.addEventListener("click", function () { s.open = !s.open; render(); });
    d.appendChild(b);
    var meta = document.createElement("span");
    meta.className = "stepmeta";
    meta.textContent = s.status + (s.duration ? " · " + s.duration : "") + " · " + Math.max(0, s.to - s.from + 1) + " lines";
    d.appendChild(meta);
    return d;
  }
  function lineRow(n, want) {
    var d = document.createElement("div");
    d.className = "row";
    d.id = "L" + n;
    var a = document.createElement("a");
    a.className = "ln";
    a.href = "#L" + n;
    a.textContent = n;
    a.addEventListener("click", function (ev) {
      if (ev.shiftKey && hl) {
        ev.preventDefault();
        var lo = Math.min(hl[0], n), hi = Math.max(hl[1], n);
        location.hash = "#L" + lo + "-L" + hi;
      }
    });
    d.appendChild(a);
    var l = lineAt(n);
    if (showTime) {
      var ts = document.createElement("span");
      ts.className = "ts";
      ts.textContent = l && l.t ? l.t.replace("T", " ").replace(/\.(\d{3})\d*/, ".$1").replace("Z", "") : "";
      d.appendChild(ts);
    }
    var tx = document.createElement("span");
    tx.className = "tx";
    if (l) {
      ansiInto(tx, l.x);
      var p = plain(l.x);
      if (ERR.test(p)) d.classList.add("err"); else if (WARN.test(p)) d.classList.add("warn");
      if (l.s === "system") d.classList.add("sys");
    } else {
      want[Math.floor((n - 1) / CHUNK)] = true;
      tx.className = "tx loading";
    }
    if (hl && n >= hl[0] && n <= hl[1]) d.classList.add("hl");
    if (mi >= 0 && matches[mi] === n) d.classList.add("cur");
    d.appendChild(tx);
    return d;
  }

  // ---- moving ----
  function scrollToLine(n, where) {
    var r = rowOf(n);
    var rows = rowCount();
    var vh = vp.clientHeight || 400;
    draw();
    var top;
    if (rows * LH <= MAXPX) {
      top = r * LH;
      if (where === "center") top -= vh / 2 - LH;
      else if (where === "bottom") top -= vh - 2 * LH;
    } else {
      var visible = Math.ceil(vh / LH) + 1;
      top = r / Math.max(1, rows - visible + 1) * (MAXPX - vh);
    }
    vp.scrollTop = Math.max(0, top);
    render();
  }
  function readHash() {
    var m = /^#L(\d+)(?:-L?(\d+))?$/.exec(location.hash);
    if (!m) return false;
    var a = +m[1], b = m[2] ? +m[2] : a;
    hl = [Math.min(a, b), Math.max(a, b)];
    scrollToLine(hl[0], "center");
    return true;
  }
  window.addEventListener("hashchange", readHash);
  vp.addEventListener("scroll", function () {
    if (follow && vp.scrollTop + vp.clientHeight < vp.scrollHeight - 3 * LH && !programmatic) setFollow(false);
    render();
  }, {passive: true});
  window.addEventListener("resize", render);
  var programmatic = false;
  function toEnd() {
    programmatic = true;
    scrollToLine(total, "bottom");
    requestAnimationFrame(function () { programmatic = false; });
  }

  // ---- follow: live lines while the job runs ----
  var followBox = document.getElementById("lfollow");
  function setFollow(on) {
    follow = on;
    followBox.checked = on;
    if (on) toEnd();
  }
  followBox.addEventListener("change", function () { setFollow(followBox.checked); });
  function onLine(l) {
    if (l.n <= 0) return;
    addLive(l);
    if (follow) toEnd(); else render();
  }
  function ended(st) {
    done = true;
    status = st || status;
    var b = document.getElementById("job-status");
    if (b && st) { b.textContent = st; b.className = "badge st-" + st; }
    followBox.disabled = true;
    render();
  }
  function live() {
    if (done) { followBox.disabled = true; return; }
    var got = false;
    var es = new EventSource(API + "/log/events?from=" + (total + 1));
    es.addEventListener("line", function (ev) {
      got = true;
      var l = JSON.parse(ev.data);
      onLine({n: l.number, t: l.time, s: l.stream, x: l.text});
    });
    es.addEventListener("end", function (ev) {
      es.close();
      var st;
      try { st = JSON.parse(ev.data).status; } catch (e) { st = ""; }
      ended(st);
    });
    es.onerror = function () {
      if (es.readyState === EventSource.CLOSED && !got) followRaw();   // no SSE here: the raw follow stream
    };
  }
  // followRaw reads GET …/log?follow=true: text lines until the job ends.
  function followRaw() {
    var next = total + 1;
    fetch(API + "/log?follow=true&from=" + next, {credentials: "same-origin"}).then(function (res) {
      if (!res.ok || !res.body) throw new Error("the log answered " + res.status);
      var reader = res.body.getReader(), dec = new TextDecoder(), buf = "";
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) return;
          buf += dec.decode(r.value, {stream: true});
          var i;
          while ((i = buf.indexOf("\n")) >= 0) { onLine({n: next++, x: buf.slice(0, i)}); buf = buf.slice(i + 1); }
          return pump();
        });
      }
      return pump();
    }).then(function () {
      return fetch(API, {headers: {Accept: "application/json"}, credentials: "same-origin"}).then(jsonOr404).then(function (j) { ended(j && j.status); });
    }).catch(function (e) { stateEl.textContent = "live updates stopped: " + e.message; });
  }

  // ---- search (server-side) ----
  var q = document.getElementById("lq"), count = document.getElementById("lcount");
  var lastQ = "";
  function search(ev) {
    if (ev) ev.preventDefault();
    var s = q.value;
    if (!s) { matches = []; mi = -1; count.textContent = ""; render(); return; }
    if (s === lastQ && matches.length) return step(1);
    lastQ = s;
    count.textContent = "searching…";
    fetch(API + "/log/search?q=" + encodeURIComponent(s) + "&from=1&limit=10000", {headers: {Accept: "application/json"}, credentials: "same-origin"})
      .then(jsonOr404).then(function (b) {
        if (!b) { count.textContent = "search is not available on this server"; return; }
        matches = b.matches || [];
        mi = -1;
        if (!matches.length) { count.textContent = "no match"; render(); return; }
        step(1);
      }).catch(function (e) { count.textContent = "search failed: " + e.message; });
  }
  function step(d) {
    if (!matches.length) return;
    mi = (mi + d + matches.length) % matches.length;
    count.textContent = (mi + 1) + " of " + matches.length;
    scrollToLine(matches[mi], "center");
  }
  document.getElementById("lsearch").addEventListener("submit", search);
  document.getElementById("lnext").addEventListener("click", function () { lastQ === q.value && matches.length ? step(1) : search(); });
  document.getElementById("lprev").addEventListener("click", function () { step(-1); });
  document.getElementById("ltime").addEventListener("change", function (ev) {
    showTime = ev.target.checked;
    root.classList.toggle("withtime", showTime);
    render();
  });

  // ---- errors and warnings, listed ----
  function problems() {
    var list = document.getElementById("problist"), box = document.getElementById("problems");
    var found = [];
    var kinds = [["error", "error"], ["failed", "error"], ["panic", "error"], ["warning", "warning"]];
    Promise.all(kinds.map(function (k) {
      return fetch(API + "/log/search?q=" + k[0] + "&from=1&limit=200", {headers: {Accept: "application/json"}, credentials: "same-origin"})
        .then(jsonOr404).then(function (b) { (b && b.matches || []).forEach(function (n) { found.push([n, k[1]]); }); })
        .catch(function () {});
    })).then(function () {
      var seen = {};
      found.sort(function (a, b) { return a[0] - b[0]; });
      found.forEach(function (f) {
        if (seen[f[0]]) return;
        seen[f[0]] = true;
        var li = document.createElement("li");
        var a = document.createElement("a");
        a.href = "#L" + f[0];
        a.textContent = f[1] + " at line " + f[0];
        a.className = f[1] === "error" ? "err" : "warn";
        li.appendChild(a);
        list.appendChild(li);
      });
      if (list.children.length) { box.hidden = false; if (status === "failure" || status === "error") box.open = true; }
    });
  }

  // ---- keys ----
  document.addEventListener("keydown", function (ev) {
    if (ev.target.tagName === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var k = ev.key;
    if (k === "/") { ev.preventDefault(); q.focus(); }
    else if (k === "n") step(1);
    else if (k === "N") step(-1);
    else if (k === "f" && !done) setFollow(!follow);
    else if (k === "t") document.getElementById("ltime").click();
    else if (k === "g") { vp.scrollTop = 0; render(); }
    else if (k === "G") toEnd();
  });

  // ---- open where it matters: the #L line, the failure, or the end ----
  if (!readHash()) {
    var failed = null;
    for (var i = 0; i < steps.length; i++) if (steps[i].status === "failure" || steps[i].status === "error") failed = steps[i];
    if (failed && failed.to >= failed.from) scrollToLine(failed.last >= failed.from ? failed.last : failed.to, "bottom");
    else toEnd();
  }
  if (!done) setFollow(true);
  live();
  if (!total) { problemsAsked = true; }   // nothing to search yet
  render();
})();
