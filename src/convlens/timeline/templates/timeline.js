// convlens timeline: vanilla JS, no network. One checkpoint is shown at a time.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("tl-data").textContent);
  var points = data.checkpoints || [];
  var sections = Array.prototype.slice.call(document.querySelectorAll(".tl-ckpt"));
  var slider = document.getElementById("tl-slider");
  var label = document.getElementById("tl-label");
  var play = document.getElementById("tl-play");
  var cursors = Array.prototype.slice.call(document.querySelectorAll(".cl-chart .cl-cursor"));
  var current = -1;
  var timer = null;

  function reveal(section) {
    Array.prototype.forEach.call(section.querySelectorAll("img[data-src]"), function (img) {
      img.src = img.getAttribute("data-src");
      img.removeAttribute("data-src");
    });
  }

  function show(k) {
    if (!sections.length) { return; }
    k = Math.max(0, Math.min(sections.length - 1, k));
    if (k === current) { return; }
    sections.forEach(function (s, i) { s.hidden = i !== k; });
    reveal(sections[k]);
    current = k;
    slider.value = String(k);
    var p = points[k] || {};
    label.textContent = "checkpoint " + (p.number || k + 1) + " of " + data.total + " · " + (p.label || "");
    cursors.forEach(function (line) {
      line.setAttribute("x1", String(p.x));
      line.setAttribute("x2", String(p.x));
    });
  }

  function stop() {
    if (timer !== null) { clearInterval(timer); timer = null; }
    play.setAttribute("aria-pressed", "false");
    play.textContent = "play";
  }

  slider.addEventListener("input", function () { stop(); show(parseInt(slider.value, 10)); });
  document.getElementById("tl-prev").addEventListener("click", function () { stop(); show(current - 1); });
  document.getElementById("tl-next").addEventListener("click", function () { stop(); show(current + 1); });
  play.addEventListener("click", function () {
    if (timer !== null) { stop(); return; }
    if (current >= sections.length - 1) { show(0); }
    play.setAttribute("aria-pressed", "true");
    play.textContent = "pause";
    timer = setInterval(function () {
      show(current + 1);
      if (current >= sections.length - 1) { stop(); }
    }, 900);
  });
  document.addEventListener("keydown", function (e) {
    if (e.target === slider || e.altKey || e.ctrlKey || e.metaKey) { return; }
    if (e.key === "ArrowLeft") { stop(); show(current - 1); e.preventDefault(); }
    if (e.key === "ArrowRight") { stop(); show(current + 1); e.preventDefault(); }
  });
  Array.prototype.forEach.call(document.querySelectorAll(".tl-inputs"), reveal);
  show(parseInt(slider.value, 10));
}());
