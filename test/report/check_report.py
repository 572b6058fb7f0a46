#!/usr/bin/env python3
"""The report page in a real browser (headless Chromium): one check per
behaviour, each its own ctest case.

  check_report.py make --demo BIN --dir DIR [--ranks N]   writes the demo's page and table
  check_report.py CHECK --chromium PATH --dir DIR          runs one check on that page
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import Browser  # noqa: E402


def fail(why):
    print("FAILED: " + why)
    sys.exit(1)


def make(args):
    os.makedirs(args.dir, exist_ok=True)
    cmd = [args.demo, "demo", "--steps", "3", "--report", os.path.join(args.dir, "report.html"),
           "--trace", os.path.join(args.dir, "trace.json")]
    if args.ranks:
        cmd += ["--ranks", str(args.ranks)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    with open(os.path.join(args.dir, "demo.txt"), "w") as f:
        f.write(out.stdout)
    if out.returncode != 0:
        fail(f"{' '.join(cmd)} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}")
    print(out.stdout)


def demo_modules(d):
    """The module names of the demo's text table (tree order, two blanks of indent per level)."""
    lines = open(os.path.join(d, "demo.txt")).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("module ") and "fw calls" in l)
    stack, names = [], []
    for line in lines[start + 1:]:
        if line.startswith("---"):
            break
        indent = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack = stack[:indent] + [name]
        names.append(".".join(stack))
    if len(names) < 5:
        fail(f"the demo's table has only {names}")
    return names


def page(args):
    return os.path.join(args.dir, "report.html")


def boxes(b):
    """Each drawn box of the icicle: fqn -> [left, width] in CSS pixels."""
    return b.evaluate("""Object.fromEntries([...document.querySelectorAll('#icicle .box:not(.ancestor)')]
        .map(e => { const r = e.getBoundingClientRect(); return [e.dataset.fqn, [r.left, r.width]]; }))""")


def number(text):
    """'1.97 M' or '8.25 KiB' or '312 us' back to a number, '-' to -1."""
    m = re.fullmatch(r"([0-9.]+)(?: (\w+))?", text.strip())
    if not m:
        return -1
    scale = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3,
             "ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[m.group(2)]
    return float(m.group(1)) * scale


def check_modules(b, args):
    """Every module of the demo's table has a box in the icicle and a row in the table."""
    expected = demo_modules(args.dir)
    drawn = set(boxes(b))
    rows = set(b.evaluate("[...document.querySelectorAll('#table tbody tr[data-fqn]')].map(e => e.dataset.fqn)"))
    missing_boxes = [m for m in expected if m not in drawn]
    missing_rows = [m for m in expected if m not in rows]
    if missing_boxes or missing_rows:
        fail(f"not drawn: {missing_boxes}; not in the table: {missing_rows}")
    print(f"all {len(expected)} modules drawn and listed")


def check_console(b, args):
    """Loading the page and using it (switch every metric, zoom, hover, sort) logs no error or warning."""
    for key in b.evaluate("[...document.querySelectorAll('#metrics button:not(:disabled)')].map(e => e.dataset.metric)"):
        b.click(f'#metrics button[data-metric="{key}"]')
    first = b.evaluate("document.querySelector('#icicle .box:not(.ancestor)').dataset.fqn")
    b.click(f'#icicle .box[data-fqn="{first}"]')
    b.hover("#icicle .box:last-child")
    b.click("#table th:nth-child(3)")
    problems = b.problems()
    if problems:
        fail("the page reported: " + "; ".join(problems))
    print("no console error, warning or exception")


def check_offline(b, args):
    """The page asks for nothing: no request beyond its own file, and no
    reference to another resource in its markup."""
    requests = b.requests()
    if requests:
        fail(f"the page requested {requests}")
    text = open(page(args)).read()
    refs = re.findall(r"""(?:\bsrc\s*=|\bhref\s*=|url\(|@import|\bfetch\(|XMLHttpRequest|https?:)""", text)
    if refs:
        fail(f"the page's markup refers to other resources: {refs}")
    print("no request, no external reference")


