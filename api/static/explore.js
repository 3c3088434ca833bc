// MergeTune dashboard: exploring runs by hyperparameters. Loaded by the compare and sweep pages only,
// after plotly.js and charts.js (MTCharts).
//   compare: the "only differences" switch of the settings table (instant; ?diff=1 without JavaScript),
//            the hyperparameter-vs-metric scatter (#explore-data) and the parallel coordinates of the
//            differing numeric hyperparameters coloured by recovered HM (3 runs or more)
//   sweep:   the swept axis vs HM scatter of the sweep's cells, one series per value of the other axes
(function () {
  "use strict";

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function message(box, text) {
    box.textContent = "";
    var p = document.createElement("p");
    p.className = "muted small explore-empty";
    p.textContent = text;
    box.appendChild(p);
  }

  function layout(title, xTitle, yTitle) {
    var base = window.MTCharts && window.MTCharts.baseLayout
      ? window.MTCharts.baseLayout({ title: title, xTitle: xTitle, yTitle: yTitle, height: 320 })
      : { title: { text: title }, height: 320, xaxis: { title: { text: xTitle } }, yaxis: { title: { text: yTitle } },
          paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)" };
    base.hovermode = "closest";
    return base;
  }

  function colors() {
    return (window.MTCharts && window.MTCharts.COLORS) ||
      ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#9C755F", "#7F7F7F"];
  }

  // series: [{name, points: [{x, y, label, href}]}]. One series goes through MTCharts.scatter; several
  // are one plotly trace each in MTCharts' layout and colours (a legend names them).
  function drawScatter(box, title, series, opts) {
    series = series.filter(function (s) { return s.points.length; });
    var total = series.reduce(function (n, s) { return n + s.points.length; }, 0);
    if (!total) { return message(box, opts.empty || "No run has both values yet."); }
    if (!window.Plotly) { return message(box, title + ": the chart library did not load."); }
    if (series.length === 1 && !opts.logX && window.MTCharts && window.MTCharts.scatter) {
      var drawn = window.MTCharts.scatter(box, title, series[0].points, opts);
      if (drawn && opts.names && drawn.data) {  // a few runs: their names next to the points
        window.Plotly.restyle(drawn, { mode: "markers+text", textposition: "top center", cliponaxis: false });
      }
      return drawn;
    }
    box.textContent = "";
    var plot = document.createElement("div");
    plot.className = "mt-plot";
    plot.setAttribute("role", "img");
    plot.setAttribute("aria-label", title + ": " + total + " points in " + series.length + " series");
    box.appendChild(plot);
    var palette = colors();
    var traces = series.map(function (s, k) {
      return {
        type: "scatter", mode: opts.names ? "markers+text" : "markers", name: s.name,
        x: s.points.map(function (p) { return p.x; }), y: s.points.map(function (p) { return p.y; }),
        text: s.points.map(function (p) { return p.label; }),
        customdata: s.points.map(function (p) { return p.href || ""; }),
        marker: { color: palette[k % palette.length], size: 9 },
        textposition: "top center", cliponaxis: false,
        hovertemplate: "%{text}<br>" + opts.xTitle + " %{x:.4~g}<br>" + opts.yTitle + " %{y:.4~g}<extra>" + s.name + "</extra>"
      };
    });
    var lay = layout(title, opts.xTitle, opts.yTitle);
    lay.showlegend = true;
    if (opts.logX) { lay.xaxis.type = "log"; }
    window.Plotly.newPlot(plot, traces, lay, { responsive: true, displaylogo: false, modeBarButtons: [["toImage"]] });
    plot.on("plotly_click", function (ev) {
      var href = ev && ev.points && ev.points[0] && ev.points[0].customdata;
      if (href) { window.location.href = href; }
    });
    return plot;
  }

  // A positive axis spanning more than a factor of 20 (learning rates, weights) reads better in log.
  function wantsLog(values) {
    var v = values.filter(isNum);
    if (!v.length || v.some(function (x) { return x <= 0; })) { return false; }
    return Math.max.apply(null, v) / Math.min.apply(null, v) > 20;
  }

  // ------------------------------------------------------------------------------------ compare page
  function diffToggle(link) {
    var table = document.getElementById("compare-settings");
    if (!table) { return; }
    link.addEventListener("keydown", function (ev) {  // a switch toggles on Space as well as Enter
      if (ev.key === " ") { ev.preventDefault(); link.click(); }
    });
    link.addEventListener("click", function (ev) {
      ev.preventDefault();
      var on = link.getAttribute("aria-checked") !== "true";
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        tr.hidden = on && !tr.classList.contains("differs");
      });
      table.classList.toggle("only-diff", on);
      link.setAttribute("aria-checked", on ? "true" : "false");
      link.textContent = on ? "Show all settings" : "Only differences";
      link.href = on ? link.dataset.off : link.dataset.on;
      if (window.history && window.history.replaceState) {
        window.history.replaceState(null, "", on ? link.dataset.on : link.dataset.off);
      }
    });
  }

  function comparePlots(data) {
    var runs = data.runs;
    var xSel = document.getElementById("explore-x");
    var ySel = document.getElementById("explore-y");
    var box = document.getElementById("explore-scatter");
    var numeric = {};
    runs.forEach(function (r) {
      Object.keys(r.hp).forEach(function (k) { if (isNum(r.hp[k])) { numeric[k] = true; } });
    });
    var keys = Object.keys(numeric).sort();
    var differing = data.differing.filter(function (k) { return numeric[k]; });
    keys = differing.concat(keys.filter(function (k) { return differing.indexOf(k) < 0; }));
    keys.forEach(function (k) {
      var o = document.createElement("option");
      o.value = k;
      o.textContent = differing.indexOf(k) >= 0 ? k + " (differs)" : k;
      xSel.appendChild(o);
    });
    var labels = {};
    data.metrics.forEach(function (m) { labels[m.key] = m.label; });

    function draw() {
      var x = xSel.value, y = ySel.value;
      if (!x) { return message(box, "These runs have no numeric hyperparameter."); }
      var points = runs.filter(function (r) { return isNum(r.hp[x]) && isNum(r.metrics[y]); }).map(function (r) {
        return { x: r.hp[x], y: r.metrics[y], label: r.label, href: r.href };
      });
      drawScatter(box, labels[y] + " by " + x, [{ name: labels[y], points: points }],
                  { xTitle: x, yTitle: labels[y], names: true, empty: "No run has both " + x + " and " + labels[y] + " (runs still going, or failed)." });
      box.dataset.x = x;
      box.dataset.y = y;
    }
    xSel.addEventListener("change", draw);
    ySel.addEventListener("change", draw);
    draw();

    var pc = document.getElementById("explore-parcoords");
    if (!pc) { return; }
    var scored = runs.filter(function (r) { return isNum(r.metrics["recovered.hm"]); });
    var dims = differing.filter(function (k) { return scored.every(function (r) { return isNum(r.hp[k]); }); });
    if (scored.length < 3 || !dims.length) {
      return message(pc, scored.length < 3
        ? "Parallel coordinates need 3 runs with a recovered HM (" + scored.length + " have one)."
        : "No numeric hyperparameter differs between these runs.");
    }
    if (!window.Plotly) { return message(pc, "Parallel coordinates: the chart library did not load."); }
    var cols = dims.map(function (k) { return { label: k, values: scored.map(function (r) { return r.hp[k]; }) }; });
    cols.push({ label: "recovered HM (%)", values: scored.map(function (r) { return r.metrics["recovered.hm"]; }) });
    if (window.MTCharts && window.MTCharts.parcoords) {
      window.MTCharts.parcoords(pc, "Differing hyperparameters, coloured by recovered HM", cols, {});
    } else {
      pc.textContent = "";
      var plot = document.createElement("div");
      pc.appendChild(plot);
      window.Plotly.newPlot(plot, [{ type: "parcoords", line: { color: cols[cols.length - 1].values, colorscale: "Viridis", showscale: true },
        dimensions: cols }], { height: 360, paper_bgcolor: "rgba(0,0,0,0)" }, { responsive: true, displaylogo: false });
    }
  }

  // -------------------------------------------------------------------------------------- sweep page
  function sweepPlot(data) {
    var box = document.getElementById("sweep-scatter");
    var sel = document.getElementById("sweep-x");
    if (!box) { return; }
    if (!data.axes.length) { return message(box, "This sweep has no grid: one setting for every cell."); }
    function draw() {
      var x = sel ? sel.value : data.axes[0];
      var others = data.axes.filter(function (a) { return a !== x; });
      var bySeries = {}, order = [];
      data.cells.forEach(function (c) {
        if (!isNum(c.params[x]) || !isNum(c.hm)) { return; }
        var name = others.length ? others.map(function (a) { return a + "=" + c.params[a]; }).join(", ") : "HM";
        if (!bySeries[name]) { bySeries[name] = []; order.push(name); }
        bySeries[name].push({ x: c.params[x], y: c.hm, label: c.label, href: c.href });
      });
      var xs = data.cells.map(function (c) { return c.params[x]; });
      drawScatter(box, "Recovered HM (%) by " + x, order.map(function (n) { return { name: n, points: bySeries[n] }; }),
                  { xTitle: x, yTitle: "recovered HM (%)", logX: wantsLog(xs), empty: "No cell has finished yet." });
      box.dataset.x = x;
    }
    if (sel) { sel.addEventListener("change", draw); }
    draw();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var link = document.getElementById("diff-toggle");
    if (link) { diffToggle(link); }
    var compare = document.getElementById("explore-data");
    if (compare) { comparePlots(JSON.parse(compare.textContent)); }
    var sweep = document.getElementById("sweep-explore-data");
    if (sweep) { sweepPlot(JSON.parse(sweep.textContent)); }
  });
})();
