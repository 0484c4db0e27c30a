"""Win-rate statistics from pairwise judgments: raw, length-balanced and length-controlled, with uncertainty.

No model. Input records need only `win` (1, 0.5 or 0, from the evaluated model's side), `model_length` and
`baseline_length` (the lengths the records carry); `status` ("ok" | "tie" | "unparsed" | "failed") is counted
when present, and `subset` (e.g. "helpful" / "harmless") groups the items: the summary then adds the same
statistics per subset under `subsets`. The length-controlled rate is AlpacaEval 2's (`length_control`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
from rich.table import Table

from sami.errors import SamiInputError
from sami.evaluation.length_control import length_controlled_win_rate
from sami.io import iter_jsonl

SUMMARY_KEYS = (
    "win_rate",
    "length_balanced_win_rate",
    "length_controlled_win_rate",
    "sem",
    "ci95",
    "n",
    "ties",
    "unparsed",
    "failed",
)
STATUSES = ("ok", "tie", "unparsed", "failed")


def _number(record: dict, key: str, where: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SamiInputError(f"{where}: field '{key}' must be a number, got {value!r}")
    return float(value)


def check_record(record: dict, where: str) -> dict:
    """Validate one judgment record (`where` names it in errors, e.g. "file.jsonl:3"); returns it."""
    win = _number(record, "win", where)
    if win not in (0.0, 0.5, 1.0):
        raise SamiInputError(f"{where}: field 'win' must be 1, 0.5 or 0, got {record['win']!r}")
    for key in ("model_length", "baseline_length"):
        if _number(record, key, where) < 0:
            raise SamiInputError(f"{where}: field '{key}' must be >= 0, got {record[key]!r}")
    status = record.get("status")
    if status is not None and status not in STATUSES:
        raise SamiInputError(f"{where}: field 'status' must be one of {list(STATUSES)}, got {status!r}")
    return record


def load_judgments(path: str | os.PathLike) -> list[dict]:
    """Read and validate a judgments JSONL file; a bad line raises `SamiInputError` naming file:line."""
    return [check_record(record, f"{path}:{lineno}") for lineno, record in iter_jsonl(path)]


def _subsets(records: Sequence[dict]) -> dict[str, list[dict]]:
    """Records grouped by their `subset` field, sorted by name; empty when no record carries one."""
    if not any("subset" in r for r in records):
        return {}
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(str(record.get("subset") or "none"), []).append(record)
    return {name: groups[name] for name in sorted(groups)}


def summarize(records: Iterable[dict], *, seed: int = 0, n_bootstrap: int = 2000, by_subset: bool = True) -> dict:
    """Summarise judgment records into win rates.

    Every item counts: ties, unparsed and failed judgments have `win = 0.5` (as in the paper) and are also
    counted separately. Returned keys:

    - `win_rate`: mean of `win`.
    - `length_balanced_win_rate` (the paper's correction): items are split into those where the model's response
      is longer than the baseline's (`model_length > baseline_length`) and the rest; the result is the mean of the
      two halves' win rates. If a half is empty this is said in `notes` and the other half's rate is used.
    - `length_controlled_win_rate`: AlpacaEval 2's `length_controlled_minimal` GLM (see
      `sami.evaluation.length_control`): an L1 logistic regression of the preference on
      `tanh((baseline_length − model_length) / sd)` with 5-fold cross-validation, read at equal lengths. None
      (with a note) for fewer than 5 items.
    - `sem`: standard error of `win_rate` (sample standard deviation / √n; None when n < 2).
    - `ci95`: `[low, high]` 2.5/97.5 percentiles of `win_rate` over `n_bootstrap` resamples of the items drawn with
      `numpy.random.default_rng(seed)`.
    - `n`, `ties`, `unparsed`, `failed`: counts (a record without `status` counts as a tie when `win = 0.5`).
    - also `mean_model_length`, `mean_baseline_length`, `n_longer` (items where the model's response is longer)
      and `notes` (a list of strings).
    - `subsets` (only when some record carries `subset`): `{name: summary of that subset's items}` with the same
      keys (items without a subset are grouped under "none").

    With no records the rates are None.
    """
    records = list(records)
    for i, record in enumerate(records):
        check_record(record, f"judgment {i} (id={record.get('id', '?')})")
    n = len(records)
    counts = {status: 0 for status in STATUSES}
    for record in records:
        status = record.get("status") or ("tie" if float(record["win"]) == 0.5 else "ok")
        counts[status] += 1
    summary: dict = {key: None for key in SUMMARY_KEYS}
    summary.update(n=n, ties=counts["tie"], unparsed=counts["unparsed"], failed=counts["failed"])
    summary.update(mean_model_length=None, mean_baseline_length=None, n_longer=0, notes=[])
    if n == 0:
        summary["notes"].append("no judgments")
        return summary

    wins = np.array([float(r["win"]) for r in records])
    model_len = np.array([float(r["model_length"]) for r in records])
    base_len = np.array([float(r["baseline_length"]) for r in records])
    win_rate = float(wins.mean())
    summary["win_rate"] = win_rate
    summary["mean_model_length"] = float(model_len.mean())
    summary["mean_baseline_length"] = float(base_len.mean())

    # Standard error and bootstrap interval.
    summary["sem"] = float(wins.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    if n < 2:
        summary["notes"].append("a single judgment: no standard error")
    rng = np.random.default_rng(seed)
    means = wins[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1)
    summary["ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]

    # The paper's length-balanced win rate.
    longer = model_len > base_len
    summary["n_longer"] = int(longer.sum())
    halves = {"longer": wins[longer], "not longer": wins[~longer]}
    empty = [name for name, half in halves.items() if half.size == 0]
    if empty:
        summary["notes"].append(
            f"length-balanced: no items where the model's response is {empty[0]}; using the other half only"
        )
        summary["length_balanced_win_rate"] = win_rate
    else:
        summary["length_balanced_win_rate"] = float(np.mean([half.mean() for half in halves.values()]))

    lc, notes = length_controlled_win_rate(wins, model_len, base_len)
    summary["length_controlled_win_rate"] = lc
    summary["notes"].extend(notes)
    subsets = _subsets(records) if by_subset else {}
    if subsets:
        summary["subsets"] = {
            name: summarize(group, seed=seed, n_bootstrap=n_bootstrap, by_subset=False)
            for name, group in subsets.items()
        }
    return summary


def format_rate(value: float | None) -> str:
    """A rate as a percentage with one decimal, or "–" when undefined."""
    return "–" if value is None else f"{100 * value:.1f}%"


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, value) pairs for printing a summary as a table."""
    ci = summary.get("ci95")
    sem = summary.get("sem")
    return [
        ("win rate", format_rate(summary.get("win_rate")) + ("" if sem is None else f" ± {100 * sem:.1f}")),
        ("95% CI (bootstrap)", "–" if ci is None else f"[{format_rate(ci[0])}, {format_rate(ci[1])}]"),
        ("length-balanced", format_rate(summary.get("length_balanced_win_rate"))),
        ("length-controlled", format_rate(summary.get("length_controlled_win_rate"))),
        ("n", str(summary.get("n", 0))),
        ("ties / unparsed / failed", " / ".join(str(summary.get(k, 0)) for k in ("ties", "unparsed", "failed"))),
    ]


def summaries_table(summaries: dict[str, dict], title: str | None = None):
    """A rich table with one column per named summary (e.g. one per baseline)."""
    table = Table(title=title)
    table.add_column("")
    for name in summaries:
        table.add_column(name, justify="right")
    rows: Sequence[tuple[str, str]] = []
    columns = [summary_rows(s) for s in summaries.values()]
    if columns:
        rows = columns[0]
        for i, (label, _) in enumerate(rows):
            table.add_row(label, *(column[i][1] for column in columns))
    return table