def check_metric(b, args):
    """Switching the width from time to forward FLOPs changes the boxes to
    the FLOPs' proportions: a layer without FLOPs (a ReLU) is no longer
    drawn, and two siblings' widths stand as their FLOPs do in the table."""
    before = boxes(b)
    b.click('#metrics button[data-metric="fw_flops"]')
    if b.evaluate("document.querySelector('#metrics button[data-metric=\"fw_flops\"]').getAttribute('aria-pressed')") != "true":
        fail("the FLOPs switch is not shown as pressed")
    after = boxes(b)
    relu = "Classifier.blocks.0.mlp.1"
    if relu not in before or relu in after:
        fail(f"{relu} (no FLOPs) drawn before: {relu in before}, after the switch: {relu in after}")
    a, c = "Classifier.blocks.0.mlp", "Classifier.blocks.0.proj"  # siblings
    flops = {r[0]: r[11] for r in b.evaluate("JSON.parse(document.getElementById('modtracker-data').textContent).views[0].rows")}
    # (a box is drawn a pixel narrower than its share, to leave a gap)
    want, got = flops[a] / flops[c], (after[a][1] + 1) / (after[c][1] + 1)
    if abs(got - want) > 0.05 * want:
        fail(f"width ratio {a} : {c} is {got:.3f}, FLOPs ratio {want:.3f}")
    changed = [k for k in after if k in before and abs(after[k][1] - before[k][1]) > 1]
    if not changed:
        fail("no box changed its width")
    print(f"{len(changed)} boxes changed; {a} : {c} = {got:.3f} (FLOPs {want:.3f})")


def check_zoom(b, args):
    """Clicking a box zooms into it (it spans the width, its siblings are
    gone); clicking it again zooms back out to its parent."""
    width = b.evaluate("document.getElementById('icicle').getBoundingClientRect().width")
    target, sibling = "Classifier.blocks.0", "Classifier.blocks.1"
    before = boxes(b)
    if before[target][1] > 0.8 * width:
        fail(f"{target} spans {before[target][1]:.0f} of {width:.0f} px before the zoom")
    b.click(f'#icicle .box[data-fqn="{target}"]')
    after = boxes(b)
    if after.get(target, [0, 0])[1] < width - 4 or sibling in after:
        fail(f"after the click {target} spans {after.get(target)} of {width:.0f} px; {sibling} drawn: {sibling in after}")
    if "Classifier.blocks.0.mlp.0" not in after:
        fail("the zoomed box's children are not drawn")
    b.click(f'#icicle .box[data-fqn="{target}"]')
    out = boxes(b)
    if sibling not in out:
        fail("a second click did not zoom out")
    print(f"zoomed into {target} and out again")


def check_hover(b, args):
    """Hovering a box shows its module's row."""
    target = "Classifier.blocks.0.mlp.0"
    b.hover(f'#icicle .box[data-fqn="{target}"]')
    shown = b.evaluate("getComputedStyle(document.getElementById('tooltip')).display")
    text = b.evaluate("document.getElementById('tooltip').innerText")
    if shown == "none" or target not in text or "fw calls" not in text or "fw FLOPs" not in text:
        fail(f"tooltip display {shown}, text {text!r}")
    print("tooltip: " + text.replace("\n", " | "))


def check_sort(b, args):
    """Clicking a column's header sorts the table by it, largest first;
    clicking again, smallest first."""
    col = b.evaluate("[...document.querySelectorAll('#table th')].findIndex(e => e.textContent.startsWith('fw FLOPs')) + 1")
    if col <= 0:
        fail("no 'fw FLOPs' column")

    def column():
        return [number(t) for t in b.evaluate(
            f"[...document.querySelectorAll('#table tbody tr[data-fqn] td:nth-child({col})')].map(e => e.textContent)")]

    b.click(f"#table th:nth-child({col})")
    down = column()
    if down != sorted(down, reverse=True) or down[0] <= 0:
        fail(f"not sorted largest first: {down}")
    b.click(f"#table th:nth-child({col})")
    up = column()
    if up != sorted(up):
        fail(f"not sorted smallest first: {up}")
    print(f"sorted by fw FLOPs: {down[:4]} ...")


def check_screenshot(b, args):
    """A screenshot of the page is not blank: many colours, much of it drawn."""
    from PIL import Image
    out = os.path.join(args.dir, "report-screenshot.png")
    b.screenshot(out)
    img = Image.open(out).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20) or []
    background = max(colours)[1] if colours else None
    pixels = img.width * img.height
    drawn = sum(n for n, c in colours if c != background)
    if len(colours) < 30 or drawn < 0.15 * pixels:
        fail(f"{out}: {len(colours)} colours, {100 * drawn / pixels:.1f}% off the background")
    print(f"screenshot {out}: {img.width}x{img.height}, {len(colours)} colours, {100 * drawn / pixels:.0f}% drawn")


