// MergeTune dashboard: small inline-SVG line charts (per-epoch curves, overlaid runs). No dependencies.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2458c6", "#c0392b", "#1e8449", "#b9770e", "#7d3c98", "#148f77", "#5d6d7e", "#d35400"];

  function el(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function tickText(v) {
    var a = Math.abs(v);
    return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
  }

  // series: [{label, color?, dash?, points: [[x, y], ...]}]; returns a <figure> with the SVG and a legend.
  function lineChart(title, series, opts) {
    opts = opts || {};
    var W = opts.width || 360, H = opts.height || 200, L = 46, R = 10, T = 22, B = 30;
    var xs = [], ys = [];
    series.forEach(function (s) {
      s.points = s.points.filter(function (p) { return typeof p[1] === "number" && isFinite(p[1]); });
      s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); });
    });
    var fig = document.createElement("figure");
    fig.className = "chart";
    fig.dataset.title = title;
    if (!xs.length) { return null; }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = opts.yMin !== undefined ? opts.yMin : Math.min.apply(null, ys);
    var y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, ys);
    if (y1 === y0) { y1 = y0 + (Math.abs(y0) || 1) * 0.1; y0 = y0 - (Math.abs(y0) || 1) * 0.1; }
    if (x1 === x0) { x1 = x0 + 1; }
    function X(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
    function Y(y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); }
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img", "aria-label": title });
    svg.appendChild(el("text", { x: L, y: 14, "font-size": 12, "font-weight": 600, fill: "#1d232b" }, title));
    for (var i = 0; i <= 3; i++) {
      var v = y0 + (y1 - y0) * i / 3, y = Y(v);
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e3e7ec" }));
      svg.appendChild(el("text", { x: L - 4, y: y + 4, "font-size": 10, "text-anchor": "end", fill: "#4b5563" }, tickText(v)));
    }
    var xt = x1 - x0 <= 10 ? 1 : Math.ceil((x1 - x0) / 8);
    for (var t = Math.ceil(x0); t <= x1; t += xt) {
      svg.appendChild(el("text", { x: X(t), y: H - B + 14, "font-size": 10, "text-anchor": "middle", fill: "#4b5563" }, String(t)));
    }
    svg.appendChild(el("text", { x: (L + W - R) / 2, y: H - 3, "font-size": 10, "text-anchor": "middle", fill: "#4b5563" }, opts.xLabel || "epoch"));
    svg.appendChild(el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#c9d0d8" }));
    var legend = document.createElement("div");
    legend.className = "legend small";
    series.forEach(function (s, k) {
      if (!s.points.length) { return; }
      var color = s.color || COLORS[k % COLORS.length];
      var pts = s.points.map(function (p) { return X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1); }).join(" ");
      var line = el("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.8, "data-series": s.label });
      if (s.dash) { line.setAttribute("stroke-dasharray", "5 3"); }
      svg.appendChild(line);
      if (s.points.length === 1) {
        svg.appendChild(el("circle", { cx: X(s.points[0][0]), cy: Y(s.points[0][1]), r: 2.5, fill: color }));
      }
      var item = document.createElement("span");
      var swatch = document.createElement("i");
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.label + " " + tickText(s.points[s.points.length - 1][1])));
      legend.appendChild(item);
    });
    fig.appendChild(svg);
    fig.appendChild(legend);
    return fig;
  }

  var LOSS_PARTS = [["loss", "total loss"], ["ce", "cross-entropy"], ["zs", "zero-shot surrogate"], ["lmc", "path term"]];

  // epochs: [{epoch, loss, ce, zs, lmc, val_acc}] -> the loss-parts chart and the validation chart
  function epochCharts(container, epochs) {
    container.textContent = "";
    var losses = LOSS_PARTS.map(function (pair) {
      return { label: pair[1], points: epochs.map(function (e) { return [e.epoch, e[pair[0]]]; }) };
    });
    var a = lineChart("training loss (per-epoch means)", losses);
    var b = lineChart("validation accuracy (%)", [{ label: "val acc", points: epochs.map(function (e) { return [e.epoch, e.val_acc]; }) }]);
    [a, b].forEach(function (f) { if (f) { container.appendChild(f); } });
    return container.children.length;
  }

  window.MTCharts = { lineChart: lineChart, epochCharts: epochCharts, COLORS: COLORS };
})();
