// The report page's script, part 3 of 3: the switches, the biggest
// consumers, the table, the summary, the spread across ranks, and the start.
// Which tool columns the table shows: those some row of some view has.
const present = new Set();
for (const v of data.views) for (const r of v.rows) for (const c of columns) if (c.tool && r[c.i] !== null) present.add(c.i);
const visibleColumn = (c) => !c.tool || present.has(c.i);

function renderMetrics() {
  const group = $("metrics");
  group.innerHTML = metrics.map((m) => {
    const off = m.field !== null && !present.has(m.field);
    return '<button type="button" data-metric="' + m.key + '" aria-pressed="' + (m.key === state.metric) + '"' +
      (off ? ' disabled title="no tool gave this value"' : ' title="box width: ' + esc(m.what) + '"') + ">" +
      esc(m.label) + "</button>";
  }).join("");
}
$("metrics").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (!b || b.disabled) return;
  state.metric = b.dataset.metric;
  renderMetrics();
  renderIcicle();
  renderConsumers();
});

function renderViews() {
  if (data.views.length < 2) return;
  $("views-wrap").hidden = false;
  $("views").innerHTML = data.views.map((v, i) => {
    const mark = straggler && data.ranks && data.ranks[i] === straggler.rank ? " \u26a0" : "";
    return '<button type="button" data-view="' + i + '" aria-pressed="' + (i === state.view) + '" title="' +
      esc(v.name) + '">rank ' + esc(data.ranks ? data.ranks[i] : i) + mark + "</button>";
  }).join("");
}
$("views").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  state.view = Number(b.dataset.view);
  renderAll();
});

function renderConsumers() {
  const t = tree(), m = metricOf();
  measure(t, m);
  const items = t.nodes.filter((n) => n.row).map((n) => [n, selfValue(n, m)]).filter(([, v]) => v > 0);
  items.sort((a, b) => b[1] - a[1]);
  const top = items.slice(0, 10);
  const total = m.additive ? items.reduce((s, [, v]) => s + v, 0) : (top.length ? top[0][1] : 0);
  $("consumers-title").textContent = "Biggest consumers: " + m.what + (m.additive ? ", own (submodules left out)" :
    " (of the module, submodules included)");
  $("consumers").innerHTML = top.length ? top.map(([n, v]) =>
    '<span class="name" data-fqn="' + esc(n.fqn) + '" title="' + esc(n.fqn) + '">' + esc(n.fqn) + "</span>" +
    '<span class="track"><span class="fill" style="display:block;width:' + (100 * v / (top[0][1] || 1)).toFixed(1) +
    '%"></span></span><span class="num">' + esc(m.fmt(v)) + '</span><span class="num">' +
    (m.additive && total ? (100 * v / total).toFixed(0) + "%" : "") + "</span>").join("")
    : '<span style="color:var(--muted)">no module has a value</span>';
}
$("consumers").addEventListener("click", (ev) => {
  const el = ev.target.closest(".name");
  if (!el) return;
  const n = nodeOf(el.dataset.fqn);
  if (n) { state.focus = n; select(n); }
});