def check_ranks(b, args):
    """A page of ranks: a view per rank (the view switches the table), the
    spread across ranks, and the straggler marked in both."""
    data = b.evaluate("JSON.parse(document.getElementById('modtracker-data').textContent)")
    views = b.evaluate("[...document.querySelectorAll('#views button')].map(e => e.textContent)")
    if len(views) != len(data["views"]) or len(views) < 2:
        fail(f"view buttons {views} for {len(data['views'])} ranks")
    spread_rows = b.evaluate("document.querySelectorAll('#spread tbody tr').length")
    if spread_rows != len(data["spread"]) or spread_rows < 5:
        fail(f"{spread_rows} rows in the spread table, {len(data['spread'])} in the data")

    def calls_cell():
        return b.evaluate("document.querySelector('#table tbody tr[data-fqn] td:nth-child(3)').textContent")

    first = calls_cell()
    b.click('#views button[data-view="1"]')
    if b.evaluate("document.querySelector('#views button[data-view=\"1\"]').getAttribute('aria-pressed')") != "true":
        fail("rank 1's view is not shown as chosen")
    second = calls_cell()
    root = data["views"][1]["rows"][0]
    if first == second and data["views"][0]["rows"][0][2] != root[2]:
        fail(f"the table did not change with the view: {first} and {second}")
    s = data["straggler"]
    if not s:
        fail("no straggler in a run of ranks")
    marked = b.evaluate("[...document.querySelectorAll('#spread tr.straggler')].map(e => e.dataset.fqn)")
    boxed = b.evaluate("[...document.querySelectorAll('#icicle .box.straggler')].map(e => e.dataset.fqn)")
    banner = b.evaluate("document.getElementById('banner').innerText")
    if marked != [s["fqn"]] or "Straggler" not in banner or s["fqn"] not in banner:
        fail(f"straggler {s['fqn']}: marked rows {marked}, banner {banner!r}")
    print(f"{len(views)} views; straggler {s['fqn']} on rank {s['rank']} marked (boxes {boxed})")


def check_large(b, args):
    """A page of many modules loads and stays usable; prints how long it took."""
    t = b.evaluate("""(() => { const n = performance.getEntriesByType('navigation')[0];
        const m = performance.getEntriesByName('modtracker-rendered')[0];
        return [n ? n.loadEventEnd : 0, m ? m.startTime : 0]; })()""")
    rows = b.evaluate("JSON.parse(document.getElementById('modtracker-data').textContent).views[0].rows.length")
    table = b.evaluate("document.querySelectorAll('#table tbody tr[data-fqn]').length")
    drawn = len(boxes(b))
    start = time.monotonic()
    b.click('#metrics button[data-metric="params"]')
    switch_ms = 1000 * (time.monotonic() - start)
    if rows < args.modules or table == 0 or drawn == 0:
        fail(f"{rows} modules in the data, {table} table rows, {drawn} boxes")
    print(f"{rows} modules: rendered at {t[1]:.0f} ms, load event at {t[0]:.0f} ms; {drawn} boxes drawn, "
          f"{table} table rows shown; a metric switch took {switch_ms:.0f} ms (with the protocol's round trips)")


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=["make", *CHECKS])
    p.add_argument("--dir", required=True)
    p.add_argument("--demo")
    p.add_argument("--ranks", type=int, default=0)
    p.add_argument("--chromium")
    p.add_argument("--page", help="the page (default DIR/report.html)")
    p.add_argument("--modules", type=int, default=0, help="(large) modules the page must hold")
    args = p.parse_args()
    if args.check == "make":
        return make(args)
    path = args.page or page(args)
    if not os.path.exists(path):
        fail(f"{path} is missing (its fixture did not run)")
    with Browser(args.chromium) as b:
        started = time.monotonic()
        b.open(path)
        print(f"opened {path} in {1000 * (time.monotonic() - started):.0f} ms")
        CHECKS[args.check](b, args)


if __name__ == "__main__":
    main()
