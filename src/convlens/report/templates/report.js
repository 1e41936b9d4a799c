// convlens report: vanilla JS, no network. Every text from the data goes in with textContent.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cl-data").textContent);
  var layers = data.layers || [];
  var state = { image: 0, layer: 0, channel: 0, open: false };
  var drawToken = 0;
  var cache = {};

  function $(id) { return document.getElementById(id); }
  function each(selector, fn) { Array.prototype.forEach.call(document.querySelectorAll(selector), fn); }
  function fmt(v) {
    if (v === null || v === undefined || typeof v !== "number" || !isFinite(v)) { return "–"; }
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) { return v.toExponential(2); }
    return String(+v.toPrecision(4));
  }
  function gridUri(L, k) { return "data:image/png;base64," + L.grids[k]; }

  // ---------------------------------------------------------------- lazy pictures
  function reveal(img) {
    var src = img.getAttribute("data-src");
    if (src) { img.src = src; img.removeAttribute("data-src"); }
  }
  var lazy = Array.prototype.slice.call(document.querySelectorAll("img.cl-lazy[data-src]"));
  if ("IntersectionObserver" in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { reveal(e.target); io.unobserve(e.target); }
      });
    }, { rootMargin: "600px 0px" });
    lazy.forEach(function (img) { io.observe(img); });
  } else {
    lazy.forEach(reveal);
  }

  // ---------------------------------------------------------------- feature maps
  var mapImg = $("cl-map-img");

  function flagText(L, k) {
    var f = (L.flags && L.flags[k]) || {};
    var parts = [];
    if (f.dead && f.dead.length) { parts.push(f.dead.length + " dead"); }
    var constant = (f.constant || []).filter(function (c) { return (f.dead || []).indexOf(c) < 0; });
    if (constant.length) { parts.push(constant.length + " constant"); }
    if (f.nonfinite && f.nonfinite.length) { parts.push(f.nonfinite.length + " with NaN/inf"); }
    return parts.length ? parts.join(", ") + " (crossed out)" : "";
  }

  function showLayer(pos) {
    if (!mapImg || !layers.length) { return; }
    state.layer = pos;
    var L = layers[pos];
    each(".cl-layer", function (b) {
      b.setAttribute("aria-pressed", String(+b.getAttribute("data-layer") === pos));
    });
    $("cl-map-title").textContent = L.index + " " + L.name + " · " + L.type + " · " + L.shape;
    var sub = [];
    if (data.images.length > 1) { sub.push("image " + data.images[state.image]); }
    if (L.layout === "grid") {
      var G = L.geo[state.image];
      sub.push(L.shown < L.total ? "channels 0–" + (L.shown - 1) + " of " + L.total : L.total + " channels");
      if (G.h !== G.H || G.w !== G.W) {
        sub.push("maps averaged down from " + G.H + "×" + G.W + " to " + G.h + "×" + G.w);
      }
      sub.push("click a tile to open it");
    } else {
      sub.push(L.total + " values, drawn as a " + (L.layout === "strip" ? "strip" : "band per channel"));
    }
    var flags = flagText(L, state.image);
    if (flags) { sub.push(flags); }
    $("cl-map-sub").textContent = sub.join(" · ");
    mapImg.classList.remove("cl-pixelated");
    mapImg.style.width = "";
    mapImg.alt = "feature maps of " + L.name;
    mapImg.src = gridUri(L, state.image);
  }

  if (mapImg) {
    mapImg.addEventListener("load", function () {
      // Small grids (deep layers) are enlarged without blurring; big ones fit the panel.
      var room = mapImg.parentNode.clientWidth - 2;
      var n = mapImg.naturalWidth;
      var want = Math.min(room, 800);
      if (n > 0 && n < want) {
        mapImg.style.width = want + "px";
        mapImg.classList.add("cl-pixelated");
      }
    });
    mapImg.addEventListener("click", function (ev) {
      var L = layers[state.layer];
      if (!L || L.layout !== "grid" || !mapImg.naturalWidth) { return; }
      var r = mapImg.getBoundingClientRect();
      var x = (ev.clientX - r.left - mapImg.clientLeft) * mapImg.naturalWidth / mapImg.clientWidth;
      var y = (ev.clientY - r.top - mapImg.clientTop) * mapImg.naturalHeight / mapImg.clientHeight;
      var G = L.geo[state.image];
      var col = Math.floor((x - L.sep) / (G.tw + L.sep));
      var row = Math.floor((y - L.sep) / (G.th + L.sep));
      if (col < 0 || row < 0 || col >= L.cols || row >= L.rows) { return; }
      var channel = row * L.cols + col;
      if (channel < L.shown) { openViewer(state.layer, channel); }
    });
  }
  each(".cl-layer", function (b) {
    b.addEventListener("click", function () { showLayer(+b.getAttribute("data-layer")); });
  });
  if (mapImg) {  // from the keyboard: Enter on the grid opens its first channel
    mapImg.addEventListener("keydown", function (ev) {
      var L = layers[state.layer];
      if (ev.key === "Enter" && !state.open && L && L.layout === "grid") {
        ev.preventDefault();
        openViewer(state.layer, 0);
      }
    });
  }

  // ---------------------------------------------------------------- the channel viewer
  var viewer = $("cl-viewer");
  var NORMS = {
    standardize: "standardised per channel: the ends are mean ∓ 2 std",
    minmax: "per channel, minimum to maximum",
    layer: "one scale for the layer: its minimum to maximum",
    global: "one scale for every drawn layer"
  };

  function gridImage(pos, k, done) {
    var key = pos + "/" + k;
    var img = cache[key];
    if (img && img.complete && img.naturalWidth) { done(img); return; }
    if (!img) { img = new Image(); cache[key] = img; img.src = gridUri(layers[pos], k); }
    img.addEventListener("load", function () { done(img); }, { once: true });
  }

  function row(dl, term, value, bad) {
    var dt = document.createElement("dt");
    var dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    if (bad) { dd.className = "cl-bad"; }
    dl.appendChild(dt);
    dl.appendChild(dd);
  }

  function drawBar() {
    var bar = $("cl-viewer-bar");
    var ctx = bar.getContext("2d");
    var hex = data.palette || "";
    for (var i = 0; i < 240; i++) {
      ctx.fillStyle = "#" + hex.substr(i * 6, 6);
      ctx.fillRect(i, 0, 1, 1);
    }
  }

  function renderViewer() {
    var L = layers[state.layer], k = state.image, c = state.channel;
    var s = L.scales[k], G = L.geo[k];
    $("cl-viewer-layer").textContent = L.name;
    $("cl-viewer-channel").textContent = String(c);
    var dl = $("cl-viewer-info");
    while (dl.firstChild) { dl.removeChild(dl.firstChild); }
    row(dl, "layer", L.index + " " + L.name + " (" + L.type + ")");
    row(dl, "channel", c + " of " + L.total + (L.shown < L.total ? " (0–" + (L.shown - 1) + " drawn)" : ""));
    if (data.images.length > 1) { row(dl, "image", data.images[k]); }
    row(dl, "map size", G.H + "×" + G.W + (G.h !== G.H || G.w !== G.W
      ? " (shown " + G.h + "×" + G.w + ", averaged down)" : ""));
    row(dl, "values", fmt(s.min[c]) + " … " + fmt(s.max[c]));
    row(dl, "mean ± std", fmt(s.mean[c]) + " ± " + fmt(s.std[c]));
    row(dl, "colormap", data.cmap + "; " + (NORMS[data.norm] || data.norm));
    var f = L.flags[k] || {};
    var flags = [];
    if ((f.dead || []).indexOf(c) >= 0) { flags.push("dead: zero everywhere"); }
    else if ((f.constant || []).indexOf(c) >= 0) { flags.push("constant: one value everywhere"); }
    if ((f.nonfinite || []).indexOf(c) >= 0) { flags.push("holds NaN or inf"); }
    if (flags.length) { row(dl, "flags", flags.join("; "), true); }
    // Standardised and global scales clip: the ends stand for "this value or beyond".
    var clips = data.norm === "standardize" || data.norm === "global";
    $("cl-bar-lo").textContent = (clips ? "≤ " : "") + fmt(s.lo[c]);
    $("cl-bar-hi").textContent = (clips ? "≥ " : "") + fmt(s.hi[c]);
    var token = ++drawToken;
    var pos = state.layer;
    gridImage(pos, k, function (img) {
      if (token !== drawToken) { return; }
      var col = c % L.cols, r = Math.floor(c / L.cols);
      var canvas = $("cl-viewer-canvas");
      canvas.width = G.w;
      canvas.height = G.h;
      var ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      // The tile is the map enlarged by a whole factor: sampling it back down is exact.
      ctx.drawImage(img, L.sep + col * (G.tw + L.sep), L.sep + r * (G.th + L.sep), G.tw, G.th, 0, 0, G.w, G.h);
      var side = Math.max(G.w, G.h);
      var scale = side <= 512 ? Math.max(1, Math.floor(512 / side)) : 512 / side;
      canvas.style.width = Math.round(G.w * scale) + "px";
      canvas.style.height = Math.round(G.h * scale) + "px";
      canvas.setAttribute("data-channel", String(c));
      canvas.setAttribute("data-layer", L.name);
      canvas.setAttribute("data-image", String(k));
    });
  }

  function openViewer(pos, channel) {
    state.layer = pos;
    state.channel = channel;
    state.open = true;
    viewer.hidden = false;
    renderViewer();
    $("cl-viewer-close").focus();
  }
  function closeViewer() {
    state.open = false;
    viewer.hidden = true;
    if (mapImg) { mapImg.focus(); }
  }
  function stepChannel(d) {
    var L = layers[state.layer];
    state.channel = (state.channel + d + L.shown) % L.shown;
    renderViewer();
  }
  function stepLayer(d) {
    var p = state.layer + d;
    while (p >= 0 && p < layers.length && layers[p].layout !== "grid") { p += d; }
    if (p < 0 || p >= layers.length) { return; }
    state.channel = Math.min(state.channel, layers[p].shown - 1);
    showLayer(p);
    renderViewer();
  }

  if (viewer) {
    drawBar();
    if (data.images.length > 1) {  // the image can be changed without closing the viewer
      var picker = $("cl-viewer-images");
      var label = document.createElement("span");
      label.textContent = "image";
      picker.appendChild(label);
      data.images.forEach(function (name, k) {
        var b = document.createElement("button");
        b.type = "button";
        b.className = "cl-image-btn";
        b.setAttribute("data-image", String(k));
        b.setAttribute("aria-pressed", String(k === 0));
        b.textContent = name;
        b.addEventListener("click", function () { setImage(k); });
        picker.appendChild(b);
      });
      picker.hidden = false;
    }
    $("cl-viewer-close").addEventListener("click", closeViewer);
    $("cl-prev").addEventListener("click", function () { stepChannel(-1); });
    $("cl-next").addEventListener("click", function () { stepChannel(1); });
    $("cl-prev-layer").addEventListener("click", function () { stepLayer(-1); });
    $("cl-next-layer").addEventListener("click", function () { stepLayer(1); });
    viewer.addEventListener("click", function (ev) { if (ev.target === viewer) { closeViewer(); } });
    document.addEventListener("keydown", function (ev) {
      if (!state.open) { return; }
      var keys = { ArrowRight: function () { stepChannel(1); }, ArrowLeft: function () { stepChannel(-1); },
        ArrowDown: function () { stepLayer(1); }, ArrowUp: function () { stepLayer(-1); }, Escape: closeViewer };
      if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
    });
  }

  // ---------------------------------------------------------------- images
  function setImage(k) {
    state.image = k;
    each(".cl-image-btn", function (b) {
      b.setAttribute("aria-pressed", String(+b.getAttribute("data-image") === k));
    });
    each(".cl-card[data-image]", function (card) {
      card.classList.toggle("cl-current", data.images.length > 1 && +card.getAttribute("data-image") === k);
    });
    showLayer(state.layer);
    if (state.open) { renderViewer(); }
  }
  each(".cl-image-btn", function (b) {
    b.addEventListener("click", function () { setImage(+b.getAttribute("data-image")); });
  });

  // ---------------------------------------------------------------- sortable tables
  function sortTable(th) {
    var table = th.closest("table");
    var tbody = table.tBodies[0];
    if (!tbody) { return; }
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-type") === "num";
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    var items = Array.prototype.map.call(tbody.rows, function (tr, i) {
      var td = tr.cells[idx];
      var raw = td ? (td.hasAttribute("data-key") ? td.getAttribute("data-key") : td.textContent) : "";
      var key = numeric ? (raw === "" || isNaN(parseFloat(raw)) ? null : parseFloat(raw)) : raw;
      return { tr: tr, key: key, i: i };
    });
    items.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // empty cells last, either way
        return a.key === b.key ? a.i - b.i : (a.key === null ? 1 : -1);
      }
      var d = numeric ? a.key - b.key : a.key.localeCompare(b.key, undefined, { numeric: true });
      return d !== 0 ? sign * d : a.i - b.i;
    });
    items.forEach(function (o) { tbody.appendChild(o.tr); });
  }

  // ---------------------------------------------------------------- channel tables
  function showChannels(pos) {
    var S = data.stats[pos];
    var box = $("cl-channels");
    if (!S || !box) { return; }
    each("#cl-stats-layers tr.cl-stats-row", function (tr) {
      tr.classList.toggle("cl-selected", +tr.getAttribute("data-stats") === pos);
    });
    box.hidden = false;
    var n = data.images.length;
    $("cl-channels-title").textContent = S.index + " " + S.name + ": " + S.channels + " channels, over " +
      (n === 1 ? "this image" : "all " + n + " images");
    var table = $("cl-channel-table");
    while (table.firstChild) { table.removeChild(table.firstChild); }
    var head = [["channel", "num"], ["mean", "num"], ["std", "num"], ["min", "num"], ["max", "num"],
      ["zeros", "num"], ["flags", "text"]];
    var thead = table.createTHead().insertRow();
    head.forEach(function (h) {
      var th = document.createElement("th");
      th.textContent = h[0];
      th.setAttribute("data-type", h[1]);
      th.tabIndex = 0;
      thead.appendChild(th);
    });
    var tbody = table.createTBody();
    var dead = {}, constant = {}, nonfinite = {};
    (S.flags.dead || []).forEach(function (c) { dead[c] = true; });
    (S.flags.constant || []).forEach(function (c) { constant[c] = true; });
    (S.flags.nonfinite || []).forEach(function (c) { nonfinite[c] = true; });
    for (var c = 0; c < S.channels; c++) {
      var tr = tbody.insertRow();
      var cells = [[String(c), c], [fmt(S.mean[c]), S.mean[c]], [fmt(S.std[c]), S.std[c]],
        [fmt(S.min[c]), S.min[c]], [fmt(S.max[c]), S.max[c]],
        [S.zero[c] === null ? "–" : (Math.floor(1000 * S.zero[c]) / 10).toFixed(1) + "%", S.zero[c]]];
      cells.forEach(function (cell) {
        var td = tr.insertCell();
        td.textContent = cell[0];
        td.setAttribute("data-key", cell[1] === null || cell[1] === undefined ? "" : String(cell[1]));
      });
      var flags = [];
      if (dead[c]) { flags.push("dead"); } else if (constant[c]) { flags.push("constant"); }
      if (nonfinite[c]) { flags.push("NaN/inf"); }
      tr.insertCell().textContent = flags.join(", ");
      if (flags.length) { tr.className = "cl-flagged"; }
    }
  }

  // ---------------------------------------------------------------- clicks and keys
  function activate(target) {
    var th = target.closest("table.cl-sortable thead th");
    if (th) { sortTable(th); return true; }
    var go = target.closest("tr.cl-goto");
    if (go) {
      showLayer(+go.getAttribute("data-goto"));
      var maps = $("cl-maps");
      if (maps) { maps.scrollIntoView(); }
      return true;
    }
    var st = target.closest("tr.cl-stats-row");
    if (st) { showChannels(+st.getAttribute("data-stats")); return true; }
    return false;
  }
  document.addEventListener("click", function (ev) { activate(ev.target); });
  document.addEventListener("keydown", function (ev) {
    if (!state.open && (ev.key === "Enter" || ev.key === " ") && ev.target.closest &&
        ev.target.closest("th, tr.cl-goto, tr.cl-stats-row") && activate(ev.target)) {
      ev.preventDefault();
    }
  });

  // Sticky table headings and the layer list sit just below the sticky bar, whatever its height.
  function barHeight() {
    var bar = document.querySelector(".cl-bar");
    if (bar) { document.documentElement.style.setProperty("--bar-h", bar.offsetHeight + "px"); }
  }
  barHeight();
  window.addEventListener("resize", barHeight);

  if (layers.length) { showLayer(0); }
  setImage(0);
}());
