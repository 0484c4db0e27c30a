"""`sami report RUN_DIR`: build report/index.html, summary.json and summary.md of a run folder."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from sami.layout import RunLayout
from sami.report import summary_table, write_report
from sami.report.render import gaps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `sami run` (e.g. runs/NAME)")


def run(args: argparse.Namespace) -> int:

    summary = write_report(args.run_dir)
    console = Console(stderr=True)
    console.print(summary_table(summary))
    for gap in gaps(summary):
        console.print(Text.assemble(("incomplete: ", "yellow"), gap))
    print(RunLayout(args.run_dir).report / "index.html")
    return 0
