"""The report's plots as PNG bytes (matplotlib, no display): MI, win rates, lengths, loss, adherence, comparisons.
Each returns None when there is nothing to plot yet."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from sami.layout import RunLayout
from sami.report.summary import Reader, loss_curve
from sami.report.tables import BASE
from sami.run_files import IterationSummary, Summary, as_summary

Interval = tuple[float, float] | None

POSITIVE_COLOR, NEGATIVE_COLOR = "#2a9d5c", "#d1495b"
COLORS = ["#3a6ea5", "#e07a1f", "#7b4fa0", "#2a9d8f", "#b5651d", "#c2185b"]


def _figure(width: float = 6.2, height: float = 3.6, ncols: int = 1):
    # matplotlib (~0.65 s to import): only a report with plots needs it
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols)
    for ax in axes if ncols > 1 else [axes]:
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _xticks(ax, xs: list[int]) -> None:
    ax.set_xticks(sorted(set(xs)))
    ax.set_xlabel("iteration")


def _errors(value: float, ci: Interval) -> tuple[float, float]:
    """Error bar lengths below and above `value` of a [low, high] interval (0 without one)."""
    if ci is not None:
        return max(0.0, value - ci[0]), max(0.0, ci[1] - value)
    return 0.0, 0.0


def _rate_line(ax, points: list[tuple[float, float, tuple[float, float]]], **style) -> None:
    """Rates with their error bars (`points`: x, y, (below, above))."""
    if not points:
        return
    has_ci = any(p[2] != (0.0, 0.0) for p in points)
    yerr = [[p[2][0] for p in points], [p[2][1] for p in points]] if has_ci else None
    ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=yerr, capsize=4, markersize=5, **style)


def _paired_style(i: int, dashed: bool) -> dict:
    """Line style of series i: solid with circles, or (its paired series) dashed with squares."""
    return {
        "color": COLORS[i % len(COLORS)],
        "linestyle": "--" if dashed else "-",
        "marker": "s" if dashed else "o",
        "linewidth": 1.5 if dashed else 2,
    }


def _rate_axes(ax, xs: list[int], title: str, ylabel: str) -> None:
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if xs:
        _xticks(ax, xs)
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)


def plot_mi(iterations: list[IterationSummary]) -> bytes | None:
    rows = [it for it in iterations if it.mi is not None or it.mi_bound is not None]
    if not rows:
        return None
    fig, (left, right) = _figure(ncols=2)
    for ax, key, title in ((left, "mi", "paper MI (± s.e.)"), (right, "mi_bound", "InfoNCE bound")):
        pts = [(it.iteration, getattr(it, key)) for it in rows if getattr(it, key) is not None]
        if pts:
            sems = [it.mi_sem if key == "mi" else None for it in rows if getattr(it, key) is not None]
            yerr = [x or 0.0 for x in sems] if any(x is not None for x in sems) else None
            ax.errorbar(*zip(*pts, strict=True), yerr=yerr, marker="o", color=COLORS[0], linewidth=2, capsize=4)
            for x, y in pts:
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(7, -3), ha="left", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.15, y=0.18)
        _xticks(ax, [it.iteration for it in rows])
    cs = {it.n_constitutions for it in rows if isinstance(it.n_constitutions, int)}  # one C (not one per source)
    if len(cs) == 1:
        log_c = math.log(cs.pop())
        right.axhline(log_c, color="#888", linestyle=":", linewidth=1)
        right.annotate(
            f"log C = {log_c:.3f}",
            (0.02, log_c),
            xycoords=("axes fraction", "data"),
            xytext=(0, -11),
            textcoords="offset points",
            fontsize=8,
            color="#666",
        )
    return _png(fig)


def plot_win_rates(iterations: list[IterationSummary]) -> bytes | None:
    """Raw (solid) and length-balanced (dashed) win rate vs each baseline, 95% CI on the raw rate."""
    baselines = sorted({b for it in iterations for b in it.win_rates})
    if not baselines:
        return None
    fig, ax = _figure()
    ax.axhline(0.5, color="#888", linestyle=":", linewidth=1)
    xs = []
    for i, baseline in enumerate(baselines):
        for key, dashed in (("win_rate", False), ("length_balanced_win_rate", True)):
            pts = []
            for it in iterations:
                s = it.win_rates.get(baseline)
                rate = getattr(s, key, None)
                if rate is not None:
                    errors = _errors(rate, s.ci95) if not dashed else (0.0, 0.0)
                    pts.append((it.iteration + (0.04 if dashed else -0.04), rate, errors))
                    xs.append(it.iteration)
            label = f"vs {baseline} ({'length-balanced' if dashed else 'raw'})"
            _rate_line(ax, pts, label=label, **_paired_style(i, dashed))
    _rate_axes(ax, xs, "win rate vs baselines (95% CI)", "win rate")
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return _png(fig)


def plot_lengths(iterations: list[IterationSummary], unit: str = "tokens") -> bytes | None:
    rows = [it for it in iterations if it.mean_length is not None]
    if not rows:
        return None
    fig, ax = _figure()
    for key, color, label in (
        ("positive", POSITIVE_COLOR, "positive constitution"),
        ("negative", NEGATIVE_COLOR, "negative constitutions"),
    ):
        pts = [(it.iteration, getattr(it.mean_length, key)) for it in rows if getattr(it.mean_length, key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=color, linewidth=2, label=label)
    ax.set_ylabel(f"mean response length ({unit})")
    ax.set_ylim(bottom=0)
    ax.set_title("response length by constitution sign", fontsize=10)
    _xticks(ax, [it.iteration for it in rows])
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def plot_adherence(iterations: list[IterationSummary]) -> bytes | None:
    """Adherence per iteration under the positive constitution (solid) and the antithesis (dashed), one colour per
    principle, with 95% intervals."""
    rows = [(it.iteration, it.adherence) for it in iterations if it.adherence is not None]
    if not rows:
        return None
    names = sorted({n for _, a in rows for n in a.by_principle})
    fig, ax = _figure()
    for i, name in enumerate(names):
        for key, dashed in (("positive", False), ("antithesis", True)):
            pts = []
            for t, adherence in rows:
                a = adherence.by_principle.get(name)
                value = getattr(a, key, None)
                if value is not None:
                    pts.append((t + (0.04 if dashed else -0.04), value, _errors(value, getattr(a, f"{key}_ci95"))))
            label = f"{name} ({'under the antithesis' if dashed else 'under the principle'})"
            _rate_line(ax, pts, label=label, **_paired_style(i, dashed))
    _rate_axes(ax, [t for t, _ in rows], "adherence per principle (95% Wilson CI)", "fraction following it")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_ifeval(iterations: list[IterationSummary]) -> bytes | None:
    """IFEval accuracy per iteration: prompt-level (solid) and instruction-level (dashed), strict and loose, with
    ±1.96 standard errors (`evaluation.benchmarks: [ifeval]`)."""
    rows = [(it.iteration, it.benchmarks.ifeval) for it in iterations if it.benchmarks.ifeval is not None]
    if not rows:
        return None
    fig, ax = _figure()
    for i, level in enumerate(("strict", "loose")):
        for kind, dashed in (("prompt", False), ("inst", True)):
            key, pts = f"{kind}_level_{level}_acc", []
            for t, r in rows:
                value, se = getattr(r, key), getattr(r, f"{key}_stderr")
                if value is not None:
                    err = (1.96 * se, 1.96 * se) if se is not None else (0.0, 0.0)
                    pts.append((t + (0.04 if dashed else -0.04), value, err))
            label = f"{'prompt' if kind == 'prompt' else 'instruction'}-level {level}"
            _rate_line(ax, pts, label=label, **_paired_style(i, dashed))
    n = rows[-1][1].num_prompts
    _rate_axes(ax, [t for t, _ in rows], f"IFEval accuracy ({n} prompts, ±1.96 se)", "accuracy")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_loss(curves: dict[int, list[tuple[int, float]]]) -> bytes | None:
    curves = {t: c for t, c in curves.items() if c}
    if not curves:
        return None
    # matplotlib: only a report with plots needs it
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    for i, (t, curve) in enumerate(sorted(curves.items())):
        steps, losses = zip(*curve, strict=True)
        ax.plot(
            steps,
            losses,
            marker="o" if len(curve) < 30 else None,
            markersize=4,
            linewidth=1.8,
            color=COLORS[i % len(COLORS)],
            label=f"iteration {t}",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("SAMI loss")
    ax.set_title("training loss", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def plot_comparison(iterations: list[IterationSummary], method: str) -> bytes | None:
    """SAMI (solid) and the comparison model (dashed) per iteration: win rate vs base with the head-to-head rate
    (left), adherence under the positive constitution (right)."""
    rows = [(it, it.comparisons[method]) for it in iterations if method in it.comparisons]
    if not rows:
        return None
    label = method.upper()
    fig, (left, right) = _figure(width=8.4, ncols=2)
    left.axhline(0.5, color="#888", linestyle=":", linewidth=1)
    series = (
        ("SAMI", lambda it, other: it, COLORS[0], "-", -0.04),
        (label, lambda it, other: other, COLORS[1], "--", 0.04),
    )
    for name, pick, color, style, shift in series:
        wins, adherence = [], []
        for it, other in rows:
            entry = pick(it, other)
            s, a = entry.win_rates.get(BASE), entry.adherence
            if s is not None and s.win_rate is not None:
                wins.append((it.iteration + shift, s.win_rate, _errors(s.win_rate, s.ci95)))
            if a is not None and a.positive is not None:
                adherence.append((it.iteration + shift, a.positive, _errors(a.positive, a.positive_ci95)))
        common = {"color": color, "linestyle": style, "marker": "o", "linewidth": 2}
        _rate_line(left, wins, label=f"{name} vs {BASE}", **common)
        _rate_line(right, adherence, label=name, **common)
    head = [(it.iteration, o.vs_sami) for it, o in rows if o.vs_sami is not None and o.vs_sami.win_rate is not None]
    _rate_line(
        left,
        [(t, s.win_rate, _errors(s.win_rate, s.ci95)) for t, s in head],
        color=COLORS[2],
        linestyle=":",
        marker="D",
        linewidth=1.5,
        label=f"{label} vs SAMI",
    )
    xs = [it.iteration for it, _ in rows]
    _rate_axes(left, xs, f"win rate: SAMI vs {label} (95% CI)", "win rate")
    _rate_axes(right, xs, "adherence under the positive constitution", "fraction following every principle")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right", frameon=False)
    return _png(fig)


def make_plots(run_dir: str | os.PathLike, summary: Summary | dict) -> dict[str, bytes | None]:
    """PNG bytes of each plot (None where there is nothing to plot yet); `comparison-<method>` only for the
    comparison methods the run has."""
    layout = RunLayout(Path(run_dir))
    reader = Reader(layout.root)
    curves = {}
    for t, _ in layout.iterations():
        history = reader.log_history(layout.train(t)) if t > 0 else None
        if history:
            curves[t] = loss_curve(history)
    summary = as_summary(summary)
    its = summary.iterations
    plots = {
        "mi": plot_mi(its),
        "win_rate": plot_win_rates(its),
        "length": plot_lengths(its, summary.length_unit),
        "loss": plot_loss(curves),
        "adherence": plot_adherence(its),
    }
    if any(it.benchmarks.ifeval is not None for it in its):
        plots["ifeval"] = plot_ifeval(its)
    for method in sorted({m for it in its for m in it.comparisons}):
        plots[f"comparison-{method}"] = plot_comparison(its, method)
    return plots
