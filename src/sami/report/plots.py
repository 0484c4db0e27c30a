"""The report's plots as PNG bytes (matplotlib, no display): MI, win rates, lengths, loss, adherence, comparisons.
Each returns None when there is nothing to plot yet."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from sami.layout import RunLayout
from sami.report.summary import Reader, loss_curve, number
from sami.report.tables import BASE

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


def _errors(value: float, ci) -> tuple[float, float]:
    """Error bar lengths below and above `value` of a [low, high] interval (0 without one)."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(number(x) is not None for x in ci):
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


def plot_mi(iterations: list[dict]) -> bytes | None:
    rows = [it for it in iterations if it["mi"] is not None or it["mi_bound"] is not None]
    if not rows:
        return None
    fig, (left, right) = _figure(ncols=2)
    for ax, key, title in ((left, "mi", "paper MI (± s.e.)"), (right, "mi_bound", "InfoNCE bound")):
        pts = [(it["iteration"], it[key]) for it in rows if it[key] is not None]
        if pts:
            sems = [it.get("mi_sem") if key == "mi" else None for it in rows if it[key] is not None]
            yerr = [x or 0.0 for x in sems] if any(x is not None for x in sems) else None
            ax.errorbar(*zip(*pts, strict=True), yerr=yerr, marker="o", color=COLORS[0], linewidth=2, capsize=4)
            for x, y in pts:
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(7, -3), ha="left", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.15, y=0.18)
        _xticks(ax, [it["iteration"] for it in rows])
    cs = {it["n_constitutions"] for it in rows if isinstance(it.get("n_constitutions"), int)}
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


def plot_win_rates(iterations: list[dict]) -> bytes | None:
    """Raw (solid) and length-balanced (dashed) win rate vs each baseline, 95% CI on the raw rate."""
    baselines = sorted({b for it in iterations for b in it["win_rates"]})
    if not baselines:
        return None
    fig, ax = _figure()
    ax.axhline(0.5, color="#888", linestyle=":", linewidth=1)
    xs = []
    for i, baseline in enumerate(baselines):
        for key, dashed in (("win_rate", False), ("length_balanced_win_rate", True)):
            pts = []
            for it in iterations:
                s = it["win_rates"].get(baseline) or {}
                rate = number(s.get(key))
                if rate is not None:
                    errors = _errors(rate, s.get("ci95")) if not dashed else (0.0, 0.0)
                    pts.append((it["iteration"] + (0.04 if dashed else -0.04), rate, errors))
                    xs.append(it["iteration"])
            label = f"vs {baseline} ({'length-balanced' if dashed else 'raw'})"
            _rate_line(ax, pts, label=label, **_paired_style(i, dashed))
    _rate_axes(ax, xs, "win rate vs baselines (95% CI)", "win rate")
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return _png(fig)


def plot_lengths(iterations: list[dict], unit: str = "tokens") -> bytes | None:
    rows = [it for it in iterations if it["mean_length"]]
    if not rows:
        return None
    fig, ax = _figure()
    for key, color, label in (
        ("positive", POSITIVE_COLOR, "positive constitution"),
        ("negative", NEGATIVE_COLOR, "negative constitutions"),
    ):
        pts = [(it["iteration"], it["mean_length"].get(key)) for it in rows if it["mean_length"].get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=color, linewidth=2, label=label)
    ax.set_ylabel(f"mean response length ({unit})")
    ax.set_ylim(bottom=0)
    ax.set_title("response length by constitution sign", fontsize=10)
    _xticks(ax, [it["iteration"] for it in rows])
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def plot_adherence(iterations: list[dict]) -> bytes | None:
    """Adherence per iteration under the positive constitution (solid) and the antithesis (dashed), one colour per
    principle, with 95% intervals."""
    rows = [it for it in iterations if it.get("adherence")]
    if not rows:
        return None
    names = sorted({n for it in rows for n in (it["adherence"].get("by_principle") or {})})
    fig, ax = _figure()
    for i, name in enumerate(names):
        for key, dashed in (("positive", False), ("antithesis", True)):
            pts = []
            for it in rows:
                a = (it["adherence"].get("by_principle") or {}).get(name) or {}
                value = number(a.get(key))
                if value is not None:
                    pts.append(
                        (it["iteration"] + (0.04 if dashed else -0.04), value, _errors(value, a.get(f"{key}_ci95")))
                    )
            label = f"{name} ({'under the antithesis' if dashed else 'under the principle'})"
            _rate_line(ax, pts, label=label, **_paired_style(i, dashed))
    _rate_axes(
        ax, [it["iteration"] for it in rows], "adherence per principle (95% Wilson CI)", "fraction following it"
    )
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_ifeval(iterations: list[dict]) -> bytes | None:
    """IFEval accuracy per iteration: prompt-level (solid) and instruction-level (dashed), strict and loose, with
    ±1.96 standard errors (`evaluation.benchmarks: [ifeval]`)."""
    rows = [it for it in iterations if (it.get("benchmarks") or {}).get("ifeval")]
    if not rows:
        return None
    fig, ax = _figure()
    for i, level in enumerate(("strict", "loose")):
        for kind, dashed in (("prompt", False), ("inst", True)):
            key, pts = f"{kind}_level_{level}_acc", []
            for it in rows:
                r = it["benchmarks"]["ifeval"]
                value, se = number(r.get(key)), number(r.get(f"{key}_stderr"))
                if value is not None:
                    err = (1.96 * se, 1.96 * se) if se is not None else (0.0, 0.0)
                    pts.append((it["iteration"] + (0.04 if dashed else -0.04), value, err))
            label = f"{'prompt' if kind == 'prompt' else 'instruction'}-level {level}"
            _rate_line(ax, pts, label=label, **_paired_style(i, dashed))
    n = rows[-1]["benchmarks"]["ifeval"].get("num_prompts")
    _rate_axes(ax, [it["iteration"] for it in rows], f"IFEval accuracy ({n} prompts, ±1.96 se)", "accuracy")
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


