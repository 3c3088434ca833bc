// MergeTune dashboard charts, drawn with plotly.js (served from our own origin: the page loads
// {{ PLOTLY_URL }} before this file runs its charts). The one chart module of the dashboard:
//   MTCharts.COLORS                      colour-blind aware palette (Okabe-Ito, then Tableau), >= 8 colours
//   MTCharts.baseLayout(opts)            our plotly layout: CSS font and colours, nice ticks, unified hover
//   MTCharts.lineChart(box, title, series, opts) -> the plot element; MTCharts.update(box, series)
//   MTCharts.scatter(box, title, points, opts), MTCharts.parcoords(box, title, dims, opts)
//   MTCharts.epochCharts(box, epochs)    the job page's live per-epoch charts (loss parts, validation accuracy)
// Every chart's drawing is a role="img" element with an aria-label summing it up, followed by a visually
// hidden table of its numbers.
(function () {
  "use strict";

  var COLORS = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#9C755F", "#7F7F7F",
                "#B07AA1", "#59A14F"];
  var DASHES = ["solid", "dash", "dot", "dashdot"];
  var MODEBAR = [["toImage"]];  // download as PNG; zoom is a drag, reset a double click

  function cssVar(name, fallback) {
    var root = document.documentElement;
    var v = root ? window.getComputedStyle(root).getPropertyValue(name).trim() : "";
    return v || fallback;
  }

  function theme() {
    var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    return {
      fg: cssVar("--fg", dark ? "#e6e9ed" : "#1d232b"),
      muted: cssVar("--muted", dark ? "#a9b2bd" : "#4b5563"),
      bg: cssVar("--bg", dark ? "#14181d" : "#f4f6f8"),
      card: cssVar("--card", dark ? "#1d232b" : "#ffffff"),
      grid: cssVar("--grid", dark ? "#39424d" : "#e3e7ec"),
      font: (document.body && window.getComputedStyle(document.body).fontFamily) || "system-ui, sans-serif"
    };
  }

  function fmtNum(v) {  // at most 4 significant digits, no trailing zeros: 1, 2.295, 0.01234, 1234.6
    if (typeof v !== "number" || !isFinite(v)) { return "—"; }
    if (Number.isInteger(v)) { return String(v); }
    return Math.abs(v) >= 1000 ? String(Math.round(v * 10) / 10) : String(parseFloat(v.toPrecision(4)));
  }

  function axis(t, title, extra) {
    var ax = {
      title: { text: title || "", font: { size: 12, color: t.muted }, standoff: 6 },
      gridcolor: t.grid, linecolor: t.grid, zerolinecolor: t.grid, tickcolor: t.grid,
      tickfont: { color: t.muted, size: 11 }, tickformat: ".3~g", hoverformat: ".4~g",
      automargin: true, showline: true, nticks: 8
    };
    Object.keys(extra || {}).forEach(function (k) { ax[k] = extra[k]; });
    return ax;
  }

  // opts: {title, xTitle, yTitle, height, legend (default true)}
  function baseLayout(opts) {
    opts = opts || {};
    var t = theme();
    return {
      title: { text: opts.title || "", x: 0, xanchor: "left", y: 0.98, yanchor: "top", font: { size: 13, color: t.fg } },
      font: { family: t.font, size: 12, color: t.fg },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      height: opts.height || 300,
      autosize: true,
      margin: { l: 8, r: 12, t: opts.title ? 34 : 12, b: 8, pad: 2 },
      hovermode: "x unified",
      hoverlabel: { bgcolor: t.card, bordercolor: t.grid, font: { color: t.fg, family: t.font, size: 12 } },
      showlegend: opts.legend !== false,
      // one legend per chart, below its own plot and inside its own box (the margin grows to hold it)
      legend: { orientation: "h", x: 0, xanchor: "left", y: 0, yref: "container", yanchor: "bottom",
                font: { size: 11, color: t.fg }, bgcolor: "rgba(0,0,0,0)" },
      xaxis: axis(t, opts.xTitle),
      yaxis: axis(t, opts.yTitle),
      modebar: { bgcolor: "rgba(0,0,0,0)", color: t.muted, activecolor: t.fg },
      uirevision: "keep",
      dragmode: "zoom"
    };
  }

  function config(title) {
    return {
      responsive: true, displaylogo: false, displayModeBar: true, modeBarButtons: MODEBAR, doubleClick: "reset",
      toImageButtonOptions: { format: "png", scale: 2, filename: (title || "chart").replace(/[^\w.-]+/g, "-") }
    };
  }

  function clean(series) {
    return (series || []).map(function (s) {
      var pts = (s.points || []).filter(function (p) {
        return p && typeof p[0] === "number" && typeof p[1] === "number" && isFinite(p[0]) && isFinite(p[1]);
      });
      return { label: String(s.label), points: pts, dash: s.dash, color: s.color };
    }).filter(function (s) { return s.points.length; });
  }

  // Each series its own colour: its requested one unless already taken, else the next free palette colour.
  function colours(series) {
    var used = {};
    var out = [];
    series.forEach(function (s) { if (s.color && !used[s.color]) { used[s.color] = true; out.push(s.color); } else { out.push(null); } });
    var k = 0;
    return out.map(function (c, i) {
      if (c) { return c; }
      while (k < COLORS.length && used[COLORS[k]]) { k++; }
      var pick = k < COLORS.length ? COLORS[k] : "hsl(" + Math.round(i * 137.5 % 360) + ",60%,45%)";
      used[pick] = true;
      return pick;
    });
  }

  // A y range that does not blow tiny changes up to the full height: at least 6% of the values' size.
  function honestRange(ys, yMin, yMax) {
    var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    var mid = (lo + hi) / 2, half = Math.max((hi - lo) / 2 * 1.12, Math.abs(mid) * 0.03, 1e-6);
    var r = [mid - half, mid + half];
    if (yMin !== undefined && yMin !== null) { r[0] = yMin; }
    if (yMax !== undefined && yMax !== null) { r[1] = yMax; }
    return r;
  }

  function extent(series) {
    var xs = [], ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    return { xs: xs, ys: ys, x0: Math.min.apply(null, xs), x1: Math.max.apply(null, xs) };
  }

  function lineFigure(title, series, opts) {
    var ex = extent(series);
    var cols = colours(series);
    var t = theme();
    var traces = series.map(function (s, i) {
      var n = s.points.length;
      var tr = {
        type: "scatter", mode: n === 1 ? "markers" : "lines+markers", name: s.label,
        x: s.points.map(function (p) { return p[0]; }), y: s.points.map(function (p) { return p[1]; }),
        line: { color: cols[i], width: 2, dash: s.dash === true ? "dash" : s.dash || DASHES[0] },
        marker: { color: cols[i], size: n > 40 ? 0 : 5 },
        hovertemplate: "%{y:.4~g}<extra>" + s.label.replace(/</g, "&lt;") + "</extra>"
      };
      if (opts.markEnds && n > 1) {  // the zero-shot (first) and recovered (last) ends
        tr.marker.size = s.points.map(function (p, k) { return k === 0 || k === n - 1 ? 10 : 4; });
        tr.marker.symbol = s.points.map(function (p, k) { return k === 0 ? "circle-open" : k === n - 1 ? "diamond" : "circle"; });
        tr.marker.line = { color: cols[i], width: 2 };
      }
      return tr;
    });
    var layout = baseLayout({ title: title, xTitle: opts.xTitle, yTitle: opts.yTitle, height: opts.height,
                              legend: series.length > 1 || opts.legend === true });
    layout.yaxis.range = honestRange(ex.ys.concat((opts.refLines || []).map(function (r) { return r.y; })), opts.yMin, opts.yMax);
    if (ex.x1 === ex.x0) { layout.xaxis.range = [ex.x0 - 1, ex.x0 + 1]; }
    if (Number.isInteger(ex.x0) && Number.isInteger(ex.x1) && ex.x1 - ex.x0 <= 12 && !opts.markEnds) {
      layout.xaxis.dtick = 1;
    }
    layout.shapes = [];
    layout.annotations = [];
    (opts.refLines || []).forEach(function (r) {
      layout.shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: r.y, y1: r.y,
                           line: { color: t.muted, width: 1, dash: "dot" } });
      layout.annotations.push({ xref: "paper", x: 1, xanchor: "right", y: r.y, yanchor: "bottom", showarrow: false,
                                text: r.label, font: { size: 10, color: t.muted } });
    });
    if (opts.markEnds) {
      [[ex.x0, "left", "zero-shot (" + fmtNum(ex.x0) + ")"], [ex.x1, "right", "recovered (" + fmtNum(ex.x1) + ")"]].forEach(function (e) {
        layout.shapes.push({ type: "line", yref: "paper", y0: 0, y1: 1, x0: e[0], x1: e[0], line: { color: t.grid, width: 1 } });
        layout.annotations.push({ yref: "paper", y: 1, yanchor: "bottom", x: e[0], xanchor: e[1], showarrow: false,
                                  text: e[2], font: { size: 10, color: t.muted } });
      });
    }
    return { traces: traces, layout: layout };
  }

  function summary(title, series, opts) {
    var ex = extent(series);
    var s = title + ": " + series.length + " series" + (series.length ? ", " + (opts.xTitle || "x") + " " +
            fmtNum(ex.x0) + "-" + fmtNum(ex.x1) : "");
    var last = series.slice(0, 4).map(function (ser) { return ser.label + " " + fmtNum(ser.points[ser.points.length - 1][1]); });
    return last.length ? s + "; last values: " + last.join(", ") : s;
  }

  // The numbers of the chart as a visually hidden table (screen readers, no canvas needed).
  function dataTable(title, series, opts) {
    var table = document.createElement("table");
    table.className = "mt-sr-only mt-chart-data";
    var cap = document.createElement("caption");
    cap.textContent = title;
    table.appendChild(cap);
    var head = document.createElement("tr");
    [opts.xTitle || "x"].concat(series.map(function (s) { return s.label; })).forEach(function (h) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = h;
      head.appendChild(th);
    });
    var thead = document.createElement("thead");
    thead.appendChild(head);
    table.appendChild(thead);
    var xs = [];
    series.forEach(function (s) { s.points.forEach(function (p) { if (xs.indexOf(p[0]) < 0) { xs.push(p[0]); } }); });
    xs.sort(function (a, b) { return a - b; });
    var body = document.createElement("tbody");
    xs.forEach(function (x) {
      var tr = document.createElement("tr");
      var th = document.createElement("th");
      th.scope = "row";
      th.textContent = fmtNum(x);
      tr.appendChild(th);
      series.forEach(function (s) {
        var td = document.createElement("td");
        var p = s.points.filter(function (q) { return q[0] === x; })[0];
        td.textContent = p ? fmtNum(p[1]) : "—";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    return table;
  }

  function resolve(box) {
    if (typeof box === "string") { box = document.querySelector(box); }
    return box && box.classList && box.classList.contains("mt-plot") ? box.parentNode : box;
  }

  // Sets up `box` to hold one chart: the plot element and, once drawn, a hidden table after it. The
  // drawing (plotly's first SVG layer) is the role="img" element with the summary as its aria-label;
  // the toolbar beside it (the PNG button) stays a toolbar. Before anything is drawn the plot element
  // itself is that image.
  function frame(box, label) {
    box.textContent = "";
    box.classList.add("mt-chart");
    var plot = document.createElement("div");
    plot.className = "mt-plot";
    box.appendChild(plot);
    setSummary(plot, label);
    watchSize(plot);
    return plot;
  }

  function setSummary(plot, label) {
    plot.dataset.summary = label;
    labelDrawing(plot);
  }

  function labelDrawing(plot) {
    var layers = plot.querySelectorAll("svg.main-svg");
    if (!layers.length) {
      plot.setAttribute("role", "img");
      plot.setAttribute("aria-label", plot.dataset.summary);
      return;
    }
    plot.removeAttribute("role");
    plot.removeAttribute("aria-label");
    layers[0].setAttribute("role", "img");
    layers[0].setAttribute("aria-label", plot.dataset.summary);
    for (var i = 1; i < layers.length; i++) { layers[i].setAttribute("aria-hidden", "true"); }
  }

  function draw(plot, traces, layout, title) {
    var first = !plot.classList.contains("js-plotly-plot");
    var done = (first ? window.Plotly.newPlot : window.Plotly.react)(plot, traces, layout, config(title));
    if (first) { plot.on("plotly_afterplot", function () { labelDrawing(plot); }); }
    labelDrawing(plot);
    return done;
  }

  // plotly sizes a responsive chart on window resizes only: follow the element's own width too (a
  // neighbour chart added to the same row, a card that wraps).
  var sizes = window.ResizeObserver ? new window.ResizeObserver(function (entries) {
    entries.forEach(function (e) {
      var plot = e.target;
      var w = Math.round(e.contentRect.width);
      if (w && plot._mtWidth !== w && plot.classList.contains("js-plotly-plot") && window.Plotly) {
        plot._mtWidth = w;
        window.Plotly.Plots.resize(plot);
      }
    });
  }) : null;
  function watchSize(plot) { if (sizes) { sizes.observe(plot); } }

  function noPlotly(box, title) {
    box.textContent = "";
    var p = document.createElement("p");
    p.className = "muted small";
    p.textContent = title + ": the chart library did not load.";
    box.appendChild(p);
    return null;
  }

  // series: [{label, points: [[x, y], ...], dash?, color?}]
  // opts: {xTitle, yTitle, yMin?, yMax?, refLines?: [{y, label}], markEnds?: bool, height?, legend?: true
  // (a legend even for one series; several series always have one)}
  function lineChart(box, title, series, opts) {
    box = resolve(box);
    opts = opts || {};
    series = clean(series);
    if (!window.Plotly) { return noPlotly(box, title); }
    var plot = frame(box, summary(title, series, opts));
    box._mt = { kind: "line", title: title, opts: opts, plot: plot };
    if (!series.length) {
      setSummary(plot, title + ": no data yet");
      return plot;
    }
    var fig = lineFigure(title, series, opts);
    draw(plot, fig.traces, fig.layout, title);
    box.appendChild(dataTable(title, series, opts));
    return plot;
  }

  // New data for a chart drawn by lineChart; the user's zoom stays (uirevision).
  function update(box, series) {
    box = resolve(box);
    var st = box && box._mt;
    if (!st) { return null; }
    series = clean(series);
    if (!series.length || !window.Plotly) { return st.plot; }
    if (!st.plot.classList.contains("js-plotly-plot")) { return lineChart(box, st.title, series, st.opts); }
    var fig = lineFigure(st.title, series, st.opts);
    st.plot.dataset.summary = summary(st.title, series, st.opts);
    draw(st.plot, fig.traces, fig.layout, st.title);
    var old = box.querySelector("table.mt-chart-data");
    var table = dataTable(st.title, series, st.opts);
    if (old) { box.replaceChild(table, old); } else { box.appendChild(table); }
    return st.plot;
  }

  // points: [{x, y, label, href?}]; a click on a point with href opens it. opts: {xTitle, yTitle, refLines?}
  function scatter(box, title, points, opts) {
    box = resolve(box);
    opts = opts || {};
    points = (points || []).filter(function (p) { return isFinite(p.x) && isFinite(p.y) && typeof p.x === "number" && typeof p.y === "number"; });
    if (!window.Plotly) { return noPlotly(box, title); }
    var plot = frame(box, title + ": " + points.length + " points");
    box._mt = { kind: "scatter", title: title, opts: opts, plot: plot };
    var layout = baseLayout({ title: title, xTitle: opts.xTitle, yTitle: opts.yTitle, height: opts.height, legend: false });
    layout.hovermode = "closest";
    layout.shapes = (opts.refLines || []).map(function (r) {
      return { type: "line", xref: "paper", x0: 0, x1: 1, y0: r.y, y1: r.y, line: { color: theme().muted, width: 1, dash: "dot" } };
    });
    var trace = {
      type: "scatter", mode: "markers", name: title,
      x: points.map(function (p) { return p.x; }), y: points.map(function (p) { return p.y; }),
      text: points.map(function (p) { return p.label || ""; }),
      customdata: points.map(function (p) { return p.href || ""; }),
      marker: { color: COLORS[0], size: 9, line: { color: COLORS[0], width: 1 } },
      hovertemplate: "%{text}<br>" + (opts.xTitle || "x") + " %{x:.4~g}<br>" + (opts.yTitle || "y") + " %{y:.4~g}<extra></extra>"
    };
    draw(plot, [trace], layout, title);
    plot.on("plotly_click", function (ev) {
      var href = ev && ev.points && ev.points[0] && ev.points[0].customdata;
      if (href) { window.location.href = href; }
    });
    var table = dataTable(title, points.map(function (p) { return { label: p.label || "", points: [[p.x, p.y]] }; }),
                          { xTitle: opts.xTitle });
    box.appendChild(table);
    return plot;
  }

  // dims: [{label, values: [...]}]; the lines are coloured by the last dimension.
  function parcoords(box, title, dims, opts) {
    box = resolve(box);
    opts = opts || {};
    dims = (dims || []).filter(function (d) { return d && d.values && d.values.length; });
    if (!window.Plotly) { return noPlotly(box, title); }
    var n = dims.length ? dims[0].values.length : 0;
    var plot = frame(box, title + ": " + dims.length + " dimensions, " + n + " rows");
    box._mt = { kind: "parcoords", title: title, opts: opts, plot: plot };
    if (!dims.length) { return plot; }
    var t = theme();
    var last = dims[dims.length - 1];
    var layout = baseLayout({ title: title, height: opts.height || 360, legend: false });
    layout.margin = { l: 60, r: 60, t: 64, b: 24 };
    var trace = {
      type: "parcoords",
      line: { color: last.values, colorscale: "Viridis", showscale: true,
              colorbar: { title: { text: last.label, font: { color: t.fg } }, tickfont: { color: t.muted }, thickness: 12 } },
      labelfont: { color: t.fg, size: 12 }, tickfont: { color: t.muted, size: 11 }, rangefont: { color: t.muted, size: 10 },
      dimensions: dims.map(function (d) { return { label: d.label, values: d.values, tickformat: ".3~g" }; })
    };
    draw(plot, [trace], layout, title);
    var rows = [];
    for (var i = 0; i < n; i++) { rows.push(i); }
    var table = document.createElement("table");
    table.className = "mt-sr-only mt-chart-data";
    var html = document.createElement("caption");
    html.textContent = title;
    table.appendChild(html);
    var head = document.createElement("tr");
    dims.forEach(function (d) { var th = document.createElement("th"); th.scope = "col"; th.textContent = d.label; head.appendChild(th); });
    table.appendChild(head);
    rows.forEach(function (i) {
      var tr = document.createElement("tr");
      dims.forEach(function (d) { var td = document.createElement("td"); td.textContent = fmtNum(d.values[i]); tr.appendChild(td); });
      table.appendChild(tr);
    });
    box.appendChild(table);
    return plot;
  }

  var LOSS_PARTS = [["loss", "total loss"], ["ce", "cross-entropy"], ["zs", "zero-shot surrogate"], ["lmc", "path term"]];

  // The job page's live charts: epochs = [{epoch, loss, ce, zs, lmc, val_acc}]. The first call draws them
  // into two boxes inside `box`; later calls update them in place (the zoom stays). Returns how many drew.
  function epochCharts(box, epochs) {
    var losses = LOSS_PARTS.map(function (pair) {
      return { label: pair[1], points: epochs.map(function (e) { return [e.epoch, e[pair[0]]]; }) };
    });
    var acc = [{ label: "val acc", points: epochs.map(function (e) { return [e.epoch, e.val_acc]; }) }];
    var drawn = 0;
    [["live-chart-loss", "training loss (per-epoch means)", losses, "loss"],
     ["live-chart-acc", "validation accuracy (%)", acc, "accuracy (%)"]].forEach(function (c) {
      if (!clean(c[2]).length) { return; }
      var sub = document.getElementById(c[0]);
      if (!sub) {
        sub = document.createElement("figure");
        sub.id = c[0];
        box.appendChild(sub);
        lineChart(sub, c[1], c[2], { xTitle: "epoch", yTitle: c[3] });
      } else {
        update(sub, c[2]);
      }
      drawn++;
    });
    return drawn;
  }

  // A switch between light and dark redraws every chart in the new colours.
  if (window.matchMedia) {
    var mq = window.matchMedia("(prefers-color-scheme: dark)");
    var redraw = function () {
      if (!window.Plotly) { return; }
      document.querySelectorAll(".mt-plot.js-plotly-plot").forEach(function (plot) {
        var t = theme();
        var ax = { gridcolor: t.grid, linecolor: t.grid, zerolinecolor: t.grid, "tickfont.color": t.muted, "title.font.color": t.muted };
        var upd = { "font.color": t.fg, "title.font.color": t.fg, "legend.font.color": t.fg,
                    "hoverlabel.bgcolor": t.card, "hoverlabel.font.color": t.fg };
        Object.keys(ax).forEach(function (k) { upd["xaxis." + k] = ax[k]; upd["yaxis." + k] = ax[k]; });
        window.Plotly.relayout(plot, upd);
      });
    };
    if (mq.addEventListener) { mq.addEventListener("change", redraw); }
  }

  window.MTCharts = {
    COLORS: COLORS, baseLayout: baseLayout, lineChart: lineChart, update: update, scatter: scatter,
    parcoords: parcoords, epochCharts: epochCharts, honestRange: honestRange
  };
})();
