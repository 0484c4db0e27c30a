"""Intrinsic metrics of a model on evaluation queries: mutual-information estimates and response lengths.

For each query x the evaluated model wrote a greedy response y_j under each of C constitutions c_j. With
`L[i, j] = log π(y_j | x, c_i)` (training prompts, response tokens only):

- `mi` (the paper's "mutual information"): mean over queries and responses of `L_sum[j, j] − (1/C) Σ_k L_sum[k, j]`
  with **summed** log-probs (`sami.loss.paper_mutual_information`); not bounded by log C.
- `mi_bound`: the InfoNCE lower bound `log C − sami_loss(L_mean)` with **mean** (per-token) log-probs.
- `mean_length`: mean response length in characters (AlpacaEval's unit), for the all-positive constitution
  (`positive`) and all others (`negative`), per constitution label, and per principle (`by_principle`:
  mean length when the principle is positive vs negated); `mean_length_tokens`: the same in tokens of the scoring
  tokenizer (`response_lengths`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from sami.constitutions import Constitution
from sami.errors import SamiInputError
from sami.logprobs import batched_logprob_matrices, tokenize_responses
from sami.loss import paper_mutual_information, sami_loss
from sami.prompts import PromptTemplate, render_prompt
from sami.tokens import resolve_eos, response_context


def _constitution(value: Constitution | dict) -> Constitution:
    return value if isinstance(value, Constitution) else Constitution.from_dict(value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def response_lengths(tokenizer, responses: Sequence[str]) -> list[int]:
    """Response lengths in tokens: `tokenizer(response, add_special_tokens=False)`, without EOS."""
    if not responses:
        return []
    return [len(ids) for ids in tokenizer(list(responses), add_special_tokens=False).input_ids]


def length_stats(constitutions: Sequence[Sequence[Constitution]], lengths: Sequence[Sequence[int]]) -> dict:
    """Mean lengths by sign: `{"positive", "negative", "by_constitution": {label: mean},
    "by_principle": {name: {"positive": mean, "negative": mean}}}` (None where there is nothing to average)."""
    positive, negative = [], []
    by_label: dict[str, list[int]] = defaultdict(list)
    by_principle: dict[str, dict[bool, list[int]]] = defaultdict(lambda: {True: [], False: []})
    for cs, ns in zip(constitutions, lengths, strict=True):
        for c, n in zip(cs, ns, strict=True):
            (positive if c.is_positive() else negative).append(n)
            by_label[c.label()].append(n)
            for name, sign in c.signs().items():
                by_principle[name][sign].append(n)
    return {
        "positive": _mean(positive),
        "negative": _mean(negative),
        "by_constitution": {label: _mean(v) for label, v in sorted(by_label.items())},
        "by_principle": {
            name: {"positive": _mean(v[True]), "negative": _mean(v[False])} for name, v in sorted(by_principle.items())
        },
    }


def intrinsic_metrics(
    model,
    tokenizer,
    records: Sequence[dict],
    *,
    template: PromptTemplate | None = None,
    batch_size: int = 4,
    eos: str | None = None,
    include_eos: bool | None = None,
) -> dict[str, Any]:
    """MI estimates and lengths of one model from its responses under C constitutions per query.

    `records` have the shape of `mi_responses.jsonl`: `{"id", "query", "constitutions": [C Constitution or
    to_dict() dicts], "responses": [C texts]}`, response j written under constitution j; optionally `"prompts"`: C
    rendered training prompts (then `template` is not needed). Otherwise prompts are
    `render_prompt(template.training_prompt(c_i, query), tokenizer)`. Queries with an empty response are left out
    of the MI estimates (counted in `n_skipped`) but kept in the lengths. `batch_size` = queries per forward.
    Responses are scored with the `sami.logprobs` token convention: a record's optional "separators" and
    "ended_with_eos" (per response) restore the boundary and, with `eos="generated"` (default), say which
    responses get EOS; `include_eos=True/False` is the older spelling of eos "always"/"never".

    Returns `{"n_queries", "n_constitutions", "n_skipped", "mi", "mi_sem", "mi_bound", "sami_loss", "accuracy",
    "mean_length": {...} (characters), "mean_length_tokens": {...}, "per_query": {id: {"mi", "mi_bound",
    "sami_loss", "accuracy", "lengths": [C token counts]}}}` (`aggregate_scores` of the per-query scores);
    `mi_sem` is the standard error of `mi` over queries (None with fewer than 2).
    """
    policy = resolve_eos(eos, include_eos)

    if not records:
        raise SamiInputError("intrinsic metrics need at least one query with responses")
    examples = []  # (id, prompts, responses, separators, ended_with_eos)
    all_constitutions, all_lengths = [], []
    for record in records:
        rid = record.get("id", "?")
        try:
            constitutions = [_constitution(c) for c in record["constitutions"]]
            responses = [str(r) for r in record["responses"]]
            query = record["query"]
        except KeyError as e:
            raise SamiInputError(f"query {rid}: missing field {e}") from None
        if len(constitutions) != len(responses) or len(constitutions) < 2:
            raise SamiInputError(
                f"query {rid}: need C >= 2 constitutions and one response each, "
                f"got {len(constitutions)} and {len(responses)}"
            )
        all_constitutions.append(constitutions)
        all_lengths.append(response_lengths(tokenizer, responses))
        if "prompts" in record:
            prompts = [str(p) for p in record["prompts"]]
        elif template is not None:
            prompts = [
                render_prompt(template.training_prompt(c, {"query": query, "meta": record.get("meta")}), tokenizer)
                for c in constitutions
            ]
        else:
            raise SamiInputError(f"query {rid}: no 'prompts' in the record and no template to build them")
        examples.append((str(rid), prompts, responses, *response_context(record, len(responses))))

    scored = [ex for ex in examples if all(r.strip() for r in ex[2])]
    per_query: dict[str, dict[str, Any]] = {
        ex[0]: {"mi": None, "mi_bound": None, "sami_loss": None, "accuracy": None, "lengths": lengths}
        for ex, lengths in zip(examples, all_lengths, strict=True)
    }
    by_c: dict[int, list] = defaultdict(list)
    for ex in scored:
        by_c[len(ex[1])].append(ex)
    with torch.no_grad():
        for _, group in sorted(by_c.items()):
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                summed = batched_logprob_matrices(
                    model,
                    tokenizer,
                    [ex[1] for ex in chunk],
                    [ex[2] for ex in chunk],
                    normalize="sum",
                    eos=policy,
                    separators=[ex[3] for ex in chunk],
                    ended_with_eos=[ex[4] for ex in chunk],
                    ids=[ex[0] for ex in chunk],
                ).float()
                # Mean log-probs = sum / number of scored response tokens (the logprobs module's own convention).
                token_ids = [
                    tokenize_responses(
                        tokenizer, ex[2], prompts=ex[1], eos=policy, separators=ex[3], ended_with_eos=ex[4]
                    )
                    for ex in chunk
                ]
                counts = torch.tensor([[len(x) for x in ids] for ids in token_ids], dtype=summed.dtype)
                counts = counts.to(summed.device)
                mean = summed / counts[:, None, :]
                for b, ex in enumerate(chunk):
                    result = sami_loss(mean[b])
                    per_query[ex[0]].update(
                        mi=float(paper_mutual_information(summed[b])),
                        mi_bound=float(result.mi_bound),
                        sami_loss=float(result.loss),
                        accuracy=float(result.accuracy),
                    )
    out = aggregate_scores(
        per_query,
        [
            {"id": ex[0], "constitutions": cs, "responses": ex[2]}
            for ex, cs in zip(examples, all_constitutions, strict=True)
        ],
    )
    out["per_query"] = per_query
    return out


def mean_sem(values: Sequence[float]) -> tuple[float | None, float | None]:
    """`(mean, standard error of the mean)` of `values` (None when empty; sem None with fewer than 2)."""
    values = list(values)
    mean = _mean(values)
    if mean is None or len(values) < 2:
        return mean, None
    n = len(values)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1) / n)


def aggregate_scores(per_query: dict[str, dict], records: Sequence[dict]) -> dict:
    """The intrinsic metrics of a set of queries from their per-query scores (`intrinsic_metrics(...)["per_query"]`,
    as stored in `scores.json`) and their mi-style `records` (`{"id", "constitutions", "responses"}`, response j
    under constitution j): `{"n_queries", "n_constitutions", "n_skipped", "mi", "mi_sem", "mi_bound", "sami_loss",
    "accuracy", "mean_length" (characters), "mean_length_tokens"}`. Only records with scores count; those without
    an MI (an empty response) count in `n_skipped` and in the lengths only."""
    records = [r for r in records if str(r["id"]) in per_query]
    scores = [per_query[str(r["id"])] for r in records]
    scored = [q for q in scores if q.get("mi") is not None]
    mi, sem = mean_sem([q["mi"] for q in scored])
    cs = [[_constitution(c) for c in r["constitutions"]] for r in records]
    sizes = {len(c) for c in cs}
    return {
        "n_queries": len(records),
        "n_constitutions": sizes.pop() if len(sizes) == 1 else sorted(sizes),
        "n_skipped": len(records) - len(scored),
        "mi": mi,
        "mi_sem": sem,
        "mi_bound": _mean([q["mi_bound"] for q in scored]),
        "sami_loss": _mean([q["sami_loss"] for q in scored]),
        "accuracy": _mean([q["accuracy"] for q in scored]),
        "mean_length": length_stats(cs, [[len(str(t)) for t in r["responses"]] for r in records]),
        "mean_length_tokens": length_stats(cs, [q["lengths"] for q in scores]),
    }