def plot_comparison(iterations: list[dict], method: str) -> bytes | None:
    """SAMI (solid) and the comparison model (dashed) per iteration: win rate vs base with the head-to-head rate
    (left), adherence under the positive constitution (right)."""
    rows = [(it, it["comparisons"][method]) for it in iterations if method in it.get("comparisons", {})]
    if not rows:
        return None
    label = method.upper()
    fig, (left, right) = _figure(width=8.4, ncols=2)
    left.axhline(0.5, color="#888", linestyle=":", linewidth=1)
    series = (
        ("SAMI", lambda it, other: (it["win_rates"].get(BASE), it.get("adherence")), COLORS[0], "-", -0.04),
        (label, lambda it, other: (other["win_rates"].get(BASE), other.get("adherence")), COLORS[1], "--", 0.04),
    )
    for name, pick, color, style, shift in series:
        wins, adherence = [], []
        for it, other in rows:
            s, a = pick(it, other)
            if s and number(s.get("win_rate")) is not None:
                wins.append((it["iteration"] + shift, s["win_rate"], _errors(s["win_rate"], s.get("ci95"))))
            if a and number(a.get("positive")) is not None:
                adherence.append(
                    (it["iteration"] + shift, a["positive"], _errors(a["positive"], a.get("positive_ci95")))
                )
        common = {"color": color, "linestyle": style, "marker": "o", "linewidth": 2}
        _rate_line(left, wins, label=f"{name} vs {BASE}", **common)
        _rate_line(right, adherence, label=name, **common)
    head = [
        (it["iteration"], o["vs_sami"])
        for it, o in rows
        if number((o.get("vs_sami") or {}).get("win_rate")) is not None
    ]
    _rate_line(
        left,
        [(t, s["win_rate"], _errors(s["win_rate"], s.get("ci95"))) for t, s in head],
        color=COLORS[2],
        linestyle=":",
        marker="D",
        linewidth=1.5,
        label=f"{label} vs SAMI",
    )
    xs = [it["iteration"] for it, _ in rows]
    _rate_axes(left, xs, f"win rate: SAMI vs {label} (95% CI)", "win rate")
    _rate_axes(right, xs, "adherence under the positive constitution", "fraction following every principle")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right", frameon=False)
    return _png(fig)


def make_plots(run_dir: str | os.PathLike, summary: dict) -> dict[str, bytes | None]:
    """PNG bytes of each plot (None where there is nothing to plot yet); `comparison-<method>` only for the
    comparison methods the run has."""
    layout = RunLayout(Path(run_dir))
    reader = Reader(layout.root)
    curves = {}
    for t, _ in layout.iterations():
        history = reader.log_history(layout.train(t)) if t > 0 else None
        if history:
            curves[t] = loss_curve(history)
    its = summary["iterations"]
    plots = {
        "mi": plot_mi(its),
        "win_rate": plot_win_rates(its),
        "length": plot_lengths(its, summary.get("length_unit", "tokens")),
        "loss": plot_loss(curves),
        "adherence": plot_adherence(its),
    }
    if any((it.get("benchmarks") or {}).get("ifeval") for it in its):
        plots["ifeval"] = plot_ifeval(its)
    for method in sorted({m for it in its for m in it.get("comparisons", {})}):
        plots[f"comparison-{method}"] = plot_comparison(its, method)
    return plots