// The table: tree order (indented) until a header is clicked.
const LIMIT = 500;
// As the cell shows it: "-" (no value, or the phase never ran) below every number.
function sortKey(c, r) {
  const v = r[c.i];
  return v === null || (c.calls !== undefined && !r[c.calls]) ? -1 : v;
}
function renderTable() {
  const t = tree();
  const cols = columns.filter(visibleColumn);
  let rows = t.rows.slice();
  const sortCol = state.sort === null ? null : cols[state.sort];
  if (sortCol && sortCol.i !== undefined) {
    const dir = state.desc ? -1 : 1;
    if (sortCol.text) rows.sort((a, b) => dir * String(a[sortCol.i]).localeCompare(String(b[sortCol.i])));
    else rows.sort((a, b) => dir * (sortKey(sortCol, a) - sortKey(sortCol, b)));
  }
  const tree_order = !sortCol || sortCol.i === undefined;
  const shown = state.showAll ? rows : rows.slice(0, LIMIT);
  const head = "<thead><tr>" + cols.map((c, k) => '<th class="' + (c.text ? "text" : "") + '" data-col="' + k +
    '" title="sort by ' + esc(c.h) + '">' + esc(c.h) + (state.sort === k ? (state.desc ? " \u25bc" : " \u25b2") : "") +
    "</th>").join("") + "</tr></thead>";
  const body = shown.map((r) => {
    const depth = r[F.fqn].split(".").length - 1;
    const cls = (r[F.fqn] === state.selected ? "selected" : "") + (straggler && r[F.fqn] === straggler.fqn ? " straggler" : "");
    return '<tr data-fqn="' + esc(r[F.fqn]) + '" class="' + cls + '">' + cols.map((c) => {
      if (c.i === undefined) {
        const name = tree_order ? r[F.fqn].slice(r[F.fqn].lastIndexOf(".") + 1) : r[F.fqn];
        return '<td class="text" style="padding-left:' + (8 + (tree_order ? 14 * depth : 0)) + 'px" title="' +
          esc(r[F.fqn]) + '">' + esc(name) + "</td>";
      }
      return "<td" + (c.text ? ' class="text"' : "") + ">" + esc(cell(c, r)) + "</td>";
    }).join("") + "</tr>";
  });
  $("table").innerHTML = head + "<tbody>" + body.join("") + totalsRow(cols, t.rows) + "</tbody>";
  $("more").innerHTML = rows.length > shown.length ? "Showing " + shown.length + " of " + rows.length +
    ' rows. <button type="button" id="show-all">Show all</button>' : "";
}
// As the text table: calls and exclusive time over all modules; parameters, FLOPs and kept of the roots; peaks the largest root's.
function totalsRow(cols, rows) {
  const t = { [F.fwCalls]: 0, [F.bwCalls]: 0, [F.fwIncl]: 0, [F.bwIncl]: 0, [F.params]: 0, [F.frozen]: 0, [F.bytes]: 0,
              [F.fwFlops]: 0, [F.bwFlops]: 0, [F.kept]: 0, [F.fwPeak]: 0, [F.bwPeak]: 0 };
  for (const r of rows) {
    t[F.fwCalls] += r[F.fwCalls]; t[F.bwCalls] += r[F.bwCalls];
    t[F.fwIncl] += r[F.fwExcl]; t[F.bwIncl] += r[F.bwExcl];
    if (r[F.fqn].indexOf(".") >= 0) continue;
    for (const i of [F.params, F.frozen, F.bytes, F.fwFlops, F.bwFlops, F.kept]) t[i] += r[i] || 0;
    for (const i of [F.fwPeak, F.bwPeak]) t[i] = Math.max(t[i], r[i] || 0);
  }
  return '<tr class="total">' + cols.map((c) => {
    if (c.i === undefined) return '<td class="text">total</td>';
    if (!(c.i in t)) return "<td></td>";
    return "<td>" + esc(c.fmt(t[c.i])) + "</td>";
  }).join("") + "</tr>";
}
$("table").addEventListener("click", (ev) => {
  const th = ev.target.closest("th");
  if (th) {
    const k = Number(th.dataset.col);
    const c = columns.filter(visibleColumn)[k];
    if (c.i === undefined) { state.sort = null; }
    else if (state.sort === k) { state.desc = !state.desc; }
    else { state.sort = k; state.desc = !c.text; }
    renderTable();
    return;
  }
  const tr = ev.target.closest("tr[data-fqn]");
  if (tr) { const n = nodeOf(tr.dataset.fqn); if (n) { state.focus = n; select(n); } }
});
$("more").addEventListener("click", (ev) => {
  if (ev.target.id !== "show-all") return;
  state.showAll = true;
  renderTable();
});

