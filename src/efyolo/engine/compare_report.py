"""The files of an ``efyolo compare`` study: ``compare.csv``, ``compare.json``, ``pareto.png`` and
``report.html``.

Rows are :class:`efyolo.engine.compare.CompareRow` dataclasses (read by field name; this module
does not import the workflow that makes them). The HTML page is self-contained: the plot is embedded as a base64 PNG, the style and the few lines
of script that sort the table by a clicked column are inline, and nothing is fetched, so it opens
from disk in a browser with no network.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from efyolo.utils.files import write_bytes_atomic, write_json_atomic, write_text_atomic

# Columns of the HTML table: (field, heading, number format or None for text)
TABLE_COLUMNS = (
    ("model", "model", None),
    ("format", "format", None),
    ("params", "params (M)", "params"),
    ("gflops", "GFLOPs", ".2f"),
    ("size_mb", "size (MB)", ".1f"),
    ("map50", "mAP50", ".4f"),
    ("map", "mAP50-95", ".4f"),
    ("latency_ms", "latency (ms)", ".1f"),
    ("latency_p10_ms", "p10 (ms)", ".1f"),
    ("latency_p90_ms", "p90 (ms)", ".1f"),
    ("train_images_per_s", "train img/s", ".1f"),
    ("train_minutes", "train (min)", ".1f"),
    ("epochs", "epochs", "d"),
    ("pareto", "Pareto", None),
    ("status", "status", None),
)


def write_csv(path: Path, rows: Sequence[Any]) -> Path:
    """One line per row (dataclass instances: :class:`efyolo.engine.compare.CompareRow`)."""
    columns = [f.name for f in fields(rows[0])] if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return write_text_atomic(path, buf.getvalue())


def machine_summary(threads: int | None) -> dict[str, Any]:
    from efyolo import __version__
    from efyolo.engine.benchmark import machine_info

    info = machine_info()
    info.update(efyolo=__version__, python=platform.python_version(), threads=threads,
                date=time.strftime("%Y-%m-%d %H:%M %Z"))
    return info


def _cell(value: Any, fmt: str | None) -> tuple[str, str]:
    """(sort key, text) of a table cell; empty cells sort last."""
    if value is None or value == "":
        return "", "-"
    if fmt == "params":
        return str(value), f"{value / 1e6:.3f}"
    if fmt is not None:
        return str(value), format(value, fmt)
    if isinstance(value, bool):
        return ("1" if value else "0"), ("yes" if value else "")
    return str(value), str(value)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
td.text, th.text { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
tr.pareto td { background: #fff4e0; font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; }
code, pre { background: #f6f6f6; padding: 2px 4px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 0.9em; }
dt { font-weight: 600; }
"""

# Sort the table by a clicked heading: numbers numerically, text alphabetically, empty cells last.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = !th.classList.contains("sorted-asc");
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = parseFloat(x), ny = parseFloat(y), cmp;
      cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def render_html(rows: Sequence[Any], args: dict[str, Any], machine: dict[str, Any], plot_png: bytes,
                bench_size: Sequence[int]) -> str:
    """The report page as one string (see the module docstring)."""
    e = html.escape
    head = "".join(
        f'<th class="{"text" if fmt is None else "num"}" title="click to sort">{e(title)}</th>'
        for _, title, fmt in TABLE_COLUMNS
    )
    body = []
    for row in rows:
        values = asdict(row)
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            sort_key, text = _cell(values[key], fmt)
            css = "text" if fmt is None else "num"
            cells.append(f'<td class="{css}" data-sort="{e(sort_key)}">{e(text)}</td>')
        body.append(f'<tr class="{"pareto" if row.pareto else ""}">{"".join(cells)}</tr>')
    budget = (f"{args['time_each'] * 60:.1f} minutes of training per model" if args.get("time_each")
              else f"{args['epochs']} epochs per model" if args.get("epochs") else "the runs' own training")
    setup = {
        "command": args.get("command", ""),
        "data": args.get("data") or "(each run's own dataset)",
        "training": f"{budget}, imgsz {args.get('imgsz')}, batch {args.get('batch')}, seed {args.get('seed')}",
        "latency": (f"batch 1, {bench_size[0]}x{bench_size[1]}, {machine.get('threads') or 'default'} threads, "
                    "median (p10-p90) of runs timed in interleaved passes"),
        "mAP": "best.pt on the val split, COCO-exact (what efyolo val prints); the same for every format",
    }
    machine_rows = {k: v for k, v in machine.items() if k != "threads"}
    dl = "".join(f"<dt>{e(str(k))}</dt><dd>{e(str(v))}</dd>" for k, v in {**setup, **machine_rows}.items())
    front = [f"{r.model} ({r.format})" for r in sorted(rows, key=lambda r: r.latency_ms or 0) if r.pareto]
    image = base64.b64encode(plot_png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>efyolo compare: {e(str(len({r.model for r in rows})))} models</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>efyolo compare</h1>
<p>Pareto front (no other row is both faster and more accurate): {e(", ".join(front) or "none")}.
Rows on the front are highlighted. Click a column heading to sort.</p>
<table class="sortable" id="results">
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
<h2>mAP50-95 against latency</h2>
<img id="pareto" alt="mAP50-95 against latency with the Pareto front" src="data:image/png;base64,{image}">
<h2>Conditions</h2>
<dl>{dl}</dl>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def write_report(save_dir: Path, rows: Sequence[Any], args: dict[str, Any], bench_size: Sequence[int],
                 threads: int | None) -> dict[str, Path]:
    """Write the four report files into ``save_dir``; returns them by name."""
    from efyolo.utils.plotting import pareto_figure

    machine = machine_summary(threads)
    files = {"compare.csv": write_csv(save_dir / "compare.csv", rows)}
    files["compare.json"] = write_json_atomic(
        save_dir / "compare.json", {"rows": [asdict(r) for r in rows], "args": args, "machine": machine}, indent=1
    )
    title = f"{len({r.model for r in rows})} models, latency at {bench_size[0]}x{bench_size[1]}"
    fig = pareto_figure([asdict(r) for r in rows], title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    fig.clear()
    png = buf.getvalue()
    files["pareto.png"] = write_bytes_atomic(save_dir / "pareto.png", png)
    files["report.html"] = write_text_atomic(save_dir / "report.html", render_html(rows, args, machine, png,
                                                                                     bench_size))
    return files


def format_table(rows: Sequence[Any]) -> str:
    """A fixed-width table of the rows for the terminal (``*`` marks the Pareto front)."""
    width = max([24] + [len(r.model) for r in rows])
    header = (f"{'model':<{width}} {'format':<11} {'params (M)':>10} {'GFLOPs':>7} {'mAP50':>7} {'mAP50-95':>8} "
              f"{'ms':>8} {'img/s':>7}  status")
    lines = [header, "-" * len(header)]
    for r in rows:
        def num(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        lines.append(
            f"{r.model:<{width}} {r.format:<11} {r.params / 1e6:>10.3f} {r.gflops:>7.2f} {num(r.map50, '.4f'):>7} "
            f"{num(r.map, '.4f'):>8} {num(r.latency_ms, '.1f'):>8} {num(r.train_images_per_s, '.1f'):>7}  "
            f"{'* ' if r.pareto else ''}{r.status}"
        )
    return "\n".join(lines)
