"""`sami check CONSTITUTION RESPONSES.jsonl [--json]`: score responses against a constitution's checks.

Audits any model's responses without training: each principle with a `check` (`sami.checks`) is decided per
response, and the fraction of responses that follow it is reported with a 95% Wilson interval, per principle and
overall (a response adheres overall when it follows every checked principle).

Accepted JSONL records (one per line):

- `{"id", "response"}`: a response; every principle is taken in its positive form.
- `{"id", "response", "constitution"}`: `constitution` as in an evaluation's `responses.jsonl` or
  `antithesis_responses.jsonl` (`{"principles": [{"name", "positive", ...}]}`); each principle is taken in the form
  the record states (an antithesis is followed when the check fails, or per `antithesis_check`). The constitution
  file's checks decide, so responses written before checks existed can be scored.
- `{"id", "responses": [...], "constitutions": [...]}`: `mi_responses.jsonl` / `samples.jsonl`; one response
  per constitution.

Results are grouped by the record's `side` (responses.jsonl: "model", "base", ...) when present, else by the
constitution's label ("+brief +question", ...), else all together.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from sami.constitutions import Constitution, load_constitutions
from sami.errors import SamiInputError
from sami.evaluation.adherence import score_responses
from sami.io import iter_jsonl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("constitution", help="constitution file or bundled name whose principles carry checks")
    parser.add_argument("responses", help="a JSONL file of responses (see `sami check --help` for the formats)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def _records(path: str) -> list[dict]:
    """The responses of `path` as `{"group", "response", "constitution"?}`; errors name the file and line."""
    out = []
    for line, record in iter_jsonl(path):
        where = f"{path}:{line}"
        if "response" in record:
            responses = [(record["response"], record.get("constitution"))]
        elif isinstance(record.get("responses"), list):
            cs = record.get("constitutions") or [None] * len(record["responses"])
            if len(cs) != len(record["responses"]):
                raise SamiInputError(f"{where}: 'responses' and 'constitutions' differ in length")
            responses = list(zip(record["responses"], cs, strict=True))
        else:
            raise SamiInputError(f"{where}: expected a 'response' (or 'responses') field")
        for text, constitution in responses:
            if not isinstance(text, str):
                raise SamiInputError(f"{where}: response: expected a string, got {type(text).__name__}")
            if constitution is not None and not isinstance(constitution, dict):
                raise SamiInputError(f"{where}: constitution: expected a mapping")
            try:
                label = Constitution.from_dict(constitution).label() if constitution else None
            except SamiInputError as e:
                raise SamiInputError(f"{where}: {e}") from None
            group = str(record.get("side") or label or "all")
            out.append({"group": group, "response": text, "constitution": constitution})
    if not out:
        raise SamiInputError(f"{path}: no responses")
    return out


def run(args: argparse.Namespace) -> int:

    cset = load_constitutions(args.constitution)
    if not cset.checkable:
        raise SamiInputError(f"{args.constitution}: no principle carries a `check`; nothing to score")
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in _records(args.responses):
        groups[record["group"]].append(record)
    results = {name: score_responses(cset, records) for name, records in groups.items()}
    if args.json:
        print(json.dumps({"constitution": args.constitution, "responses": args.responses, "groups": results}))
        return 0

    def rate(r: dict) -> str:
        if r["adherence"] is None:
            return "–"
        lo, hi = r["adherence_ci95"]
        return f"{r['adherence']:.2f} [{lo:.2f}–{hi:.2f}]"

    table = Table(title=f"adherence of {args.responses} to {args.constitution} (95% Wilson CI)")
    table.add_column("group")
    table.add_column("all checked principles", justify="right")
    names = [p.name for p in cset.principles if p.checkable]
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("n", justify="right")
    for group, r in results.items():
        cells = [rate(r["by_principle"][n]) if n in r["by_principle"] else "–" for n in names]
        table.add_row(group, rate(r), *cells, str(r["n"]))
    Console().print(table)
    return 0
