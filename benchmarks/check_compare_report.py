"""Open an `efyolo compare` report.html in a real headless browser and check what a reader sees.

    python benchmarks/check_compare_report.py runs/compare/exp/report.html --screenshot docs/compare-report.png

Checks: the page renders with no network; the table has one row per model and format of the
study's compare.json; clicking a column heading sorts the rows; the Pareto plot is loaded and
visible (natural size > 0, on screen). Needs Debian's Chromium (`apt-get install chromium`) and
the `playwright` Python package (which drives it; no browser download: it uses /usr/bin/chromium).
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="report.html of a compare study")
    parser.add_argument("--screenshot", default=None, help="write a full-page PNG here")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"browser executable (default {CHROMIUM})")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    report = Path(args.report).resolve()
    expected = json.loads((report.parent / "compare.json").read_text())["rows"]
    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#results tbody tr")
        n_rows = rows.count()
        if n_rows != len(expected):
            failures.append(f"table has {n_rows} rows, compare.json {len(expected)}")
        pairs = [(rows.nth(i).locator("td").nth(0).inner_text(), rows.nth(i).locator("td").nth(1).inner_text())
                 for i in range(n_rows)]
        if sorted(pairs) != sorted((r["model"], r["format"]) for r in expected):
            failures.append(f"table rows {pairs} differ from compare.json")
        img = page.locator("#pareto")
        natural = page.evaluate("() => { const i = document.getElementById('pareto'); "
                                "return [i.complete, i.naturalWidth, i.naturalHeight]; }")
        box = img.bounding_box()
        if not natural[0] or natural[1] == 0 or not img.is_visible() or not box or box["width"] < 100:
            failures.append(f"the plot is not visible (complete, w, h = {natural}, box {box})")
        # sort by latency (column 8): the first row becomes the fastest
        page.locator("#results th").nth(7).click()
        first = float(rows.nth(0).locator("td").nth(7).get_attribute("data-sort") or "inf")
        fastest = min(r["latency_ms"] for r in expected if r["latency_ms"] is not None)
        if abs(first - fastest) > 1e-6:
            failures.append(f"sorting by latency put {first} first, not {fastest}")
        external = [u for u in requests if not u.startswith(("file:", "data:"))]
        if external:
            failures.append(f"the page fetched {external}")
        if args.screenshot:
            page.locator("#results th").nth(6).click()  # by mAP50-95, ascending
            page.locator("#results th").nth(6).click()  # descending: best first
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    print(f"{report}: {n_rows} rows, plot {natural[1]}x{natural[2]} px, {len(requests)} requests")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
