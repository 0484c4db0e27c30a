"""`sami report RUN_DIR`: build report/index.html, summary.json and summary.md of a run folder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `sami run` (e.g. runs/NAME)")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from sami.report import summary_table, write_report

    index = write_report(args.run_dir)
    summary = json.loads((index.parent / "summary.json").read_text(encoding="utf-8"))
    console = Console(stderr=True)
    console.print(summary_table(summary))
    for problem in summary.get("problems", []):
        console.print(f"[yellow]incomplete:[/yellow] {problem}", highlight=False)
    for it in summary["iterations"]:
        for missing in it.get("missing", []):
            console.print(f"[yellow]missing:[/yellow] iter-{it['iteration']}/{missing}", highlight=False)
    print(index)
    return 0
