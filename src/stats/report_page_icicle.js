// The report page's script, part 2 of 3: the icicle (colours, layout,
// zoom), the tooltip and the clicked module's row.
// Pleasant hues by a module's name without its digits (all Linear layers
// alike), lighter with depth.
const hues = [211, 28, 145, 265, 350, 190, 45, 95, 320, 10];
function colour(n) {
  const key = n.name.replace(/[0-9]+/g, "#");
  let h = 0;
  for (let i = 0; i < key.length; ++i) h = (h * 31 + key.charCodeAt(i)) >>> 0;
  // An entry of a list ("0", "1") takes its list's hue, turned by its index.
  const hue = /^#$/.test(key) && n.parent ? null : hues[h % hues.length];
  const base = hue === null ? (colourHue(n.parent) + 28 * Number(n.name)) % 360 : hue;
  const light = Math.min(84, 62 + 3 * n.depth);
  return "hsl(" + base + " 62% " + light + "%)";
}
function colourHue(n) {
  while (n && /^[0-9]+$/.test(n.name)) n = n.parent;
  if (!n) return hues[0];
  const key = n.name.replace(/[0-9]+/g, "#");
  let h = 0;
  for (let i = 0; i < key.length; ++i) h = (h * 31 + key.charCodeAt(i)) >>> 0;
  return hues[h % hues.length];
}

const ROW = 24, MIN_WIDTH = 0.5;
const icicle = $("icicle");
function renderIcicle() {
  const t = tree(), m = metricOf();
  measure(t, m);
  const focus = state.focus && t.byFqn.get(state.focus.fqn) || t.root;
  state.focus = focus;
  const W = icicle.clientWidth;
  const html = [];
  let hidden = 0, maxRow = 0;
  const chain = [];
  for (let n = focus.parent; n; n = n.parent) chain.unshift(n);
  const strag = straggler && straggler.fqn;
  function box(n, x, w, row, cls) {
    maxRow = Math.max(maxRow, row);
    let c = "box" + cls;
    if (state.selected === n.fqn) c += " selected";
    if (n.fqn === strag) c += " straggler";
    const label = w > 34 ? esc(n.fqn === strag ? "\u26a0 " + n.name : n.name) +
      (w > 110 ? '<span class="val">' + esc(m.fmt(n.v)) + "</span>" : "") : "";
    html.push('<div class="' + c + '" data-fqn="' + esc(n.fqn) + '" style="left:' + x.toFixed(2) + "px;top:" +
      row * ROW + "px;width:" + Math.max(w - 1, 0.5).toFixed(2) + "px" +
      (cls ? "" : ";background:" + colour(n)) + '">' + label + "</div>");
  }
  chain.forEach((n, i) => box(n, 0, W, i, " ancestor"));
  // The focus spans the width; each child gets its share of its parent's value.
  const stack = [[focus, 0, W, chain.length]];
  while (stack.length) {
    const [n, x, w, row] = stack.pop();
    box(n, x, w, row, "");
    const total = n.v;
    if (total <= 0) { hidden += countBelow(n); continue; }
    let cx = x;
    for (const c of n.children) {
      const cw = w * c.v / total;
      if (cw < MIN_WIDTH) hidden += 1 + countBelow(c);
      else stack.push([c, cx, cw, row + 1]);
      cx += cw;
    }
  }
  icicle.style.height = (maxRow + 1) * ROW + "px";
  icicle.innerHTML = html.join("");
  $("hidden-note").textContent = hidden ? hidden + " module" + (hidden === 1 ? "" : "s") +
    " too narrow to draw at this zoom (zero " + m.what + ", or under half a pixel): click a box to zoom in, or see the table." : "";
  const crumbs = chain.concat([focus]);
  $("crumbs").innerHTML = '<span class="label">Zoom</span> ' + crumbs.map((n, i) => i + 1 < crumbs.length
    ? '<a data-fqn="' + esc(n.fqn) + '">' + esc(n.name) + "</a>" : "<b>" + esc(n.name) + "</b>").join(" \u203a ") +
    (focus === t.root ? "" : ' &nbsp; <a data-fqn="' + esc(t.root.fqn) + '">reset</a>');
}
function countBelow(n) {
  let k = 0;
  const stack = n.children.slice();
  while (stack.length) { const c = stack.pop(); ++k; for (const g of c.children) stack.push(g); }
  return k;
}

function rowLines(r) {
  return columns.filter(visibleColumn).slice(1).map((c) => [c.h, cell(c, r)]);
}
const tooltip = $("tooltip");
function showTooltip(n, ev) {
  const m = metricOf();
  const t = tree();
  const share = t.root.v > 0 ? " (" + (100 * n.v / t.root.v).toFixed(1) + "% of " + esc(t.root.name) + ")" : "";
  let body = "<b>" + esc(n.fqn || n.name) + "</b><div>" + esc(m.what) + ": " + esc(m.fmt(n.v)) + share + "</div>";
  if (n.row) body += "<table>" + rowLines(n.row).map(([k, v]) => "<tr><td>" + esc(k) + "</td><td>" + esc(v) +
    "</td></tr>").join("") + "</table>";
  else body += "<div>(no row of its own: it holds the roots)</div>";
  tooltip.innerHTML = body;
  tooltip.style.display = "block";
  moveTooltip(ev);
}
function moveTooltip(ev) {
  const pad = 14, w = tooltip.offsetWidth, h = tooltip.offsetHeight;
  let x = ev.clientX + pad, y = ev.clientY + pad;
  if (x + w > window.innerWidth) x = ev.clientX - w - pad;
  if (y + h > window.innerHeight) y = ev.clientY - h - pad;
  tooltip.style.left = Math.max(0, x) + "px";
  tooltip.style.top = Math.max(0, y) + "px";
}
icicle.addEventListener("mousemove", (ev) => {
  const el = ev.target.closest(".box");
  if (!el) { tooltip.style.display = "none"; return; }
  const n = nodeOf(el.dataset.fqn);
  if (n) showTooltip(n, ev);
});
icicle.addEventListener("mouseleave", () => { tooltip.style.display = "none"; });
icicle.addEventListener("click", (ev) => {
  const el = ev.target.closest(".box");
  if (!el) return;
  const n = nodeOf(el.dataset.fqn);
  if (!n) return;
  // The focus again zooms out one level; any other box zooms into it.
  state.focus = n === state.focus && n.parent ? n.parent : n;
  select(n);
});
$("crumbs").addEventListener("click", (ev) => {
  const a = ev.target.closest("a");
  if (!a) return;
  state.focus = nodeOf(a.dataset.fqn) || tree().root;
  renderIcicle();
});
function nodeOf(fqn) {
  const t = tree();
  return fqn === "" ? t.root : t.byFqn.get(fqn);
}
function select(n) {
  state.selected = n.fqn;
  renderIcicle();
  const d = $("details");
  if (n.row) {
    d.style.display = "block";
    d.innerHTML = "<b>" + esc(n.fqn) + '</b><div class="pairs">' + rowLines(n.row).map(([k, v]) =>
      '<span class="k">' + esc(k) + '</span><span class="v">' + esc(v) + "</span>").join("") + "</div>";
  } else {
    d.style.display = "none";
  }
  for (const tr of document.querySelectorAll("#table tr.selected")) tr.classList.remove("selected");
  const tr = document.querySelector('#table tr[data-fqn="' + CSS.escape(n.fqn) + '"]');
  if (tr) tr.classList.add("selected");
}

