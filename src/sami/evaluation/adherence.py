"""Adherence: how often responses do what a checkable principle asks, under the principle and under its antithesis.

For each evaluated query there is a response under the query's positive constitution and one under its
*antithesis* (the same principles, every sign flipped). For a principle with a `check` (`sami.checks`):

- `positive`: the fraction of responses under the positive constitution that follow the principle in the form the
  positive constitution states it (for the usual all-positive constitution: the check holds);
- `antithesis`: the fraction of responses under the antithesis constitution that follow the flipped form (by
  default: the check fails; a principle's `antithesis_check` overrides).

Overall (`positive`, `antithesis` at the top level and per subset) a response adheres when it follows *every*
checkable principle of its constitution, so `n` is the number of responses and each count is binomial. Intervals
are Wilson score intervals at 95% (Wilson 1927; well behaved at 0 and 1 and for small n, unlike the normal
approximation); written by hand because scipy/statsmodels are not dependencies and the formula is three lines.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sami.constitutions import Constitution

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval `[lo, hi]` for `k` successes in `n` trials (None when n = 0)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


@dataclass
class AdherenceItem:
    """One query's pair: its response under the positive constitution and under the antithesis constitution."""

    id: str
    subset: str
    positive: object  # sami.constitutions.Constitution
    positive_response: str
    antithesis: object  # the same principles, every sign flipped
    antithesis_response: str


def _rate(hits: Sequence[bool], hits_anti: Sequence[bool]) -> dict:
    k, n = sum(hits), len(hits)
    ka, na = sum(hits_anti), len(hits_anti)
    return {
        "positive": k / n if n else None,
        "positive_ci95": wilson_interval(k, n),
        "antithesis": ka / na if na else None,
        "antithesis_ci95": wilson_interval(ka, na),
        "n": n,
    }


def _follows(constitution, response: str) -> dict[str, bool]:
    """Checkable principle name -> whether `response` follows it in its form in `constitution`."""
    out = {}
    for p, positive in constitution.items:
        held = p.holds(response, positive)
        if held is not None:
            out[p.name] = held
    return out


def adherence(items: Iterable[AdherenceItem]) -> dict | None:
    """`{"positive", "positive_ci95", "antithesis", "antithesis_ci95", "n", "by_principle": {name: same keys},
    "by_subset": {subset: same keys}}`, or None when no principle of the items carries a check."""
    overall: list[bool] = []
    overall_anti: list[bool] = []
    per: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    sub: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    for item in items:
        pos = _follows(item.positive, item.positive_response)
        anti = _follows(item.antithesis, item.antithesis_response)
        if not pos and not anti:
            continue
        for name, held in pos.items():
            per[name][0].append(held)
        for name, held in anti.items():
            per[name][1].append(held)
        overall.append(all(pos.values()))
        overall_anti.append(all(anti.values()))
        sub[item.subset][0].append(all(pos.values()))
        sub[item.subset][1].append(all(anti.values()))
    if not overall:
        return None
    return {
        **_rate(overall, overall_anti),
        "by_principle": {name: _rate(*v) for name, v in sorted(per.items())},
        "by_subset": {name: _rate(*v) for name, v in sorted(sub.items())},
    }


def with_change(current: dict | None, first: dict | None) -> dict | None:
    """`current` with `change_positive` / `change_antithesis` (difference from `first`, e.g. iteration 0) added at
    the top level and per principle and subset."""
    if current is None or first is None:
        return current

    def diff(a: dict, b: dict | None) -> dict:
        b = b or {}
        out = dict(a)
        for key in ("positive", "antithesis"):
            x, y = a.get(key), b.get(key)
            out[f"change_{key}"] = None if x is None or y is None else x - y
        return out

    out = diff(current, first)
    for group in ("by_principle", "by_subset"):
        out[group] = {k: diff(v, (first.get(group) or {}).get(k)) for k, v in (current.get(group) or {}).items()}
    return out


def score_responses(cset, records: Iterable[dict]) -> dict:
    """Score responses against a constitution set's checks (`sami check`): per principle and overall.

    Each record gives a `response` and optionally a `constitution` (a `Constitution.to_dict()`, as in an
    evaluation's responses.jsonl) saying which form of each principle the response was asked to follow; without
    one, every principle of `cset` is taken in its positive form. Returns `{"n", "adherence", "adherence_ci95",
    "by_principle": {name: {"n", "adherence", "adherence_ci95"}}}`; `adherence` = every checked principle holds.
    """
    default = Constitution(tuple((p, True) for p in cset.principles if p.checkable))
    known = {p.name: p for p in cset.principles}
    overall: list[bool] = []
    per: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        constitution = default
        if isinstance(record.get("constitution"), dict):
            given = Constitution.from_dict(record["constitution"])
            # the set's checks decide (a responses file may predate them); the record says only each sign
            constitution = Constitution(
                tuple((known[p.name], positive) for p, positive in given.items if p.name in known)
            )
        follows = _follows(constitution, str(record["response"]))
        if not follows:
            continue
        for name, held in follows.items():
            per[name].append(held)
        overall.append(all(follows.values()))

    def rate(hits: list[bool]) -> dict:
        return {
            "n": len(hits),
            "adherence": sum(hits) / len(hits) if hits else None,
            "adherence_ci95": wilson_interval(sum(hits), len(hits)),
        }

    return {**rate(overall), "by_principle": {name: rate(v) for name, v in sorted(per.items())}}


def query_subset(q) -> str:
    """The subset a query comes from (`q.meta["subset"]`, e.g. "helpful" / "harmless"; "all" when none)."""
    return str(q.meta.get("subset") or "all")


def eval_adherence(queries, positive, responses, anti_store) -> dict | None:
    """`adherence` of an evaluation's files: the model's responses under the positive constitution
    (responses.jsonl) and under the antithesis (antithesis_responses.jsonl) of each query having both."""
    by_id = {str(r["id"]): r for r in responses.records}
    anti = {str(r["id"]): r for r in anti_store.records}
    items = [
        AdherenceItem(
            id=q.id,
            subset=query_subset(q),
            positive=positive[q.id],
            positive_response=str(by_id[f"model:{q.id}"]["response"]),
            antithesis=positive[q.id].flipped(),
            antithesis_response=str(anti[q.id]["response"]),
        )
        for q in queries
        if f"model:{q.id}" in by_id and q.id in anti
    ]
    return adherence(items)
