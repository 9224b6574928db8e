/* egressguard dashboard: live decisions (server-sent events) and charts (uPlot, vendored).
   Everything from the server is inserted as text (textContent), never as markup. */
(function () {
  "use strict";
  var cfg = document.getElementById("dashboard-config");
  if (!cfg || !cfg.dataset.decisions) { return; }
  var d = cfg.dataset;
  var COLORS = { "allow": "#1a6b35", "deny": "#b42318", "would-deny": "#845700" };
  var PALETTE = ["#1d4ed8", "#b42318", "#1a6b35", "#845700", "#6d28d9"];
  var MAX_ROWS = 100;
  var charts = {};

  function when(t) {
    return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  function el(name, text, cls) {
    var e = document.createElement(name);
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    if (cls) { e.className = cls; }
    return e;
  }

  function hostNode(name) {            /* wraps only at dots, like the server's markup */
    var code = el("code");
    var span = el("span", null, "host");
    span.title = name;
    if (String(name).length <= 32) {
      span.className = "host short";
      span.textContent = String(name);
      code.appendChild(span);
      return code;
    }
    var parts = String(name).split(".");
    parts.forEach(function (p, i) {
      span.appendChild(document.createTextNode(p + (i < parts.length - 1 ? "." : "")));
      if (i < parts.length - 1) { span.appendChild(document.createElement("wbr")); }
    });
    code.appendChild(span);
    return code;
  }

  function proposeHref(r) {
    var q = new URLSearchParams({ cluster: d.cluster, host: r.host, kind: r.kind });
    if (r.port !== null && r.port !== undefined) { q.set("port", String(r.port)); }
    return "/dashboard/propose?" + q.toString();
  }

  function row(r) {
    var tr = el("tr", null, "new");
    var cells = [el("td", when(r.time)), el("td"), el("td", r.port === null ? "" : r.port),
                 el("td"), el("td", r.layer), el("td")];
    cells[1].appendChild(hostNode(r.host));
    cells[3].appendChild(el("span", r.outcome, "badge " + r.outcome));
    cells[5].appendChild(el("code", r.rule));
    if (d.audit) {
      cells.push(el("td", r.client_identity || "(anonymous)"), el("td", r.policy_version),
                 el("td", r.reason));
    }
    if (d.propose) {
      var td = el("td");
      if (r.outcome !== "allow" && (r.kind === "http" || r.kind === "connect")) {
        var a = el("a", "Propose allow");
        a.href = proposeHref(r);
        td.appendChild(a);
      }
      cells.push(td);
    }
    cells.forEach(function (c) { tr.appendChild(c); });
    return tr;
  }

  function status(text) {
    var s = document.getElementById("live-status");
    if (s) { s.textContent = text; }
  }

  var refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer === null) {
      refreshTimer = setTimeout(function () { refreshTimer = null; loadSeries(); }, 1500);
    }
  }

  function live() {
    var body = document.getElementById("live-body");
    if (!body || !window.EventSource) { return; }
    var q = new URLSearchParams({ cluster: d.cluster });
    if (d.outcome) { q.set("outcome", d.outcome); }
    if (d.dest) { q.set("dest", d.dest); }
    if (d.identity) { q.set("identity", d.identity); }
    var source = new EventSource("/dashboard/live?" + q.toString());
    source.addEventListener("hello", function () { status("Live: connected."); });
    source.addEventListener("decision", function (ev) {
      var r = JSON.parse(ev.data);
      body.insertBefore(row(r), body.firstChild);
      while (body.rows.length > MAX_ROWS) { body.deleteRow(body.rows.length - 1); }
      status("Live: connected. Last decision " + when(r.time) + " (" + r.host + ": " +
             r.outcome + ").");
      refreshSoon();
    });
    source.addEventListener("gap", function () {
      status("Live: some decisions were skipped (too many at once); reload for all.");
    });
    source.onerror = function () { status("Live: reconnecting..."); };
  }

  function sized(box) { return Math.max(300, box.clientWidth - 4); }

  function draw(id, data, series, label) {
    var box = document.getElementById(id);
    if (!box || !window.uPlot) { return; }
    if (charts[id]) { charts[id].setData(data); return; }
    box.textContent = "";
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", label);
    var opts = {
      width: sized(box), height: 200, series: [{}].concat(series),
      axes: [{}, { size: 60 }], legend: { live: false },
      cursor: { drag: { x: false, y: false } }, scales: { x: { time: true } }
    };
    charts[id] = new window.uPlot(opts, data, box);
  }

  function summary(dec, outcomes) {      /* the counts above the chart, kept current */
    var p = document.getElementById("decision-summary");
    if (!p) { return; }
    var sums = outcomes.map(function (o) {
      return dec[o].reduce(function (a, b) { return a + b; }, 0);
    });
    var total = sums.reduce(function (a, b) { return a + b; }, 0);
    p.textContent = total + " decisions in the last " + d.window + ". ";
    outcomes.forEach(function (o, i) { p.appendChild(el("span", o + ": " + sums[i], "badge " + o)); });
  }

  function loadSeries() {
    var q = new URLSearchParams({ cluster: d.cluster, window: d.window });
    if (d.dest) { q.set("dest", d.dest); }
    fetch("/dashboard/series?" + q.toString(), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) {
        var dec = s.decisions;
        var outcomes = ["allow", "deny", "would-deny"];
        summary(dec, outcomes);
        draw("chart-decisions", [dec.times].concat(outcomes.map(function (o) { return dec[o]; })),
             outcomes.map(function (o) {
               return { label: o, stroke: COLORS[o], width: 2, fill: COLORS[o] + "22" };
             }), "Decisions per " + dec.width + " s by outcome");
        if (s.bytes) {
          var hosts = Object.keys(s.bytes.hosts);
          if (!hosts.length) {
            var box = document.getElementById("chart-bytes");
            if (box && !charts["chart-bytes"]) {
              box.textContent = "";
              box.appendChild(el("p", "No closed connections in this window.", "hint"));
            }
            return;
          }
          draw("chart-bytes", [s.bytes.times].concat(hosts.map(function (h) {
            return s.bytes.hosts[h]; })), hosts.map(function (h, i) {
            return { label: h, stroke: PALETTE[i % PALETTE.length], width: 2 };
          }), "Bytes sent per " + s.bytes.width + " s to the top destinations");
        }
      })
      .catch(function () { status("Charts: could not load the data; reload to retry."); });
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var box = document.getElementById(id);
      if (box) { charts[id].setSize({ width: sized(box), height: 200 }); }
    });
  });
  live();
  loadSeries();
  setInterval(loadSeries, 30000);
}());
