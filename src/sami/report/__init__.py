"""The report of a run folder: `report/summary.json`, `report/summary.md`, `report/*.png` and a self-contained
`report/index.html`.

- `summary`: the run folder read into the summary dict (the files the project writes; nothing recomputed).
- `tables`: the report's tables as one model, with the one number formatter; `render`: Markdown, console, HTML.
- `plots`: PNG plots; `examples`: sample responses; `html`: the page (style in the asset `report.css`).
"""

from __future__ import annotations

import os
from pathlib import Path

from sami.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from sami.layout import RunLayout
from sami.report.examples import collect_examples
from sami.report.html import render_html
from sami.report.plots import make_plots
from sami.report.render import render_markdown, summary_table
from sami.report.summary import build_summary, is_run_dir, loss_curve, scrub_secrets
from sami.run_files import Summary, parse_run_file

__all__ = [
    "build_summary",
    "collect_examples",
    "is_run_dir",
    "loss_curve",
    "make_plots",
    "render_html",
    "render_markdown",
    "scrub_secrets",
    "summary_table",
    "write_report",
]


def write_report(run_dir: str | os.PathLike, *, incomplete: dict[str, str] | None = None) -> dict:
    """Write `report/summary.json`, `report/summary.md`, `report/*.png` and `report/index.html` (at
    `RunLayout(run_dir).report / "index.html"`); returns the summary written to summary.json. `incomplete`:
    stage -> what failed in it; summary.json then says `"incomplete"`, and the report's warning lists them."""
    run_dir = Path(run_dir)
    summary = build_summary(run_dir)
    if incomplete:  # shown in summary.json, and in the warning box of summary.md and index.html
        summary["incomplete"] = dict(incomplete)
        notes = [f"{stage}: {what} (counted as ties; rerun to retry them)" for stage, what in incomplete.items()]
        summary["problems"] = [*summary.get("problems", []), *notes]
    out = RunLayout(run_dir).report
    typed = parse_run_file(Summary, summary, out / "summary.json")  # what is written fits the model its readers use
    plots = make_plots(run_dir, typed)
    for stale in out.glob("*.png"):  # nothing to plot (any more): no stale picture from an earlier report
        if plots.get(stale.stem) is None:
            stale.unlink()
    for name, data in plots.items():
        if data is not None:
            atomic_write_bytes(out / f"{name}.png", data)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", render_markdown(typed))
    atomic_write_text(out / "index.html", render_html(typed, plots, collect_examples(run_dir)))
    return summary