function renderSummary() {
  const rows = tree().rows;
  let fw = 0, bw = 0, fwF = null, bwF = null, params = 0, peak = null;
  for (const r of rows) {
    fw += r[F.fwExcl]; bw += r[F.bwExcl];
    if (r[F.fqn].indexOf(".") >= 0) continue;
    params += r[F.params];
    if (r[F.fwFlops] !== null) fwF = (fwF || 0) + r[F.fwFlops];
    if (r[F.bwFlops] !== null) bwF = (bwF || 0) + r[F.bwFlops];
    if (r[F.fwPeak] !== null || r[F.bwPeak] !== null) peak = Math.max(peak || 0, r[F.fwPeak] || 0, r[F.bwPeak] || 0);
  }
  const cards = [["modules", String(rows.length)], ["forward", duration(fw)], ["backward", duration(bw)],
                 ["parameters", count(params)]];
  if (fwF !== null) cards.push(["forward FLOPs", count(fwF)]);
  if (bwF !== null) cards.push(["backward FLOPs", count(bwF)]);
  if (peak !== null) cards.push(["peak above entry", bytes(peak)]);
  $("summary").innerHTML = cards.map(([k, v]) => '<div class="card"><div class="k">' + esc(k) + '</div><div class="v">' +
    esc(v) + "</div></div>").join("");
}

function renderSpread() {
  if (!data.spread) return;
  $("spread-section").hidden = false;
  const times = (s) => s ? duration(s[0]) + " / " + duration(s[1]) + " / " + duration(s[2]) : "-";
  const values = (s, fmt) => s ? fmt(s[0]) + " / " + fmt(s[1]) + " / " + fmt(s[2]) : "-";
  const hasF = data.spread.some((r) => r[4] || r[5]), hasM = data.spread.some((r) => r[6] || r[7]);
  const head = ["module", "ranks", "fw min / median / max", "slowest", "bw min / median / max", "slowest"]
    .concat(hasF ? ["fw FLOPs min / median / max", "bw FLOPs min / median / max"] : [])
    .concat(hasM ? ["kept min / median / max", "peak min / median / max", "most"] : []);
  const body = data.spread.map((r) => {
    const s = straggler && r[0] === straggler.fqn;
    const cells = [r[1], times(r[2]), r[2] ? "rank " + r[2][3] : "-", times(r[3]), r[3] ? "rank " + r[3][3] : "-"]
      .concat(hasF ? [values(r[4], count), values(r[5], count)] : [])
      .concat(hasM ? [values(r[6], bytes), values(r[7], bytes), r[7] ? "rank " + r[7][3] : "-"] : []);
    return '<tr data-fqn="' + esc(r[0]) + '"' + (s ? ' class="straggler"' : "") + '><td class="text">' +
      (s ? "\u26a0 " : "") + esc(r[0]) + "</td>" + cells.map((c) => "<td>" + esc(c) + "</td>").join("") + "</tr>";
  });
  $("spread").innerHTML = "<thead><tr>" + head.map((h, i) => '<th class="' + (i ? "" : "text") + '">' + esc(h) +
    "</th>").join("") + "</tr></thead><tbody>" + body.join("") + "</tbody>";
  const lines = [];
  if (straggler)
    lines.push("<b>Straggler:</b> " + esc(straggler.fqn) + " on rank " + straggler.rank + ", " + straggler.phase +
      " " + esc(duration(straggler.time)) + " against a median of " + esc(duration(straggler.median)) + " (own time)");
  if (data.peak)
    lines.push("<b>Highest peak:</b> rank " + data.peak.rank + ", " + esc(bytes(data.peak.bytes)) + " in " +
      esc(data.peak.fqn) + " (" + data.peak.phase + "); median of the ranks' highest peaks " + esc(bytes(data.peak.median)));
  if (lines.length) { $("banner").style.display = "block"; $("banner").innerHTML = lines.join("<br>"); }
}

function renderAll() {
  const keep = state.focus && state.focus.fqn;
  state.focus = keep !== null && keep !== undefined ? nodeOf(keep) || null : null;
  renderViews();
  renderMetrics();
  renderSummary();
  renderIcicle();
  renderConsumers();
  renderTable();
}

document.title = data.title + (data.subtitle ? " \u2014 " + data.subtitle : "");
$("title").textContent = data.title;
$("subtitle").textContent = data.subtitle;
$("notes").innerHTML = data.notes.map((n) => "<li>" + esc(n) + "</li>").join("");
if (!data.notes.length) $("notes").style.display = "none";
renderSpread();
renderAll();
let resizing = 0;
window.addEventListener("resize", () => { cancelAnimationFrame(resizing); resizing = requestAnimationFrame(renderIcicle); });
performance.mark("modtracker-rendered");
document.body.dataset.rendered = "1";
