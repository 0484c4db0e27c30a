"""A few sample responses of a run: the base model beside the latest iteration, and one query's responses under
the positive and the negative constitutions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sami.constitutions import Constitution
from sami.errors import SamiInputError
from sami.layout import RunLayout
from sami.report.summary import Reader

N_EXAMPLES = 3


def _constitution(d: Any, index: int) -> tuple[str, str | None]:
    """(label, rendered text) of a `Constitution.to_dict()`; a plain label for a record that is not one."""
    try:
        c = Constitution.from_dict(d)
    except SamiInputError:
        return ("positive" if index == 0 else f"constitution {index}"), None
    return c.label(), c.render()


def _base_vs_latest(reader: Reader, layout: RunLayout, n: int) -> dict | None:
    """The first `n` queries of the latest evaluated iteration (t > 0) with the base model's response beside."""
    iterations = layout.iterations()
    base_model = {}
    if iterations and iterations[0][0] == 0:
        base_model = {r.get("query_id"): r for r in reader.jsonl(layout.eval(0).responses) if r.get("side") == "model"}
    for t, _ in reversed(iterations):
        if t == 0:
            continue
        ev = layout.eval(t)
        records = reader.jsonl(ev.responses)
        base = {r.get("query_id"): r for r in records if r.get("side") == "base"} or base_model
        verdicts = {j.get("id"): j for j in reader.jsonl(ev.judgments("base"))}
        pairs = [
            {
                "query": r.get("query", ""),
                "model": r,
                "base": base[r.get("query_id")],
                "judgment": verdicts.get(r.get("query_id")),
            }
            for r in records
            if r.get("side") == "model" and r.get("query_id") in base
        ][:n]
        if pairs:
            return {"iteration": t, "pairs": pairs}
    return None


def _under_constitutions(reader: Reader, layout: RunLayout, n: int) -> dict | None:
    """Up to 4 responses of each of `n` queries under their constitutions (mi_responses.jsonl, latest iteration)."""
    for t, _ in reversed(layout.iterations()):
        rows = []
        for r in reader.jsonl(layout.eval(t).mi_responses):
            responses, constitutions = r.get("responses"), r.get("constitutions") or []
            if not isinstance(responses, list) or len(responses) < 2:
                continue
            tokens = r.get("num_tokens") or []
            cells = []
            for j, text in enumerate(responses[:4]):
                label, rendered = _constitution(constitutions[j] if j < len(constitutions) else None, j)
                cells.append(
                    {
                        "label": label,
                        "text": rendered,
                        "response": str(text),
                        "num_tokens": tokens[j] if j < len(tokens) else None,
                    }
                )
            rows.append({"query": r.get("query", ""), "cells": cells})
            if len(rows) >= n:
                break
        if rows:
            return {"iteration": t, "rows": rows}
    return None


def collect_examples(run_dir: str | os.PathLike, n: int = N_EXAMPLES) -> dict:
    """`{"base_vs_latest": {"iteration", "pairs"} | None, "constitutions": {"iteration", "rows"} | None}`."""
    layout = RunLayout(Path(run_dir))
    reader = Reader(layout.root)
    return {
        "base_vs_latest": _base_vs_latest(reader, layout, n),
        "constitutions": _under_constitutions(reader, layout, n),
    }
