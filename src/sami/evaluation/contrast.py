"""The contrast check of an evaluation: per principle, how much flipping it alone changes the model's responses."""

from __future__ import annotations

from typing import Any

from sami.evaluation.metrics import mean_sem


def contrast_metrics(queries, positive, responses, contrast_store, principles, *, mi_fn=None, scores=None) -> dict:
    """The contrast check: for each principle, the model's responses under the positive constitution against those
    under the same constitution with only that principle flipped.

    Per principle: `mi`, `mi_sem` (the paper's MI of the C = 2 pair over the queries: the mean and standard error of
    the per-query values in `scores` = scores.json's `contrast`, `{principle: {query_id: mi}}`, or `mi_fn` applied to
    mi-style records) and, when the principle has a check, `adherence_positive` / `adherence_flipped` (fraction of
    each side's responses following the principle in its positive-constitution form) and `adherence_change` (their
    difference).

    `weak` (a warning naming the principle) when the log-prob contrast SAMI trains on is within noise of zero
    (`mi − 1.96·mi_sem ≤ 0`), or when the principle is checkable and no response follows it even when asked
    (`adherence_positive == 0`: nothing to amplify). An adherence change whose 95% interval (normal approximation of
    a difference of two proportions) reaches 0 is noted in `notes` but is not by itself weak: the base model often
    follows neither form reliably while its log-probs already tell them apart (brevity, measured in the default
    run). Returns `{"by_principle": {...}, "warnings": [one line per weak principle]}`.
    """
    by_id = {str(r["id"]): r for r in responses.records}
    flipped = {str(r["id"]): r for r in contrast_store.records}
    out: dict[str, dict] = {}
    warnings = []
    for name in principles:
        pairs = [
            (q, by_id[f"model:{q.id}"]["response"], flipped[f"{name}:{q.id}"]["response"])
            for q in queries
            if f"model:{q.id}" in by_id and f"{name}:{q.id}" in flipped
        ]
        if not pairs:
            continue
        records = [
            {"id": q.id, "query": q.query, "constitutions": [positive[q.id], positive[q.id].flipped({name})],
             "responses": [a, b]}
            for q, a, b in pairs
        ]  # fmt: skip
        if scores is not None:
            values = [scores.get(name, {}).get(q.id) for q, _, _ in pairs]
            mean, sem = mean_sem([v for v in values if v is not None])
            mi = {"mi": mean, "mi_sem": sem}
        else:
            mi = mi_fn(records)
        entry: dict[str, Any] = {"n": len(pairs), "mi": mi.get("mi"), "mi_sem": mi.get("mi_sem")}
        forms = [{p.name: (p, s) for p, s in positive[q.id].items}[name] for q, _, _ in pairs]
        if forms[0][0].checkable:
            hits_a = [bool(p.holds(a, form)) for (p, form), (_, a, _) in zip(forms, pairs, strict=True)]
            hits_b = [bool(p.holds(b, form)) for (p, form), (_, _, b) in zip(forms, pairs, strict=True)]
            pa, pb = sum(hits_a) / len(pairs), sum(hits_b) / len(pairs)
            entry.update(adherence_positive=pa, adherence_flipped=pb, adherence_change=pa - pb)
        reasons, notes = contrast_verdict(entry)
        entry["weak"] = bool(reasons)
        entry["reasons"] = reasons
        entry["notes"] = notes
        if reasons:
            warnings.append(
                f"principle {name!r}: flipping it barely changes the model's responses ({'; '.join(reasons)}); "
                "SAMI may not learn it: sharpen the principle or its antithesis"
            )
        out[name] = entry
    return {"by_principle": out, "warnings": warnings}


def contrast_verdict(entry: dict) -> tuple[list[str], list[str]]:
    """`(reasons it is weak, notes)` for one principle's contrast entry (`n`, `mi`, `mi_sem`, and optionally
    `adherence_positive` / `adherence_flipped`); see `contrast_metrics`."""
    reasons, notes = [], []
    mi, sem = entry.get("mi"), entry.get("mi_sem")
    if mi is None or sem is None or mi - 1.96 * sem <= 0:
        reasons.append(f"MI {_fmt(mi)} ± {_fmt(sem)} is within noise of 0")
    pa, pb, n = entry.get("adherence_positive"), entry.get("adherence_flipped"), entry.get("n") or 0
    if pa is not None and pb is not None and n:
        if pa == 0:
            reasons.append("no response follows it even when asked (adherence 0)")
        se = ((pa * (1 - pa) + pb * (1 - pb)) / n) ** 0.5
        if pa - pb - 1.96 * se <= 0:
            notes.append(f"adherence {pa:.2f} under the principle vs {pb:.2f} flipped is within noise")
    return reasons, notes


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"
