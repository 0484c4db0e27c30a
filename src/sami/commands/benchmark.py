"""`sami benchmark ifeval`: IFEval (Zhou et al. 2023) on a model or on a file of responses, offline.

    sami benchmark ifeval --model default --out runs/ifeval-base            # generate (greedy, chat template)
    sami benchmark ifeval --model default --limit 50 --out /tmp/quick       # a quick look: the first 50 prompts
    sami benchmark ifeval --responses input_response_data.jsonl --out DIR   # score existing responses

Writes `responses.jsonl`, `eval_results_strict.jsonl`, `eval_results_loose.jsonl` (IFEval's output format) and
`results.json` (the four accuracies, their standard errors, accuracy per instruction id). Resumable: rerun the same
command to continue an interrupted generation. The flags are generated from `sami.ifeval.benchmark.IFEvalSettings`.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from sami.cli_settings import add_settings_arguments, settings_overrides, validate
from sami.ifeval.benchmark import IFEvalSettings, run_ifeval

BENCHMARKS = ("ifeval",)


def add_arguments(parser: argparse.ArgumentParser) -> None:

    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    p = sub.add_parser("ifeval", help="IFEval's 541 prompts, strict and loose accuracy", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_settings_arguments(p, IFEvalSettings, key="ifeval")
    p.add_argument("--json", action="store_true", help="print results.json instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:

    settings = validate(IFEvalSettings, settings_overrides(args, "ifeval"), source="flags")
    results = run_ifeval(settings, progress=not args.no_progress)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    table = Table(title=f"IFEval: {results['num_prompts']} prompts, {results['num_instructions']} instructions")
    for col in ("level", "prompt-level acc ± se", "instruction-level acc ± se", "average"):
        table.add_column(col)
    for level in ("strict", "loose"):
        cells = [
            f"{results[f'{k}_level_{level}_acc']:.3f} ± {results[f'{k}_level_{level}_acc_stderr'] or 0:.3f}"
            for k in ("prompt", "inst")
        ]
        table.add_row(level, *cells, f"{results[f'average_{level}']:.3f}")
    Console().print(table)
    Console().print(f"-> {settings.out}/results.json")
    return 0
