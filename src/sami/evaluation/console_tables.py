"""Console tables of an evaluation's metrics (rich): intrinsic metrics, adherence, the contrast check, win rates."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from sami.evaluation.contrast import _fmt
from sami.evaluation.winrate import summaries_table


def metrics_table(metrics: dict):
    """Short rich tables: intrinsic metrics (pooled, then per subset), adherence, the contrast check, and one column
    of win rates per baseline."""

    def fmt(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    kind = metrics.get("mi_kind")
    unit = "sign patterns" if kind == "sign_patterns" else "constitutions"
    where = f", MI over {metrics.get('n_constitutions')} {unit}"
    top = Table(title=f"evaluation of {metrics['model']} ({metrics['n_queries']} queries{where if kind else ''})")
    for col in ("", "n", "MI (paper)", "InfoNCE bound", "mean length + (chars)", "mean length − (chars)"):
        top.add_column(col, justify="right" if col else "left")
    rows = [("all", metrics)] + [(f"subset {k}", v) for k, v in (metrics.get("subsets") or {}).items()]
    for name, m in rows:
        lengths = m.get("mean_length") or {}
        top.add_row(
            name,
            str(m.get("n_queries", "–")),
            fmt(m.get("mi")),
            fmt(m.get("mi_bound")),
            fmt(lengths.get("positive"), 1),
            fmt(lengths.get("negative"), 1),
        )
    parts = [top]
    if metrics.get("adherence"):
        parts.append(adherence_table(metrics["adherence"]))
    if metrics.get("contrast"):
        parts.append(contrast_table(metrics["contrast"]))
    if metrics.get("win_rates"):
        parts.append(summaries_table({f"vs {k}": v for k, v in metrics["win_rates"].items()}, title="win rates"))
    return top if len(parts) == 1 else Group(*parts)


def _rate_ci(value, ci) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "")


def adherence_table(adherence: dict):
    """Adherence under the positive constitution and under its antithesis, overall, per principle and subset."""
    table = Table(title="adherence (fraction following each form; 95% Wilson CI)")
    for col in ("", "under +", "under −", "n"):
        table.add_column(col, justify="right" if col else "left")
    rows = [("all principles", adherence)]
    rows += [(f"principle {k}", v) for k, v in adherence.get("by_principle", {}).items()]
    rows += [(f"subset {k}", v) for k, v in adherence.get("by_subset", {}).items()]
    for name, a in rows:
        table.add_row(
            name, _rate_ci(a.get("positive"), a.get("positive_ci95")),
            _rate_ci(a.get("antithesis"), a.get("antithesis_ci95")), str(a.get("n", "–")),
        )  # fmt: skip
    return table


def contrast_table(contrast: dict):
    """The contrast check per principle (flipping only that principle)."""
    table = Table(title="contrast check: flipping one principle (iteration 0)")
    for col in ("principle", "MI ± sem", "adherence + / flipped", "weak?"):
        table.add_column(col, justify="left" if col == "principle" else "right")
    for name, c in contrast.get("by_principle", {}).items():
        adh = "–"
        if c.get("adherence_positive") is not None:
            adh = f"{c['adherence_positive']:.2f} / {c['adherence_flipped']:.2f}"
        table.add_row(name, f"{_fmt(c.get('mi'))} ± {_fmt(c.get('mi_sem'))}", adh, "WEAK" if c.get("weak") else "ok")
    return table
