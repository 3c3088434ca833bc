// MergeTune dashboard: polling for the job page and the job list. No dependencies.
(function () {
  "use strict";

  var TERMINAL = ["succeeded", "failed", "cancelled"];

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname); }
      if (!r.ok) { throw new Error("HTTP " + r.status); }
      return r.json();
    });
  }

  function setBadge(el, status) {
    if (!el || el.dataset.status === status) { return; }
    el.className = el.className.replace(/\bstatus-\S+/g, "").trim() + " status-" + status;
    el.dataset.status = status;
    el.textContent = status;
  }

  function fmt(x, digits) {
    return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "—";
  }

  function progressText(p) {
    if (!p || !p.epochs) { return null; }
    var s = "epoch " + (p.epoch || 0) + "/" + p.epochs;
    if (p.steps) { s += " · step " + (p.step || 0) + "/" + p.steps; }
    if (typeof p.loss === "number") { s += " · loss " + fmt(p.loss, 4); }
    return s;
  }

  // ----------------------------------------------------------------------------- job page
  function jobPage(root) {
    var id = root.dataset.jobId;
    var after = parseInt(root.dataset.lastEvent || "0", 10);
    var status = root.dataset.status;
    var badge = document.getElementById("job-status");
    var historyEl = document.getElementById("status-history");

    function showHistory(items) {  // the server's record of the job's status changes
      if (!items || !items.length) { return; }
      historyEl.textContent = "";
      items.forEach(function (h, i) {
        if (i) { historyEl.appendChild(document.createTextNode(" → ")); }
        var span = document.createElement("span");
        span.title = h.at + " UTC: " + h.message;
        span.textContent = h.status;
        historyEl.appendChild(span);
      });
    }

    var chartBox = document.getElementById("live-charts");
    var epochsShown = -1;
    function drawEpochs(epochs) {
      if (!chartBox || !window.MTCharts || !epochs || epochs.length === epochsShown) { return; }
      epochsShown = epochs.length;
      if (window.MTCharts.epochCharts(chartBox, epochs)) {
        document.getElementById("live-charts-empty").hidden = true;
      }
    }
    try { drawEpochs(JSON.parse(document.getElementById("epoch-data").textContent)); } catch (e) { /* no data */ }

    // report.json's training records: one chart per quantity (a finished job's page)
    var training = document.getElementById("training-data");
    if (training && window.MTCharts) {
      JSON.parse(training.textContent).forEach(function (c) {
        var box = document.getElementById("training-" + c.key);
        if (box) { window.MTCharts.lineChart(box, c.title, [{ label: c.title, points: c.points }], { xTitle: "epoch", height: 220 }); }
      });
    }

    var scroller = document.getElementById("events-scroll");
    scroller.scrollTop = scroller.scrollHeight;

    function appendEvents(events) {
      var body = document.querySelector("#events tbody");
      var atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
      events.forEach(function (e) {
        var tr = document.createElement("tr");
        tr.className = "level-" + e.level;
        tr.dataset.eventId = e.id;
        [e.seq, e.created_at, e.level, e.type, e.message].forEach(function (v) {
          var td = document.createElement("td");
          td.textContent = v;
          tr.appendChild(td);
        });
        body.appendChild(tr);
        after = Math.max(after, e.id);
      });
      if (atBottom && events.length) { scroller.scrollTop = scroller.scrollHeight; }
    }

    function update(data) {
      appendEvents(data.events || []);
      showHistory(data.status_history);
      drawEpochs(data.epochs);
      var text = progressText(data.progress);
      if (text) {
        document.getElementById("progress-text").textContent = text;
        var pct = Math.min(100, 100 * (data.progress.epoch || 0) / data.progress.epochs);
        document.getElementById("progress-bar").style.width = pct.toFixed(1) + "%";
      }
      document.getElementById("job-started").textContent = data.started_at;
      document.getElementById("job-finished").textContent = data.finished_at;
      document.getElementById("job-duration").textContent = data.duration;
      document.getElementById("queue-position").textContent = data.queue_position || "—";
      document.getElementById("queue-reason").textContent = data.queue_reason || "—";
      document.getElementById("queue-message").textContent = data.queue_message || "";
      document.getElementById("job-eta").textContent = data.eta_text || data.estimated_finish;
      document.getElementById("job-worker").textContent = data.worker_host || "—";
      if (data.status !== status) {
        status = data.status;
        root.dataset.status = status;
        setBadge(badge, status);
        if (status === "cancelling") {
          var form = document.getElementById("cancel-form");
          if (form) { form.remove(); }
        }
      }
      if (data.terminal) {
        // Metrics, curves and artifacts are rendered server-side: reload once the job has ended.
        window.setTimeout(function () { window.location.reload(); }, 300);
        return false;
      }
      return true;
    }

    // Live updates: the job's event stream (server-sent events) says when something changed, and each
    // message schedules one read of /live (a burst is one read, at most one every 300 ms). Without
    // EventSource, or when the stream fails 3 times in a row or is refused, the page polls /live.
    var base = "/ui/jobs/" + encodeURIComponent(id);
    var source = null, streamFailures = 0, polling = false, done = false;
    var timer = null, reading = false, readAgain = false, lastRead = 0;

    function read() {
      timer = null;
      if (done) { return; }
      if (reading) { readAgain = true; return; }
      reading = true;
      lastRead = Date.now();
      getJSON(base + "/live?after=" + after)
        .then(function (data) {
          reading = false;
          if (!update(data)) { done = true; closeStream(); return; }
          if (readAgain) { readAgain = false; schedule(); }
        })
        .catch(function () {
          reading = false;
          if (readAgain || !source) { readAgain = false; window.setTimeout(schedule, 1000); }
        });
    }
    function schedule() {
      if (done || timer !== null) { return; }
      timer = window.setTimeout(read, Math.max(0, 300 - (Date.now() - lastRead)));
    }
    function closeStream() {
      if (source) { source.close(); source = null; }
    }
    function poll() {  // the fallback: /live every second
      if (done) { return; }
      getJSON(base + "/live?after=" + after)
        .then(function (data) { if (update(data)) { window.setTimeout(poll, 1000); } else { done = true; } })
        .catch(function () { window.setTimeout(poll, 3000); });
    }
    function fallBack() {
      closeStream();
      root.dataset.liveMode = "poll";
      if (!polling && !done) { polling = true; window.setTimeout(poll, 1000); }
    }
    function follow() {
      if (!window.EventSource) { fallBack(); return; }
      source = new EventSource(base + "/events/stream");
      root.dataset.liveMode = "stream";
      var heard = function () { streamFailures = 0; schedule(); };
      source.onopen = schedule;
      source.onmessage = heard;                     // an event row
      source.addEventListener("job", heard);        // the status or progress changed
      source.addEventListener("end", function () {  // the job finished: one last read, no reconnect
        closeStream();
        schedule();
      });
      source.onerror = function () {
        streamFailures += 1;
        if (!source || source.readyState === EventSource.CLOSED || streamFailures >= 3) { fallBack(); }
      };
    }
    if (root.dataset.terminal !== "true") { follow(); }

    var cancel = document.getElementById("cancel-form");
    if (cancel) {
      cancel.addEventListener("submit", function (ev) {
        if (!window.confirm(cancel.dataset.confirm || "Cancel this job?")) { ev.preventDefault(); }
      });
    }
  }

  // ----------------------------------------------------------------------------- job list
  function listPage(panel) {
    var table = document.getElementById("jobs");
    var ids = table ? table.dataset.liveIds || "" : "";

    function renderWorkers(workers) {
      var body = document.querySelector("#health-workers tbody");
      body.textContent = "";
      if (!workers.length) {
        var tr = document.createElement("tr");
        tr.className = "empty";
        var td = document.createElement("td");
        td.colSpan = 3;
        td.className = "muted";
        td.textContent = "No worker has reported in the last 60 seconds.";
        tr.appendChild(td);
        body.appendChild(tr);
        return;
      }
      workers.forEach(function (w) {
        var tr = document.createElement("tr");
        var a = document.createElement("td");
        a.textContent = w.hostname;
        var b = document.createElement("td");
        b.textContent = w.last_seen + " (" + w.age_s + " s ago)";
        var c = document.createElement("td");
        if (w.current_job_id) {
          var link = document.createElement("a");
          link.href = "/jobs/" + encodeURIComponent(w.current_job_id);
          link.textContent = w.current_job_id;
          c.appendChild(link);
        } else {
          c.textContent = w.busy ? "busy (another project)" : "idle";
          c.className = "muted";
        }
        [a, b, c].forEach(function (td) { tr.appendChild(td); });
        body.appendChild(tr);
      });
    }

    function poll() {
      getJSON(panel.dataset.poll + "?ids=" + encodeURIComponent(ids))
        .then(function (data) {
          document.getElementById("health-queued").textContent = data.health.queued;
          document.getElementById("health-running").textContent = data.health.running;
          document.getElementById("health-workers-count").textContent = data.health.workers.length;
          renderWorkers(data.health.workers);
          Object.keys(data.jobs).forEach(function (jobId) {
            var row = table.querySelector('tr[data-job-id="' + CSS.escape(jobId) + '"]');
            if (!row) { return; }
            setBadge(row.querySelector(".badge"), data.jobs[jobId].status);
            var p = data.jobs[jobId].progress;
            if (p && p.epochs) { row.querySelector(".progress-cell").textContent = (p.epoch || 0) + "/" + p.epochs; }
          });
          window.setTimeout(poll, 2000);
        })
        .catch(function () { window.setTimeout(poll, 5000); });
    }
    window.setTimeout(poll, 2000);
  }

  // ----------------------------------------------------------------------------- new-job form
  // Only the groups of settings that apply to the chosen checkpoint's job type are shown (the others are
  // hidden and disabled, so they are neither sent nor validated); "Start job" stays disabled, with the
  // reason next to it, until a checkpoint and a dataset are chosen and every shown field is valid.
  function newJobForm(form) {
    var checkpoint = form.querySelector("#checkpoint_id");
    var dataset = form.querySelector("#dataset_id");
    var submit = form.querySelector("#new-job-submit");
    var why = document.getElementById(submit.getAttribute("aria-describedby"));
    var groups = Array.prototype.slice.call(form.querySelectorAll("fieldset[data-job-types]"));

    function labelOf(el) {
      var label = el.id && form.querySelector('label[for="' + el.id + '"]');
      return label ? label.textContent.replace(/\s+/g, " ").trim() : el.name;
    }

    function showGroups() {
      var option = checkpoint.options[checkpoint.selectedIndex];
      var type = option && option.value ? option.getAttribute("data-job-type") : "";
      groups.forEach(function (g) {
        var applies = !type || g.getAttribute("data-job-types").split(" ").indexOf(type) >= 0;
        g.hidden = !applies;
        g.disabled = !applies;
      });
    }

    function reason() {
      if (!checkpoint.value) { return "Choose a checkpoint to start a job."; }
      if (!dataset.value) { return "Choose a dataset to start a job."; }
      var fields = form.querySelectorAll("input, select, textarea");
      for (var i = 0; i < fields.length; i++) {
        var el = fields[i];
        if (el.type === "hidden" || !el.willValidate || el.validity.valid) { continue; }
        return labelOf(el) + ": " + el.validationMessage;
      }
      return "";
    }

    function update() {
      showGroups();
      var text = reason();
      submit.disabled = text !== "";
      why.textContent = text;
    }

    form.addEventListener("input", update);
    form.addEventListener("change", update);
    form.addEventListener("submit", function (ev) {
      update();
      if (submit.disabled) { ev.preventDefault(); }
    });
    update();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("new-job-form");
    if (form) { newJobForm(form); }
  });

  // ----------------------------------------------------------------------------- relative times
  // "12 s ago" words in <time datetime=...> elements, re-rendered every few seconds (as fmt_ago words them).
  var AGO = /^\d+ (s|min|h|d) ago$/;
  function agoText(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    var units = [["d", 86400], ["h", 3600], ["min", 60]];
    for (var i = 0; i < units.length; i++) { if (s >= units[i][1]) { return Math.floor(s / units[i][1]) + " " + units[i][0] + " ago"; } }
    return s + " s ago";
  }
  function tickTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime"));
      if (isNaN(at) || !AGO.test(t.textContent.trim())) { return; }
      var text = agoText(Date.now() - at);
      if (t.textContent !== text) { t.textContent = text; }
    });
  }
  window.setInterval(tickTimes, 5000);

  // ----------------------------------------------------------------------------- copy buttons
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) { return navigator.clipboard.writeText(text); }
    var area = document.createElement("textarea");  // plain-HTTP deployments: the old way
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { area.remove(); }
    return Promise.resolve();
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest && ev.target.closest("button.copy");
    if (!btn) { return; }
    ev.preventDefault();
    copyText(btn.dataset.copy).then(function () {
      btn.classList.add("copied");
      btn.title = "copied";
      window.setTimeout(function () { btn.classList.remove("copied"); }, 1500);
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    var job = document.getElementById("job");
    if (job) { jobPage(job); }
    var health = document.getElementById("health");
    if (health) { listPage(health); }
    var compare = document.getElementById("compare-data");
    if (compare && window.MTCharts) {
      var runs = JSON.parse(compare.textContent);
      var box = document.getElementById("compare-charts");
      var charts = [
        ["compare-chart-loss", "total loss per epoch", "epoch", "loss",
         function (r) { return r.epochs.map(function (e) { return [e.epoch, e.loss]; }); }],
        ["compare-chart-acc", "validation accuracy (%) per epoch", "epoch", "accuracy (%)",
         function (r) { return r.epochs.map(function (e) { return [e.epoch, e.val_acc]; }); }],
        ["compare-chart-alpha", "HM (%) from zero-shot (0) to recovered (1)", "alpha", "HM (%)",
         function (r) { return r.interpolation || []; }]
      ];
      charts.forEach(function (c) {
        var series = runs.map(function (r) { return { label: r.label, points: c[4](r) }; });
        var drawable = series.some(function (s) { return s.points.some(function (p) { return typeof p[1] === "number"; }); });
        if (!drawable) { return; }
        var fig = document.createElement("figure");
        fig.id = c[0];
        box.appendChild(fig);
        window.MTCharts.lineChart(fig, c[1], series, { xTitle: c[2], yTitle: c[3], markEnds: c[2] === "alpha", legend: true });
      });
    }
    var picker = document.getElementById("compare-form");
    if (picker) {
      picker.addEventListener("submit", function (ev) {
        var n = picker.querySelectorAll("input.compare-pick:checked").length;
        if (n < 2 || n > 8) { ev.preventDefault(); window.alert("Select 2 to 8 jobs to compare (" + n + " selected)."); }
      });
    }
  });
})();
