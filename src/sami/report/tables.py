"""The report's tables as one model (`Table`), built from the summary; `render` turns them into Markdown, rich and
HTML. The tables read the typed summary (`sami.run_files.Summary`: a missing, NaN or infinite number is None
there); every cell is written by `sami.report.cells`, so a missing value is always `DASH`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sami.report.cells import DASH, count, fmt, fraction_ci, length, rate_ci, signed_length
from sami.run_files import (
    Adherence,
    AdherenceRate,
    EvaluationSummary,
    IterationSummary,
    Lengths,
    SubsetSummary,
    Summary,
    TrainSummary,
    WinRate,
    as_summary,
)

POOLED = "all"
BASE = "base"
SIGNS = ("positive", "negative")


@dataclass(frozen=True)
class Column:
    name: str
    left: bool = False  # a text column
    detail: bool = False  # left out of the console


@dataclass
class Table:
    """A titled table of preformatted cells; `empty` is shown when it has no rows."""

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    empty: str = ""
    console: bool = True  # shown by `summary_table`


# ---- cells of one entry -------------------------------------------------------------------------------------


def length_heading(summary: Summary) -> str:
    """How length columns name their unit: "chars (tokens)", or "tokens" for lengths measured in tokens only."""
    return "chars (tokens)" if summary.length_unit == "characters" else "tokens"


def _samples(it: IterationSummary) -> str:
    s = it.samples
    return f"{count(s.kept)} / {count(s.dropped)}" if s is not None else DASH


def _loss(train: TrainSummary | None) -> str:
    if train is None or train.final_loss is None:
        return DASH
    steps = f" @{train.steps}" if train.steps is not None else ""
    return f"{fmt(train.first_loss)} → {fmt(train.final_loss)}{steps}"


def _mi_kind(it: EvaluationSummary) -> str:
    kind = it.mi_kind
    if kind == "sign_patterns":
        n = it.n_sign_patterns
        return f"{n if n is not None else '?'} sign patterns" + (" (sampled)" if it.mi_sampled else "")
    return {"training_pairs": "training pairs", None: DASH}.get(kind, str(kind))


def _sem(value: float | None) -> str:
    return f"± {fmt(value)}" if value is not None else DASH


def _subset_names(*entries: EvaluationSummary) -> list[str]:
    return sorted({name for e in entries for name in e.subsets})


Group = EvaluationSummary | SubsetSummary


def _groups(entry: EvaluationSummary) -> list[tuple[str, Group]]:
    """(subset name, metrics) of an iteration entry: pooled first, then each subset."""
    return [(POOLED, entry), *sorted(entry.subsets.items())]


def subset_win_rates(entry: EvaluationSummary, baseline: str) -> list[tuple[str, WinRate]]:
    """(subset, win-rate summary) vs `baseline`: pooled, then each subset (from the entry's subsets, else from the
    summary's own `subsets`, which `sami.evaluation.winrate.summarize` adds when the judgments carry a subset)."""
    pooled = entry.win_rates.get(baseline)
    if pooled is None:
        return []
    subsets = {name: s.win_rates[baseline] for name, s in entry.subsets.items() if baseline in s.win_rates}
    return [(POOLED, pooled), *sorted((subsets or pooled.subsets).items())]


# ---- tables --------------------------------------------------------------------------------------------------


def metrics_table(summary: Summary | dict) -> Table:
    """Pooled metrics per iteration."""
    summary = as_summary(summary)
    heading, unit = length_heading(summary), summary.length_unit
    table = Table(
        "Metrics per iteration",
        [
            Column("iteration"),
            Column("MI (paper)"),
            Column("InfoNCE bound"),
            Column("MI ± s.e.", detail=True),
            Column("MI over", detail=True),
            Column("contrast acc.", detail=True),
            Column(f"length + {heading}"),
            Column(f"length − {heading}"),
            Column("eval queries", detail=True),
            Column("samples kept / dropped"),
            Column("train loss first → last"),
        ],
        note="MI (paper) = mean over queries of ℓ(y_j|c_j) − mean_k ℓ(y_j|c_k) with summed log-probs; InfoNCE bound "
        "= log C − symmetric InfoNCE loss. Lengths: mean response length under the positive (+) and the other (−) "
        f"constitutions, in {unit}" + (", tokens beside." if unit == "characters" else "."),
        empty="no iteration folders yet",
    )
    for it in summary.iterations:
        chars, tokens = it.mean_length, it.mean_length_tokens
        table.rows.append(
            [
                str(it.iteration),
                fmt(it.mi),
                fmt(it.mi_bound),
                _sem(it.mi_sem),
                _mi_kind(it),
                fmt(it.accuracy, 1, percent=True),
                signed_length(chars, tokens, "positive"),
                signed_length(chars, tokens, "negative"),
                count(it.n_queries),
                _samples(it),
                _loss(it.train),
            ]
        )
    reasons = [
        f"iteration {it.iteration}: " + ", ".join(f"{k}: {v}" for k, v in sorted(it.samples.drop_reasons.items()))
        for it in summary.iterations
        if it.samples is not None and it.samples.drop_reasons
    ]
    if reasons:
        table.note += " Dropped samples by reason — " + "; ".join(reasons) + "."
    return table


def _by(block: Lengths | None, field: str) -> dict:
    return getattr(block, field) if block is not None else {}


def lengths_tables(summary: Summary | dict) -> list[Table]:
    """Mean length per constitution label and per principle sign (in the summary's `length_unit`)."""
    summary = as_summary(summary)
    its, unit = summary.iterations, summary.length_unit
    out = []
    labels = sorted({k for it in its for k in _by(it.mean_length, "by_constitution")})
    if labels:
        table = Table(
            f"Mean length by constitution ({unit})",
            [Column("iteration"), *(Column(lb) for lb in labels)],
            console=False,
        )
        for it in its:
            chars, tokens = _by(it.mean_length, "by_constitution"), _by(it.mean_length_tokens, "by_constitution")
            table.rows.append([str(it.iteration), *(length(chars.get(lb), tokens.get(lb)) for lb in labels)])
        out.append(table)
    names = sorted({k for it in its for k in _by(it.mean_length, "by_principle")})
    if names:
        table = Table(
            f"Mean length by principle sign ({unit})",
            [Column("iteration"), *(Column(f"{s}{n}") for n in names for s in "+−")],
            console=False,
        )
        for it in its:
            chars, tokens = _by(it.mean_length, "by_principle"), _by(it.mean_length_tokens, "by_principle")
            cells = [signed_length(chars.get(n), tokens.get(n), key) for n in names for key in SIGNS]
            table.rows.append([str(it.iteration), *cells])
        out.append(table)
    return out


def subsets_table(summary: Summary | dict) -> Table | None:
    """Each metric per subset and pooled, per iteration (None when no evaluation has subsets)."""
    summary = as_summary(summary)
    its = [it for it in summary.iterations if it.subsets]
    if not its:
        return None
    heading = length_heading(summary)
    table = Table(
        "Per subset",
        [
            Column("iteration"),
            Column("subset", left=True),
            Column("queries"),
            Column("MI (paper)"),
            Column("MI ± s.e.", detail=True),
            Column("InfoNCE bound"),
            Column(f"length + {heading}"),
            Column(f"length − {heading}"),
            Column("adherence + [95% CI]"),
            Column("adherence −", detail=True),
        ],
        note="Win rates per subset are in the win-rate table.",
    )
    for it in its:
        for name, m in _groups(it):
            a = m.adherence or Adherence()
            chars, tokens = m.mean_length, m.mean_length_tokens
            table.rows.append(
                [
                    str(it.iteration),
                    name,
                    count(m.n_queries),
                    fmt(m.mi),
                    _sem(m.mi_sem),
                    fmt(m.mi_bound),
                    signed_length(chars, tokens, "positive"),
                    signed_length(chars, tokens, "negative"),
                    fraction_ci(a.positive, a.positive_ci95),
                    fraction_ci(a.antithesis, a.antithesis_ci95),
                ]
            )
    return table


def win_rates_table(summary: Summary | dict) -> Table:
    """Win rates vs each baseline per iteration, pooled and per subset."""
    summary = as_summary(summary)
    table = Table(
        "Win rates",
        [
            Column("iteration"),
            Column("vs", left=True),
            Column("subset", left=True),
            Column("win rate [95% CI]"),
            Column("length-balanced"),
            Column("length-controlled"),
            Column("n"),
            Column("ties", detail=True),
            Column("unparsed", detail=True),
            Column("failed", detail=True),
        ],
        note="Ties, unparsed verdicts and failed judge calls count 0.5. Length-balanced: the mean of the win rates on "
        "items where the model's response is longer and where it is shorter than the baseline's. Length-controlled: "
        "AlpacaEval 2's GLM, read at equal lengths.",
        empty="No win rates yet: no judgments were written.",
    )
    for it in summary.iterations:
        for baseline in sorted(it.win_rates):
            for name, s in subset_win_rates(it, baseline):
                table.rows.append(
                    [
                        str(it.iteration),
                        baseline,
                        name,
                        rate_ci(s),
                        fmt(s.length_balanced_win_rate, 1, percent=True),
                        fmt(s.length_controlled_win_rate, 1, percent=True),
                        count(s.n),
                        count(s.ties),
                        count(s.unparsed),
                        count(s.failed),
                    ]
                )
    return table


def _adherence_scopes(it: IterationSummary) -> list[tuple[str, AdherenceRate]]:
    """(scope, adherence entry): all principles, each principle, then each subset (and its principles)."""
    a = it.adherence
    if a is None:
        return []
    rows: list[tuple[str, AdherenceRate]] = [("all principles", a)]
    rows += [(f"principle {k}", v) for k, v in a.by_principle.items()]
    per_subset = {name: s.adherence for name, s in it.subsets.items() if s.adherence is not None}
    if per_subset:
        for name, sub in sorted(per_subset.items()):
            rows.append((f"subset {name}", sub))
            rows += [(f"subset {name}, principle {k}", v) for k, v in sub.by_principle.items()]
    else:
        rows += [(f"subset {k}", v) for k, v in a.by_subset.items()]
    return rows


def adherence_table(summary: Summary | dict) -> Table | None:
    """Adherence to the checkable principles per iteration, scope and subset (None when no principle has a check)."""
    summary = as_summary(summary)
    table = Table(
        "Adherence to checkable principles",
        [
            Column("iteration"),
            Column("scope", left=True),
            Column("under + [95% CI]"),
            Column("Δ+ vs iter 0"),
            Column("under − [95% CI]"),
            Column("Δ− vs iter 0"),
            Column("n"),
        ],
        note="Fraction of responses following the principle's form, 95% Wilson CI. Under +: responses under the "
        "positive constitution that pass the principle's check. Under −: responses under the antithesis constitution "
        "that follow the antithesis (by default: fail the check). All principles: a response follows every checkable "
        "principle of its constitution.",
    )
    for it in summary.iterations:
        for scope, a in _adherence_scopes(it):
            table.rows.append(
                [
                    str(it.iteration),
                    scope,
                    fraction_ci(a.positive, a.positive_ci95),
                    fmt(a.change_positive, 2, signed=True),
                    fraction_ci(a.antithesis, a.antithesis_ci95),
                    fmt(a.change_antithesis, 2, signed=True),
                    count(a.n),
                ]
            )
    return table if table.rows else None


def contrast_table(summary: Summary | dict) -> Table | None:
    """The contrast check (one principle of the positive constitution flipped), when it ran."""
    summary = as_summary(summary)
    table = Table(
        "Contrast check (one principle flipped)",
        [
            Column("iteration"),
            Column("principle", left=True),
            Column("MI (paper)"),
            Column("± s.e."),
            Column("adherence + → flipped"),
            Column("weak", left=True),
        ],
        console=False,
    )
    for it in summary.iterations:
        for name, c in (it.contrast.by_principle if it.contrast is not None else {}).items():
            adherence = DASH
            if c.adherence_positive is not None:
                adherence = f"{fmt(c.adherence_positive, 2)} → {fmt(c.adherence_flipped, 2)}"
            weak = "weak: " + "; ".join(c.reasons) if c.weak else "no"
            if c.notes:
                weak += " (" + "; ".join(c.notes) + ")"
            table.rows.append([str(it.iteration), name, fmt(c.mi), fmt(c.mi_sem), adherence, weak])
    return table if table.rows else None


def comparison_table(summary: Summary | dict, method: str) -> Table | None:
    """SAMI and a comparison model (e.g. DPO) side by side per iteration and subset, with the head-to-head rate."""
    summary = as_summary(summary)
    label = method.upper()
    rows = [(it, it.comparisons[method]) for it in summary.iterations if method in it.comparisons]
    if not rows:
        return None
    table = Table(
        f"SAMI vs {label}",
        [
            Column("iteration"),
            Column("subset", left=True),
            Column(f"SAMI vs {BASE}"),
            Column(f"{label} vs {BASE}"),
            Column("SAMI adherence +"),
            Column(f"{label} adherence +"),
            Column("SAMI MI", detail=True),
            Column(f"{label} MI", detail=True),
            Column(f"{label} vs SAMI [95% CI]"),
        ],
        note=f"{label} is trained on the same samples as SAMI in each iteration and evaluated the same way. Win rates "
        f"vs the {BASE} model; {label} vs SAMI: the head-to-head judgment of the two models of the same iteration "
        f"(above 50%: {label} preferred).",
    )
    for it, other in rows:
        sami_wr = dict(subset_win_rates(it, BASE))
        other_wr = dict(subset_win_rates(other, BASE))
        vs = other.vs_sami
        vs_groups = {POOLED: vs, **vs.subsets} if vs is not None else {}
        sami_groups, other_groups = dict(_groups(it)), dict(_groups(other))
        for name in [POOLED, *_subset_names(it, other)]:
            mine, theirs = sami_groups.get(name, SubsetSummary()), other_groups.get(name, SubsetSummary())
            table.rows.append(
                [
                    str(it.iteration),
                    name,
                    fmt(sami_wr.get(name, WinRate()).win_rate, 1, percent=True),
                    fmt(other_wr.get(name, WinRate()).win_rate, 1, percent=True),
                    fmt((mine.adherence or Adherence()).positive, 2),
                    fmt((theirs.adherence or Adherence()).positive, 2),
                    fmt(mine.mi),
                    fmt(theirs.mi),
                    rate_ci(vs_groups.get(name)),
                ]
            )
    return table


def comparison_methods(summary: Summary) -> list[str]:
    return sorted({m for it in summary.iterations for m in it.comparisons})


def all_tables(summary: Summary | dict) -> list[Table]:
    """Every table of the report, in page order."""
    summary = as_summary(summary)
    subsets, adherence = subsets_table(summary), adherence_table(summary)
    if subsets is not None and adherence is not None:
        adherence.console = False  # the per-subset table shows adherence pooled and per subset already
    tables: list[Table | None] = [
        metrics_table(summary),
        *lengths_tables(summary),
        subsets,
        win_rates_table(summary),
        adherence,
        contrast_table(summary),
        *(comparison_table(summary, m) for m in comparison_methods(summary)),
    ]
    return [t for t in tables if t is not None]
