"""`sami principles write|show`: write principles and antitheses with a model, or show a constitution file."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sami.cli_settings import add_settings_arguments, load_settings, settings_overrides
from sami.constitutions import load_constitutions
from sami.errors import SamiInputError
from sami.run_config import WriterSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    w = sub.add_parser("write", help="an instruction-tuned model writes each principle and its antithesis")
    w.add_argument("--out", required=True, help="constitution file to write (.json, .yaml or .yml)")
    w.add_argument(
        "--task-type",
        choices=["dialogue", "summarization"],
        help="the constitution's task (default: summarization if the task mentions summaries, else dialogue)",
    )
    w.add_argument("--config", metavar="FILE", help="a YAML file of writer settings (the flags win)")
    add_settings_arguments(w, WriterSettings, key="writer", flags={"principles": ["--principle"]})
    w.add_argument("--seed", type=int, default=0, help="seed of the sampled retries (default 0)")
    w.add_argument(
        "--no-contrast",
        action="store_true",
        help="skip the contrast check (does flipping each principle change the model's responses?)",
    )
    w.add_argument(
        "--contrast-queries",
        help="contrast check queries: a bundled name or a JSONL path (default: bundled HH helpful or TL;DR queries)",
    )
    w.add_argument("--contrast-n", type=int, default=4, help="contrast check: number of queries (default 4)")
    w.add_argument(
        "--contrast-model", default="default", help="contrast check: the model to be aligned (default: the bundled)"
    )
    s = sub.add_parser("show", help="print a constitution file (or a bundled name) as a table")
    s.add_argument("constitutions", help="constitution file or bundled name (hh_opus, tldr_opus, ...)")


def print_table(cset, title: str) -> None:
    """Print the principles of a `ConstitutionSet` as a rich table."""
    table = Table(title=title, show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("principle")
    table.add_column("antithesis")
    split = bool(cset.train_principles or cset.heldout_principles)
    if split:
        table.add_column("use")
    for p in cset.principles:
        row = [p.name, p.principle, p.antithesis]
        if split:
            row.append("held out" if p.name in (cset.heldout_principles or []) else "train")
        table.add_row(*row)
    Console().print(table)


def check_out(out: Path) -> None:
    """Where `principles write` will save: a .json/.yaml/.yml file path that is not a folder."""
    if out.is_dir():
        raise SamiInputError(f"--out: {out} is a folder; give a file path such as {out / 'constitution.json'}")
    if out.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise SamiInputError(f"--out: {out}: expected a .json, .yaml or .yml file name")
    if out.parent.exists() and not out.parent.is_dir():
        raise SamiInputError(f"--out: {out.parent} is a file, not a folder")


def run(args: argparse.Namespace) -> int:
    # the writer loads torch: imported here, not at the top, so that `sami principles --help` answers at once
    from sami import principle_writer  # its functions looked up at call time (tests patch them)

    if args.action == "show":
        cset = load_constitutions(args.constitutions)
        print_table(cset, f"{args.constitutions} (task: {cset.task}; writer: {cset.writer})")
        return 0

    settings = load_settings(WriterSettings, args.config, settings_overrides(args, "writer"), source="command line")
    check_out(Path(args.out))  # before the model works, not after
    cset = principle_writer.write_constitutions_from_settings(settings, seed=args.seed, task_type=args.task_type)
    path = cset.save(args.out)
    print_table(cset, f"{path} (task: {cset.task}; writer: {cset.writer})")
    if not args.no_contrast:
        report_contrast(cset, args)
    return 0


def report_contrast(cset, args: argparse.Namespace) -> dict:
    """Run the contrast check on what was written and say which principle/antithesis pairs look weak."""
    if args.contrast_n < 1:
        raise SamiInputError(f"--contrast-n must be >= 1, got {args.contrast_n}")
    from sami import principle_writer  # loads torch: off `sami principles --help` (tests patch its functions)

    console = Console(stderr=True)
    result = principle_writer.contrast_check(
        cset, queries=args.contrast_queries, n_queries=args.contrast_n, model=args.contrast_model, console=console
    )
    weak = [name for name, c in result["by_principle"].items() if c.get("weak")]
    for line in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}")
    if weak:
        console.print(f"weak pairs: {', '.join(weak)} (on {args.contrast_n} queries); consider rewriting them")
    else:
        console.print(f"every principle/antithesis pair changes the model's responses (on {args.contrast_n} queries)")
    return result
