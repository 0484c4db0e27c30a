"""`sami winrate summarize JUDGMENTS.jsonl [--json]`: win rates from judgment records (per subset too)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from sami.errors import SamiInputError
from sami.evaluation.winrate import load_judgments, summaries_table, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("summarize", help="win rate, length-balanced and length-controlled rates, SEM, bootstrap CI")
    p.add_argument("judgments", help="a judgments JSONL file (records with win, model_length, baseline_length)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")


def run(args: argparse.Namespace) -> int:

    if args.n_bootstrap < 1:
        raise SamiInputError(f"--n-bootstrap must be >= 1, got {args.n_bootstrap}")
    summary = summarize(load_judgments(args.judgments), seed=args.seed, n_bootstrap=args.n_bootstrap)
    if args.json:
        print(json.dumps(summary))
        return 0

    console = Console()
    columns = {"all": summary, **summary.get("subsets", {})} if "subsets" in summary else {args.judgments: summary}
    console.print(summaries_table(columns, title=f"win rates: {args.judgments}"))
    for note in summary["notes"]:
        console.print(f"[dim]note: {note}[/dim]")
    return 0
