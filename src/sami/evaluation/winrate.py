"""Win-rate statistics from pairwise judgments: raw, length-balanced and length-controlled, with uncertainty.

Pure numpy, no model. Input records need only `win` (1, 0.5 or 0, from the evaluated model's side),
`model_length` and `baseline_length` (response lengths in tokens); `status` ("ok" | "tie" | "unparsed" |
"failed") is counted when present.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from sami.errors import SamiInputError
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
_L2 = 1e-4  # ridge penalty of the length-controlled fit: keeps it finite when every item is a win or a loss


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


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_length_logistic(wins: np.ndarray, z: np.ndarray, *, l2: float = _L2, max_iter: int = 100) -> np.ndarray:
    """Fit `logit P(win) = a + b·z` to fractional targets `wins` ∈ [0, 1]; returns `[a, b]`.

    Maximises `Σ_i [w_i log p_i + (1 − w_i) log(1 − p_i)] − (l2 / 2)(a² + b²)` by Newton's method (IRLS) with
    step halving. The objective is strictly concave, so this converges to the unique optimum.
    """
    x = np.stack([np.ones_like(z), z], axis=1)

    def objective(beta: np.ndarray) -> float:
        eta = x @ beta
        # log p = -softplus(-eta), log(1 - p) = -softplus(eta)
        return float(np.sum(-wins * np.logaddexp(0, -eta) - (1 - wins) * np.logaddexp(0, eta)) - l2 / 2 * beta @ beta)

    beta = np.zeros(2)
    current = objective(beta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (wins - p) - l2 * beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2)
        step = np.linalg.solve(hessian, grad)
        t = 1.0
        while t > 1e-8:
            candidate = beta + t * step
            value = objective(candidate)
            if value >= current - 1e-12:
                break
            t /= 2
        beta, previous, current = candidate, current, value
        if np.max(np.abs(t * step)) < 1e-10 or abs(current - previous) < 1e-12:
            break
    return beta


def summarize(records: Iterable[dict], *, seed: int = 0, n_bootstrap: int = 2000) -> dict:
    """Summarise judgment records into win rates.

    Every item counts: ties, unparsed and failed judgments have `win = 0.5` (as in the paper) and are also
    counted separately. Returned keys:

    - `win_rate`: mean of `win`.
    - `length_balanced_win_rate` (the paper's correction): items are split into those where the model's response
      is longer than the baseline's (`model_length > baseline_length`) and the rest; the result is the mean of the
      two halves' win rates. If a half is empty this is said in `notes` and the other half's rate is used.
    - `length_controlled_win_rate` (in the spirit of AlpacaEval's length control): with `d_i = model_length_i −
      baseline_length_i` and `s` the population standard deviation of `d`, fit the logistic model
      `logit P(win_i) = a + b · d_i / s` to the fractional targets `win_i` by maximum likelihood (Newton/IRLS, ridge
      penalty 1e-4 · (a² + b²) / 2 for stability), and report `sigmoid(a)`: the predicted win rate when both
      responses have the same length. If `s = 0` (all differences equal) it is the raw win rate.
    - `sem`: standard error of `win_rate` (sample standard deviation / √n; None when n < 2).
    - `ci95`: `[low, high]` 2.5/97.5 percentiles of `win_rate` over `n_bootstrap` resamples of the items drawn with
      `numpy.random.default_rng(seed)`.
    - `n`, `ties`, `unparsed`, `failed`: counts (a record without `status` counts as a tie when `win = 0.5`).
    - also `mean_model_length`, `mean_baseline_length`, `n_longer` (items where the model's response is longer)
      and `notes` (a list of strings).

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

    # Length-controlled win rate: logistic regression on the standardised length difference.
    diff = model_len - base_len
    sd = float(diff.std())
    if sd == 0.0:
        summary["notes"].append("length-controlled: all length differences are equal; using the raw win rate")
        summary["length_controlled_win_rate"] = win_rate
    else:
        intercept, _ = fit_length_logistic(wins, diff / sd)
        summary["length_controlled_win_rate"] = _sigmoid(float(intercept))
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
    from rich.table import Table

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
