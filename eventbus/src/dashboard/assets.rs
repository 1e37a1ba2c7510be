//! The dashboard's style and script, served inline with each page: nothing
//! is fetched from anywhere else.

pub(super) const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 20px; align-items: center; }
header a { color: #cfd6e4; text-decoration: none; }
header a.here { color: #fff; font-weight: 600; }
header .mode { margin-left: auto; font-size: 12px; color: #9aa5b8; }
main { padding: 16px 20px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e3e6eb; vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; color: #5b6475; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.paused { color: #a15c00; font-weight: 600; }
.stalled { color: #b3261e; }
form.inline { display: inline; }
button { font: inherit; padding: 3px 10px; border: 1px solid #b8c0cc; border-radius: 4px; background: #fff; cursor: pointer; }
button.danger { border-color: #d99; color: #a11; }
.filters { margin-bottom: 12px; display: flex; gap: 8px; flex-wrap: wrap; align-items: end; }
.filters label { display: flex; flex-direction: column; font-size: 12px; color: #5b6475; }
input[type=text], input[type=search] { font: inherit; padding: 3px 6px; }
pre { background: #fff; border: 1px solid #e3e6eb; padding: 10px; overflow: auto; }
.error { color: #b3261e; }
.notice { background: #fff8e1; border: 1px solid #f0d98c; padding: 8px 12px; margin-bottom: 12px; }
svg.chart { width: 120px; height: 24px; }
svg.chart polyline { fill: none; stroke: #3867d6; stroke-width: 1.5; }
.muted { color: #7b8494; }
"#;

/// Live numbers for the subscriptions page: stats over server-sent events
/// into the cells marked `data-sub`/`data-field`, and a line of the
/// delivered rate per subscription. The stream is closed while the tab is
/// hidden and opened again when it shows.
pub(super) const LIVE: &str = r#"
(function () {
  var history = {};
  var last = {};
  var source = null;
  function draw(name) {
    var chart = document.querySelector('svg[data-chart="' + CSS.escape(name) + '"] polyline');
    if (!chart) return;
    var points = history[name] || [];
    var top = Math.max.apply(null, points.concat([1]));
    chart.setAttribute('points', points.map(function (v, i) {
      return (i * 2) + ',' + (23 - (v / top) * 22).toFixed(1);
    }).join(' '));
  }
  function update(stats) {
    var now = Date.now();
    stats.forEach(function (s) {
      Object.keys(s).forEach(function (field) {
        var cell = document.querySelector('[data-sub="' + CSS.escape(s.name) + '"][data-field="' + field + '"]');
        if (cell) cell.textContent = field === 'paused' ? (s.paused ? 'paused' : 'running') : s[field];
      });
      var row = document.querySelector('tr[data-row="' + CSS.escape(s.name) + '"]');
      if (row) row.classList.toggle('paused', s.paused);
      var before = last[s.name];
      if (before) {
        var rate = (s.delivered - before.delivered) / Math.max((now - before.at) / 1000, 0.001);
        var rateCell = document.querySelector('[data-sub="' + CSS.escape(s.name) + '"][data-field="rate"]');
        if (rateCell) rateCell.textContent = rate.toFixed(1);
        (history[s.name] = history[s.name] || []).push(rate);
        if (history[s.name].length > 60) history[s.name].shift();
        draw(s.name);
      }
      last[s.name] = { delivered: s.delivered, at: now };
    });
  }
  function open() {
    if (source) return;
    source = new EventSource('stream');
    source.addEventListener('stats', function (e) { update(JSON.parse(e.data)); });
  }
  function close() {
    if (source) { source.close(); source = null; }
    last = {};
  }
  document.addEventListener('visibilitychange', function () {
    if (document.hidden) close(); else open();
  });
  if (!document.hidden) open();
})();
"#;

/// The dead letters page: a box that selects every box of the page.
pub(super) const SELECT_ALL: &str = r#"
(function () {
  var all = document.getElementById('select-all');
  if (!all) return;
  all.addEventListener('change', function () {
    document.querySelectorAll('input[name=id]').forEach(function (box) { box.checked = all.checked; });
  });
})();
"#;
