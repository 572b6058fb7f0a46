// The report page's script, part 1 of 3 (report_page_model.js, _icicle.js,
// _tables.js: one script in that order, inside one function, as
// src/stats/report_page.html puts them): the data, numbers as the text
// table writes them, the measures and columns, the module tree.
const data = JSON.parse(document.getElementById("modtracker-data").textContent);
// A row: [fqn, fw calls, fw incl, fw excl, bw calls, bw incl, bw excl, params, frozen, param bytes, output,
//         fw FLOPs, bw FLOPs, fw peak, kept, bw peak] (times in ns; a tool's value null without the tool).
const F = { fqn: 0, fwCalls: 1, fwIncl: 2, fwExcl: 3, bwCalls: 4, bwIncl: 5, bwExcl: 6, params: 7, frozen: 8,
            bytes: 9, output: 10, fwFlops: 11, bwFlops: 12, fwPeak: 13, kept: 14, bwPeak: 15 };
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// Numbers as the text table writes them.
function fixed(v, unit) { return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) + " " + unit; }
function duration(ns) {
  if (ns < 1e3) return fixed(ns, "ns");
  if (ns < 1e6) return fixed(ns / 1e3, "us");
  if (ns < 1e9) return fixed(ns / 1e6, "ms");
  return fixed(ns / 1e9, "s");
}
function count(n) {
  if (n < 1000) return String(n);
  if (n < 1e6) return fixed(n / 1e3, "K");
  if (n < 1e9) return fixed(n / 1e6, "M");
  return fixed(n / 1e9, "G");
}
function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return fixed(n / 1024, "KiB");
  if (n < 1073741824) return fixed(n / 1048576, "MiB");
  return fixed(n / 1073741824, "GiB");
}

// The widths the icicle can show. `value`: a module's, submodules included; `self`: its own part.
const metrics = [
  { key: "time", label: "Time", what: "time (fw + bw)", fmt: duration, field: null, additive: true,
    value: (r) => r[F.fwIncl] + r[F.bwIncl], self: (r) => r[F.fwExcl] + r[F.bwExcl] },
  { key: "fw_flops", label: "FLOPs", what: "forward FLOPs", fmt: count, field: F.fwFlops, additive: true,
    value: (r) => r[F.fwFlops] },
  { key: "bw_flops", label: "Backward FLOPs", what: "backward FLOPs", fmt: count, field: F.bwFlops, additive: true,
    value: (r) => r[F.bwFlops] },
  { key: "kept", label: "Kept memory", what: "bytes kept for backward", fmt: bytes, field: F.kept, additive: true,
    value: (r) => r[F.kept] },
  { key: "peak", label: "Peak memory", what: "peak bytes (fw or bw)", fmt: bytes, field: F.fwPeak, additive: false,
    value: (r) => Math.max(r[F.fwPeak] || 0, r[F.bwPeak] || 0) },
  { key: "params", label: "Parameters", what: "parameters", fmt: count, field: null, additive: true,
    value: (r) => r[F.params] },
];
// The table's columns, as the text table has them; a tool's only where some row has its value.
const columns = [
  { h: "module", text: true },
  { h: "fw calls", i: F.fwCalls, fmt: String },
  { h: "fw incl", i: F.fwIncl, fmt: duration, calls: F.fwCalls },
  { h: "fw excl", i: F.fwExcl, fmt: duration, calls: F.fwCalls },
  { h: "bw calls", i: F.bwCalls, fmt: String },
  { h: "bw incl", i: F.bwIncl, fmt: duration, calls: F.bwCalls },
  { h: "bw excl", i: F.bwExcl, fmt: duration, calls: F.bwCalls },
  { h: "params", i: F.params, fmt: count },
  { h: "frozen", i: F.frozen, fmt: count },
  { h: "param bytes", i: F.bytes, fmt: bytes },
  { h: "output", i: F.output, text: true },
  { h: "fw FLOPs", i: F.fwFlops, fmt: count, calls: F.fwCalls, tool: true },
  { h: "bw FLOPs", i: F.bwFlops, fmt: count, calls: F.bwCalls, tool: true },
  { h: "fw peak", i: F.fwPeak, fmt: bytes, calls: F.fwCalls, tool: true },
  { h: "kept", i: F.kept, fmt: bytes, calls: F.fwCalls, tool: true },
  { h: "bw peak", i: F.bwPeak, fmt: bytes, calls: F.bwCalls, tool: true },
];
function cell(c, r) {
  if (c.text) return c.i === undefined ? r[F.fqn] : r[c.i];
  const v = r[c.i];
  if (v === null || (c.calls !== undefined && !r[c.calls])) return "-";
  return c.fmt(v);
}

// The module tree of one view: parents by the fqn before its last dot;
// one top node (the root, or a node above several roots).
function buildTree(rows) {
  const byFqn = new Map();
  const top = { fqn: "", name: "all roots", row: null, children: [], parent: null, depth: 0 };
  const nodes = [];
  function node(fqn) {
    let n = byFqn.get(fqn);
    if (n) return n;
    const dot = fqn.lastIndexOf(".");
    const parent = dot < 0 ? top : node(fqn.slice(0, dot));
    n = { fqn, name: dot < 0 ? fqn : fqn.slice(dot + 1), row: null, children: [], parent, depth: parent.depth + 1,
          v: 0, x: 0, w: 0, index: nodes.length };
    parent.children.push(n);
    byFqn.set(fqn, n);
    nodes.push(n);
    return n;
  }
  for (const r of rows) node(r[F.fqn]).row = r;
  let root = top;
  if (top.children.length === 1) { root = top.children[0]; root.parent = null; }
  return { root, byFqn, nodes, rows };
}

const views = data.views.map((v) => buildTree(v.rows));
const state = { view: 0, metric: "time", focus: null, selected: null, sort: null, desc: true, showAll: false };
const metricOf = () => metrics.find((m) => m.key === state.metric);
const tree = () => views[state.view];
const straggler = data.straggler;

// Each node's width value: its own, or its children's sum where that is
// larger (a container that never ran itself, a non-additive peak).
function measure(t, m) {
  if (t.measured === m.key) return;  // the icicle and the consumers ask for the same measure
  t.measured = m.key;
  const order = [];
  const stack = [t.root];
  while (stack.length) { const n = stack.pop(); order.push(n); for (const c of n.children) stack.push(c); }
  for (let i = order.length - 1; i >= 0; --i) {
    const n = order[i];
    let own = n.row ? m.value(n.row) : 0;
    if (own === null || own === undefined || !isFinite(own)) own = 0;
    let sum = 0;
    for (const c of n.children) sum += c.v;
    n.own = own;
    n.v = Math.max(own, sum);
    n.childSum = sum;
  }
}
function selfValue(n, m) {
  if (!n.row) return 0;
  if (m.self) return m.self(n.row);
  if (!m.additive) return n.own;
  return Math.max(0, n.own - n.childSum);
}

