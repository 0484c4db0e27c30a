"""The report of a run folder: `report/summary.json`, `report/summary.md` and a self-contained `report/index.html`.

Everything is read from the files a run writes (see "A run on disk"); nothing is recomputed with a model. A run
in progress or cut short is fine: the report shows what exists and lists what is missing.

```
config.yaml, manifest.json, constitutions.json
iter-T/samples.stats.json                       kept / dropped examples
iter-T/train/log_history.json                   training loss per step ("sami/loss" or "loss")
iter-T/eval/metrics.json                        MI, InfoNCE bound, mean lengths, win rates
iter-T/eval/judgments-<baseline>.jsonl          win rates when metrics.json does not hold them yet
iter-T/eval/responses.jsonl, mi_responses.jsonl sample responses
```
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from sami.errors import SamiInputError
from sami.evaluation.adherence import with_change
from sami.io import atomic_write_json, atomic_write_text, read_jsonl

ITER_DIR = re.compile(r"^iter-(\d+)$")
SECRET_KEY = re.compile(r"api_?key|secret|passw(or)?d|(^|_)(auth|access|hf|bearer)_?token$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+:[^/@\s]+@")
N_EXAMPLES = 3
POSITIVE_COLOR, NEGATIVE_COLOR = "#2a9d5c", "#d1495b"
BASELINE_COLORS = ["#3a6ea5", "#e07a1f", "#7b4fa0", "#2a9d8f", "#b5651d", "#c2185b"]


# ---- reading a run folder ---------------------------------------------------------------------------------


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when `path` looks like a run folder (config.yaml, manifest.json or iter-N folders)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "config.yaml").is_file() or (path / "manifest.json").is_file():
        return True
    return any(ITER_DIR.match(p.name) and p.is_dir() for p in path.iterdir())


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise SamiInputError(f"{run_dir}: no such folder")
    if not is_run_dir(run_dir):
        raise SamiInputError(f"{run_dir}: not a run folder (no config.yaml, manifest.json or iter-N folders)")


def _iterations(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if p.is_dir() and (m := ITER_DIR.match(p.name))]
    return sorted(found)


class _Reader:
    """Reads run files; an unreadable file becomes a problem line instead of an exception."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.problems: list[str] = []

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.run_dir))
        except ValueError:
            return str(path)

    def json(self, path: Path) -> Any:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            self.problems.append(f"{self.rel(path)}: unreadable ({getattr(e, 'msg', e)})")
            return None

    def jsonl(self, path: Path) -> list[dict]:
        if not path.is_file():
            return []
        try:
            return read_jsonl(path)
        except (OSError, UnicodeDecodeError, SamiInputError) as e:
            self.problems.append(f"{self.rel(path)}: unreadable ({e})")
            return []

    def yaml(self, path: Path) -> Any:
        if not path.is_file():
            return None
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            self.problems.append(f"{self.rel(path)}: unreadable ({getattr(e, 'problem', e)})")
            return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def scrub_secrets(obj: Any) -> Any:
    """A copy of a config without keys that may hold secrets (api keys, tokens, passwords) or URL credentials."""
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items() if not SECRET_KEY.search(str(k))}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    if isinstance(obj, str):
        return URL_CREDENTIALS.sub("***@", obj)
    return obj if obj is None or isinstance(obj, bool | int | float) else str(obj)  # YAML dates etc. -> text


def _sample_stats(stats: Any) -> dict | None:
    if not isinstance(stats, dict):
        return None

    def first(*keys):
        return next((_int(stats[k]) for k in keys if _int(stats.get(k)) is not None), None)

    kept = first("kept", "n_kept", "num_kept")
    dropped = first("dropped", "n_dropped", "num_dropped")
    total = first("total", "n_queries", "queries", "n_total")
    reasons = next((stats[k] for k in ("drop_reasons", "dropped_by_reason", "reasons") if k in stats), None)
    if dropped is None and isinstance(reasons, dict):
        counts = [_int(v) for v in reasons.values()]
        dropped = sum(counts) if all(c is not None for c in counts) else None
    if kept is None and total is not None and dropped is not None:
        kept = total - dropped
    if dropped is None and total is not None and kept is not None:
        dropped = total - kept
    return {"kept": kept, "dropped": dropped, "drop_reasons": reasons if isinstance(reasons, dict) else {}}


def _log_history(reader: _Reader, train_dir: Path) -> list[dict] | None:
    data = reader.json(train_dir / "log_history.json")
    if data is None:  # the Trainer's own state file holds the same list
        state = reader.json(train_dir / "trainer_state.json")
        data = state.get("log_history") if isinstance(state, dict) else None
    if isinstance(data, dict):
        data = data.get("log_history")
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else None


def loss_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) pairs of a Trainer log history; "sami/loss" is preferred over "loss"."""
    points = []
    for i, entry in enumerate(log_history):
        loss = _num(entry.get("sami/loss", entry.get("loss")))
        if loss is None:
            continue
        step = _int(entry.get("step"))
        points.append((step if step is not None else i + 1, loss))
    return points


def _train_summary(history: list[dict]) -> dict:
    curve = loss_curve(history)
    last: dict[str, float] = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith("sami/") and _num(value) is not None:
                last[key] = float(value)
    steps = [s for s in (_int(e.get("step")) for e in history) if s is not None]
    return {
        "steps": max(steps) if steps else None,
        "first_loss": curve[0][1] if curve else None,
        "final_loss": curve[-1][1] if curve else None,
        "final_logs": last,
    }


def summarize_judgments(records: list[dict]) -> dict:
    """Win-rate summary of judgment records (`sami.evaluation.winrate.summarize`)."""
    from sami.evaluation.winrate import summarize

    return summarize(records)


def _lengths_from_mi_responses(records: list[dict]) -> dict | None:
    """Mean response length by constitution sign (constitution 0 is the positive one)."""
    pos, neg = [], []
    for r in records:
        counts = r.get("num_tokens")
        if not isinstance(counts, list) or not counts:
            continue
        values = [_num(c) for c in counts]
        if values[0] is not None:
            pos.append(values[0])
        neg.extend(v for v in values[1:] if v is not None)
    if not pos:
        return None
    return {
        "positive": sum(pos) / len(pos),
        "negative": sum(neg) / len(neg) if neg else None,
        "by_constitution": {},
        "by_principle": {},
    }


def _iteration_summary(reader: _Reader, t: int, it_dir: Path) -> dict:
    eval_dir = it_dir / "eval"
    missing: list[str] = []
    notes: list[str] = []
    entry: dict[str, Any] = {"iteration": t}

    if t > 0:
        stats = reader.json(it_dir / "samples.stats.json")
        entry["samples"] = _sample_stats(stats)
        if stats is None:
            missing.append("samples.stats.json")
        history = _log_history(reader, it_dir / "train")
        entry["train"] = _train_summary(history) if history is not None else None
        if history is None:
            missing.append("train/log_history.json")

    metrics = reader.json(eval_dir / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    if not metrics:
        missing.append("eval/metrics.json")
    entry["model"] = metrics.get("model")
    entry["n_queries"] = _int(metrics.get("n_queries"))
    for key in ("mi", "mi_sem", "mi_bound", "sami_loss", "accuracy"):
        entry[key] = _num(metrics.get(key))

    mi_records = reader.jsonl(eval_dir / "mi_responses.jsonl")
    n_constitutions = metrics.get("n_constitutions")
    if _int(n_constitutions) is None and not isinstance(n_constitutions, list):
        cs = sorted({len(r["responses"]) for r in mi_records if isinstance(r.get("responses"), list)})
        n_constitutions = cs[0] if len(cs) == 1 else (cs or None)
    entry["n_constitutions"] = n_constitutions  # C, or the sorted list of Cs when queries differ

    lengths = metrics.get("mean_length")
    if isinstance(lengths, dict):
        by_label = lengths.get("by_constitution")
        by_principle = lengths.get("by_principle")
        entry["mean_length"] = {
            "positive": _num(lengths.get("positive")),
            "negative": _num(lengths.get("negative")),
            "by_constitution": {str(k): _num(v) for k, v in by_label.items()} if isinstance(by_label, dict) else {},
            "by_principle": {
                str(name): {"positive": _num(v.get("positive")), "negative": _num(v.get("negative"))}
                for name, v in (by_principle.items() if isinstance(by_principle, dict) else [])
                if isinstance(v, dict)
            },
        }
    else:
        entry["mean_length"] = _lengths_from_mi_responses(mi_records) or {}
        if entry["mean_length"]:
            notes.append("mean lengths computed from eval/mi_responses.jsonl")

    win_rates: dict[str, dict] = {}
    stored = metrics.get("win_rates")
    if isinstance(stored, dict):
        win_rates.update({str(k): v for k, v in stored.items() if isinstance(v, dict)})
    if eval_dir.is_dir():
        for path in sorted(eval_dir.glob("judgments-*.jsonl")):
            baseline = path.stem.removeprefix("judgments-")
            if baseline in win_rates:
                continue
            records = reader.jsonl(path)
            if not records:
                continue
            try:
                win_rates[baseline] = summarize_judgments(records)
            except SamiInputError as e:
                reader.problems.append(f"{reader.rel(path)}: {e}")
                continue
            notes.append(f"win rate vs {baseline} computed from {path.name} (metrics.json does not hold it)")
    entry["win_rates"] = win_rates
    entry["adherence"] = metrics.get("adherence") if isinstance(metrics.get("adherence"), dict) else None
    entry["contrast"] = metrics.get("contrast") if isinstance(metrics.get("contrast"), dict) else None
    entry["missing"] = missing
    entry["notes"] = notes
    return entry


def _find_when(manifest: Any, run_dir: Path) -> dict:
    when: dict[str, str | None] = {"started": None, "finished": None}
    if isinstance(manifest, dict):
        when["started"] = manifest.get("created_at") if isinstance(manifest.get("created_at"), str) else None
        stages = manifest.get("stages")
        if isinstance(stages, dict):
            times = [s.get("finished_at") for s in stages.values() if isinstance(s, dict)]
            times = [x for x in times if isinstance(x, str)]
            when["finished"] = max(times) if times else None
    if when["started"] is None:
        for name in ("config.yaml", "manifest.json"):
            if (run_dir / name).is_file():
                mtime = (run_dir / name).stat().st_mtime
                when["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(mtime))
                break
    return when


def _run_info(reader: _Reader, run_dir: Path, config: dict, manifest: Any, iterations: list[dict]) -> dict:
    model = config.get("model")
    if isinstance(model, dict):
        model = model.get("policy") or model.get("name") or model.get("path")
    if not isinstance(model, str):
        model = next((it["model"] for it in iterations if it["iteration"] == 0 and it.get("model")), None)
    cset = reader.json(run_dir / "constitutions.json")
    principles = []
    if isinstance(cset, dict) and isinstance(cset.get("principles"), list):
        for p in cset["principles"]:
            if isinstance(p, dict):
                principles.append({k: str(p.get(k, "")) for k in ("name", "principle", "antithesis")})
    sampling = config.get("sampling") if isinstance(config.get("sampling"), dict) else {}
    iters = config.get("iterations") if isinstance(config.get("iterations"), dict) else {}
    stages = manifest.get("stages") if isinstance(manifest, dict) else None
    return {
        "name": str(config.get("name") or run_dir.resolve().name),
        "model": model,
        "constitutions": {
            "source": config.get("constitutions") if isinstance(config.get("constitutions"), str) else None,
            "task": cset.get("task") if isinstance(cset, dict) else None,
            "writer": cset.get("writer") if isinstance(cset, dict) else None,
            "principles": principles,
            "train_principles": cset.get("train_principles") if isinstance(cset, dict) else None,
            "heldout_principles": cset.get("heldout_principles") if isinstance(cset, dict) else None,
            "scheme": sampling.get("scheme"),
            "n_constitutions": sampling.get("n_constitutions"),
        },
        "planned_iterations": _int(iters.get("count")),
        "steps": iters.get("steps") if isinstance(iters.get("steps"), list) else None,
        "stages_done": sorted(stages) if isinstance(stages, dict) else None,
        **_find_when(manifest, run_dir),
    }


def build_summary(run_dir: str | os.PathLike) -> dict:
    """The metrics of a run folder, per iteration, plus its config (without secrets) and what is missing.

    Shape: `{"run": {...}, "iterations": [{"iteration", "mi", "mi_bound", "mean_length", "win_rates",
    "adherence", "contrast", "samples", "train", "missing", ...}], "config": {...}, "problems": [...]}`. A metric
    that does not exist yet is `null`. `adherence` (when principles carry checks) is
    `sami.evaluation.adherence.adherence` with `change_positive` / `change_antithesis` from iteration 0.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    reader = _Reader(run_dir)
    config = reader.yaml(run_dir / "config.yaml")
    if config is None and not (run_dir / "config.yaml").is_file():
        reader.problems.append("config.yaml: missing")
    config = scrub_secrets(config) if isinstance(config, dict) else {}
    manifest = reader.json(run_dir / "manifest.json")
    iterations = [_iteration_summary(reader, t, p) for t, p in _iterations(run_dir)]
    first = next((it["adherence"] for it in iterations if it["iteration"] == 0), None)
    for it in iterations:
        it["adherence"] = with_change(it["adherence"], first)
    planned = (
        _int((config.get("iterations") or {}).get("count")) if isinstance(config.get("iterations"), dict) else None
    )
    if planned is not None:
        done = {it["iteration"] for it in iterations}
        absent = [t for t in range(planned + 1) if t not in done]
        if absent:
            reader.problems.append(f"iterations not started yet: {', '.join(map(str, absent))} (of 0..{planned})")
    return {
        "run": _run_info(reader, run_dir, config, manifest, iterations),
        "iterations": iterations,
        "config": config,
        "problems": reader.problems,
    }


# ---- plots ----------------------------------------------------------------------------------------------------


def _figure(width: float = 6.2, height: float = 3.6, ncols: int = 1):
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


def _ci_bounds(summary: dict, prefix: str = "") -> tuple[float, float] | None:
    """The 95% interval of a win rate: `ci95` as [lo, hi] or a half-width, else ±1.96·sem."""
    rate = _num(summary.get(f"{prefix}win_rate"))
    ci = summary.get(f"{prefix}ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_num(x) is not None for x in ci):
        return float(ci[0]), float(ci[1])
    if rate is None:
        return None
    if _num(ci) is not None:
        return rate - float(ci), rate + float(ci)
    sem = _num(summary.get(f"{prefix}sem"))
    return (rate - 1.96 * sem, rate + 1.96 * sem) if sem is not None else None


def _xticks(ax, xs: list[int]) -> None:
    ax.set_xticks(sorted(set(xs)))
    ax.set_xlabel("iteration")


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
            ax.errorbar(*zip(*pts, strict=True), yerr=yerr, marker="o", color="#3a6ea5", linewidth=2, capsize=4)
            for x, y in pts:
                ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(7, -3), ha="left", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.15, y=0.18)
        _xticks(ax, [it["iteration"] for it in rows])
    cs = {it["n_constitutions"] for it in rows if isinstance(it.get("n_constitutions"), int)}
    if len(cs) == 1:
        c = cs.pop()
        right.axhline(math.log(c), color="#888", linestyle=":", linewidth=1)
        right.annotate(
            f"log C = {math.log(c):.3f}",
            (0.02, math.log(c)),
            xycoords=("axes fraction", "data"),
            xytext=(0, -11),
            textcoords="offset points",
            fontsize=8,
            color="#666",
        )
    return _png(fig)


def plot_win_rates(iterations: list[dict]) -> bytes | None:
    baselines = sorted({b for it in iterations for b in it["win_rates"]})
    if not baselines:
        return None
    fig, ax = _figure()
    ax.axhline(0.5, color="#888", linestyle=":", linewidth=1)
    xs_all = []
    for i, baseline in enumerate(baselines):
        color = BASELINE_COLORS[i % len(BASELINE_COLORS)]
        for prefix, style, label in (("", "-", "raw"), ("length_balanced_", "--", "length-balanced")):
            pts = []
            for it in iterations:
                s = it["win_rates"].get(baseline)
                rate = _num(s.get(f"{prefix}win_rate")) if s else None
                if rate is not None:
                    ci = _ci_bounds(s, prefix)
                    pts.append(
                        (it["iteration"], rate, (max(0.0, rate - ci[0]), max(0.0, ci[1] - rate)) if ci else (0.0, 0.0))
                    )
            if not pts:
                continue
            xs = [p[0] + (0.04 if prefix else -0.04) for p in pts]
            xs_all += [p[0] for p in pts]
            has_ci = any(p[2] != (0.0, 0.0) for p in pts)
            ax.errorbar(
                xs,
                [p[1] for p in pts],
                yerr=[[p[2][0] for p in pts], [p[2][1] for p in pts]] if has_ci else None,
                color=color,
                linestyle=style,
                marker="o" if not prefix else "s",
                capsize=4,
                linewidth=2 if not prefix else 1.5,
                markersize=5,
                label=f"vs {baseline} ({label})",
            )
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("win rate")
    ax.set_title("win rate vs baselines (95% CI)", fontsize=10)
    if xs_all:
        _xticks(ax, xs_all)
        ax.set_xlim(min(xs_all) - 0.5, max(xs_all) + 0.5)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return _png(fig)


def plot_lengths(iterations: list[dict]) -> bytes | None:
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
    ax.set_ylabel("mean response length (tokens)")
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
        color = BASELINE_COLORS[i % len(BASELINE_COLORS)]
        for key, style, marker, shift in (("positive", "-", "o", -0.04), ("antithesis", "--", "s", 0.04)):
            pts = []
            for it in rows:
                a = (it["adherence"].get("by_principle") or {}).get(name) or {}
                value, ci = _num(a.get(key)), a.get(f"{key}_ci95")
                if value is not None:
                    lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else (value, value)
                    pts.append((it["iteration"] + shift, value, max(0.0, value - lo), max(0.0, hi - value)))
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[[p[2] for p in pts], [p[3] for p in pts]],
                    color=color,
                    linestyle=style,
                    marker=marker,
                    capsize=4,
                    linewidth=2 if key == "positive" else 1.5,
                    markersize=5,
                    label=f"{name} ({'under the principle' if key == 'positive' else 'under the antithesis'})",
                )
    ax.set_ylim(-0.03, 1.05)
    ax.set_ylabel("fraction of responses following it")
    ax.set_title("adherence per principle (95% Wilson CI)", fontsize=10)
    _xticks(ax, [it["iteration"] for it in rows])
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def plot_loss(curves: dict[int, list[tuple[int, float]]]) -> bytes | None:
    curves = {t: c for t, c in curves.items() if c}
    if not curves:
        return None
    fig, ax = _figure()
    for i, (t, curve) in enumerate(sorted(curves.items())):
        steps, losses = zip(*curve, strict=True)
        ax.plot(
            steps,
            losses,
            marker="o" if len(curve) < 30 else None,
            markersize=4,
            linewidth=1.8,
            color=BASELINE_COLORS[i % len(BASELINE_COLORS)],
            label=f"iteration {t}",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("SAMI loss")
    ax.set_title("training loss", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


# ---- sample responses -----------------------------------------------------------------------------------------


def constitution_label(d: Any, index: int) -> str:
    """A short label for a constitution dict ("+helpful -harmless"), tolerant of unknown shapes."""
    try:
        from sami.constitutions import Constitution

        return Constitution.from_dict(d).label()
    except Exception:  # noqa: BLE001 - any shape we cannot parse gets a plain label
        pass
    if isinstance(d, dict):
        if isinstance(d.get("label"), str):
            return d["label"]
        items = next((v for v in d.values() if isinstance(v, list)), None)
        parts = []
        for item in items or []:
            if isinstance(item, dict):
                name = item.get("name", "?")
                sign = item.get("positive", item.get("sign", True))
                parts.append(f"{'+' if sign in (True, '+', 1) else '-'}{name}")
        if parts:
            return " ".join(sorted(parts, key=lambda s: s[1:]))
    return "positive" if index == 0 else f"constitution {index}"


def _constitution_text(d: Any) -> str | None:
    try:
        from sami.constitutions import Constitution

        return Constitution.from_dict(d).render()
    except Exception:  # noqa: BLE001
        return None


def _query_id(record: dict) -> str:
    qid = record.get("query_id")
    if qid is None:
        qid = str(record.get("id", "")).split(":", 1)[-1]
    return str(qid)


def collect_examples(run_dir: str | os.PathLike, n: int = N_EXAMPLES) -> dict:
    """A few responses side by side: base vs the latest iteration, and positive vs negative constitutions."""
    run_dir = Path(run_dir)
    reader = _Reader(run_dir)
    iters = _iterations(run_dir)
    out: dict[str, Any] = {"base_vs_latest": None, "constitutions": None}

    base_model: dict[str, dict] = {}
    if iters and iters[0][0] == 0:
        base_model = {
            _query_id(r): r for r in reader.jsonl(iters[0][1] / "eval" / "responses.jsonl") if r.get("side") == "model"
        }
    for t, it_dir in reversed(iters):
        if t == 0:
            continue
        records = reader.jsonl(it_dir / "eval" / "responses.jsonl")
        model = [r for r in records if r.get("side") == "model"]
        base = {_query_id(r): r for r in records if r.get("side") == "base"} or base_model
        verdicts = {_query_id(j): j for j in reader.jsonl(it_dir / "eval" / "judgments-base.jsonl")}
        pairs = []
        for r in model:
            b = base.get(_query_id(r))
            if b is not None:
                pairs.append(
                    {"query": r.get("query", ""), "model": r, "base": b, "judgment": verdicts.get(_query_id(r))}
                )
            if len(pairs) >= n:
                break
        if pairs:
            out["base_vs_latest"] = {"iteration": t, "pairs": pairs}
            break

    for t, it_dir in reversed(iters):
        rows = []
        for r in reader.jsonl(it_dir / "eval" / "mi_responses.jsonl"):
            responses, cons = r.get("responses"), r.get("constitutions") or []
            if not isinstance(responses, list) or len(responses) < 2:
                continue
            tokens = r.get("num_tokens") if isinstance(r.get("num_tokens"), list) else []
            cells = []
            for j, text in enumerate(responses[:4]):
                c = cons[j] if j < len(cons) else None
                cells.append(
                    {
                        "label": constitution_label(c, j),
                        "text": _constitution_text(c),
                        "response": str(text),
                        "num_tokens": tokens[j] if j < len(tokens) else None,
                    }
                )
            rows.append({"query": r.get("query", ""), "cells": cells})
            if len(rows) >= n:
                break
        if rows:
            out["constitutions"] = {"iteration": t, "rows": rows}
            break
    return out


# ---- rendering --------------------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 3) -> str:
    value = _num(value)
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    value = _num(value)
    return "—" if value is None else f"{100 * value:.1f}%"


def _ci_text(summary: dict, prefix: str = "") -> str:
    ci = _ci_bounds(summary, prefix)
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _samples_text(it: dict) -> str:
    s = it.get("samples")
    if not s:
        return "—"
    return f"{'?' if s['kept'] is None else s['kept']} / {'?' if s['dropped'] is None else s['dropped']}"


def _loss_text(it: dict) -> str:
    tr = it.get("train")
    if not tr or tr.get("final_loss") is None:
        return "—"
    steps = f" @{tr['steps']}" if tr.get("steps") is not None else ""
    return f"{_f(tr.get('first_loss'))} → {_f(tr['final_loss'])}{steps}"


def _win_rows(summary: dict) -> list[tuple[int, str, dict]]:
    return [(it["iteration"], b, s) for it in summary["iterations"] for b, s in sorted(it["win_rates"].items())]


def render_markdown(summary: dict) -> str:
    """The metrics tables as Markdown (for terminals and READMEs)."""
    run = summary.get("run", {})
    lines = [f"# SAMI run: {run.get('name', '')}", ""]
    if run.get("model"):
        lines += [f"Model: `{run['model']}`", ""]
    lines += [
        "| iteration | MI (paper) | InfoNCE bound | length + | length − | samples kept / dropped | train loss |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for it in summary["iterations"]:
        ml = it["mean_length"] or {}
        lines.append(
            f"| {it['iteration']} | {_f(it['mi'])} | {_f(it['mi_bound'])} | {_f(ml.get('positive'), 1)} "
            f"| {_f(ml.get('negative'), 1)} | {_samples_text(it)} | {_loss_text(it)} |"
        )
    wins = _win_rows(summary)
    if wins:
        lines += [
            "",
            "| iteration | vs | win rate [95% CI] | length-balanced | length-controlled | n | ties | unparsed "
            "| failed |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for t, b, s in wins:
            lines.append(
                f"| {t} | {b} | {_pct(s.get('win_rate'))} {_ci_text(s)} | {_pct(s.get('length_balanced_win_rate'))} "
                f"| {_pct(s.get('length_controlled_win_rate'))} | {s.get('n', '—')} | {s.get('ties', '—')} "
                f"| {s.get('unparsed', '—')} | {s.get('failed', '—')} |"
            )
    lines += _adherence_markdown(summary)
    gaps = _gaps(summary)
    if gaps:
        lines += ["", "Missing or incomplete:", *[f"- {g}" for g in gaps]]
    return "\n".join(lines) + "\n"


def _rate_ci(value: Any, ci: Any) -> str:
    if _num(value) is None:
        return "—"
    ok = isinstance(ci, list | tuple) and len(ci) == 2 and all(_num(x) is not None for x in ci)
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ok else "")


def _change(value: Any) -> str:
    return "—" if _num(value) is None else f"{value:+.2f}"


def _adherence_rows(summary: dict) -> list[tuple[int, str, dict]]:
    """(iteration, scope, adherence entry): all principles, then each principle, then each subset."""
    rows = []
    for it in summary["iterations"]:
        a = it.get("adherence")
        if not a:
            continue
        rows.append((it["iteration"], "all principles", a))
        rows += [(it["iteration"], f"principle {k}", v) for k, v in (a.get("by_principle") or {}).items()]
        rows += [(it["iteration"], f"subset {k}", v) for k, v in (a.get("by_subset") or {}).items()]
    return rows


def _contrast_lines(summary: dict) -> list[str]:
    lines = []
    for it in summary["iterations"]:
        for name, c in ((it.get("contrast") or {}).get("by_principle") or {}).items():
            adh = ""
            if _num(c.get("adherence_positive")) is not None:
                adh = f", adherence {c['adherence_positive']:.2f} → {c['adherence_flipped']:.2f} flipped"
            flag = " — **weak**: " + "; ".join(c.get("reasons") or []) if c.get("weak") else ""
            if c.get("notes"):
                flag += " (" + "; ".join(c["notes"]) + ")"
            lines.append(
                f"- iteration {it['iteration']}, `{name}`: MI {_f(c.get('mi'))} ± {_f(c.get('mi_sem'))}{adh}{flag}"
            )
    return lines


def _adherence_markdown(summary: dict) -> list[str]:
    rows = _adherence_rows(summary)
    lines = []
    if rows:
        lines += [
            "",
            "Adherence (fraction of responses following the principle's form; 95% Wilson CI; Δ from iteration 0):",
            "",
            "| iteration | scope | under + [95% CI] | Δ+ | under − [95% CI] | Δ− | n |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for t, scope, a in rows:
            lines.append(
                f"| {t} | {scope} | {_rate_ci(a.get('positive'), a.get('positive_ci95'))} "
                f"| {_change(a.get('change_positive'))} | {_rate_ci(a.get('antithesis'), a.get('antithesis_ci95'))} "
                f"| {_change(a.get('change_antithesis'))} | {a.get('n', '—')} |"
            )
    contrast = _contrast_lines(summary)
    if contrast:
        lines += ["", "Contrast check (flipping one principle of the positive constitution):", "", *contrast]
    return lines


def _gaps(summary: dict) -> list[str]:
    gaps = list(summary.get("problems", []))
    for it in summary["iterations"]:
        gaps += [f"iter-{it['iteration']}/{m}: missing" for m in it.get("missing", [])]
        gaps += [f"iter-{it['iteration']}: {n}" for n in it.get("notes", [])]
    return gaps


def summary_table(summary: dict):
    """The per-iteration metrics as a compact `rich.table.Table` (two columns per baseline)."""
    from rich import box
    from rich.table import Table

    baselines = sorted({b for it in summary["iterations"] for b in it["win_rates"]})
    table = Table(title=f"SAMI run: {summary.get('run', {}).get('name', '')}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("iter", "MI", "bound", "len +/−", "samples", "loss"):
        table.add_column(col, justify="right", no_wrap=True)
    adherent = any(it.get("adherence") for it in summary["iterations"])
    if adherent:
        table.add_column("adher. + [95% CI]", justify="right", no_wrap=True)
        table.add_column("adher. −", justify="right", no_wrap=True)
    for b in baselines:
        table.add_column(f"vs {b} [95% CI]", justify="right", no_wrap=True)
        table.add_column("len-bal", justify="right", no_wrap=True)
    for it in summary["iterations"]:
        ml = it["mean_length"] or {}
        train = it.get("train") or {}
        a = it.get("adherence") or {}
        adherence_cells = [_rate_ci(a.get("positive"), a.get("positive_ci95")), _f(a.get("antithesis"), 2)]
        row = [
            str(it["iteration"]),
            _f(it["mi"]),
            _f(it["mi_bound"]),
            f"{_f(ml.get('positive'), 0)}/{_f(ml.get('negative'), 0)}",
            _samples_text(it).replace(" / ", "/"),
            _f(train.get("final_loss")),
            *(adherence_cells if adherent else []),
        ]
        for b in baselines:
            s = it["win_rates"].get(b)
            ci = _ci_bounds(s) if s else None
            ci_text = f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]" if ci else ""
            if s is None:
                row += ["—", "—"]
            else:
                row += [f"{_pct(s.get('win_rate'))}{ci_text}", _pct(s.get("length_balanced_win_rate"))]
        table.add_row(*row)
    return table


CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2933;font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1160px;margin:0 auto;padding:24px 28px 48px}
header{background:#1f3a5f;color:#fff;padding:22px 28px}
header .inner{max-width:1160px;margin:0 auto;padding:0 28px}
header h1{margin:0 0 6px;font-size:24px;font-weight:600}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0 0;font-size:13px}
header dt{color:#b8c7da}header dd{margin:0}
h2{font-size:17px;margin:28px 0 10px;color:#1f3a5f;border-bottom:2px solid #d9dee5;padding-bottom:4px}
h3{font-size:14px;margin:18px 0 8px}
.card{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:14px 16px;margin-bottom:14px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
table.narrow{width:auto;min-width:40%}
th,td{padding:6px 10px;border-bottom:1px solid #e6e9ee;text-align:right;vertical-align:top}
th{background:#f0f3f7;font-weight:600;font-size:12px;color:#4a5563;white-space:nowrap}
td.l,th.l{text-align:left}
tbody tr:nth-child(even){background:#fafbfc}
.muted{color:#7b8794;font-size:12px}
.warn{background:#fff8e6;border:1px solid #f0d48a;border-radius:8px;padding:10px 16px;margin:16px 0}
.warn ul{margin:4px 0 0;padding-left:20px}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.plots figure{margin:0;background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:8px}
.plots img{width:100%;height:auto;display:block}
.plots figcaption{font-size:12px;color:#52606d;padding:4px 6px 0}
.empty{color:#7b8794;font-style:italic;padding:24px;text-align:center}
.query{background:#f7f8fa;border-left:3px solid #9aa5b1;padding:6px 10px;margin-bottom:8px;white-space:pre-wrap;
max-height:140px;overflow:auto;font-size:13px}
.pair{display:grid;gap:10px}
.resp{border:1px solid #dde2e8;border-radius:6px;padding:8px 10px;background:#fff;min-width:0}
.resp h4{margin:0 0 4px;font-size:12px;color:#1f3a5f;display:flex;justify-content:space-between;gap:8px}
.resp pre{margin:0;white-space:pre-wrap;word-wrap:break-word;font:13px/1.45 inherit;font-family:inherit;
max-height:260px;overflow:auto}
.resp .ctext{font-size:11px;color:#7b8794;white-space:pre-wrap;margin-bottom:4px}
.pos{border-top:3px solid #2a9d5c}.neg{border-top:3px solid #d1495b}.base{border-top:3px solid #9aa5b1}
.tag{display:inline-block;border-radius:10px;padding:0 8px;font-size:11px;background:#e6ebf1;color:#334e68}
.tag.win{background:#d8f3e3;color:#1e6b41}.tag.loss{background:#fbe0e3;color:#8a1c2b}
details pre{background:#f7f8fa;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
footer{color:#7b8794;font-size:12px;margin-top:32px}
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    var good = imgs[i].complete && imgs[i].naturalWidth > 0;
    imgs[i].setAttribute("data-rendered", good ? "yes" : "no");
    if (good) ok++;
  }
  document.body.setAttribute("data-images-rendered", ok + "/" + imgs.length);
});
"""

PLOTS = (
    ("mi", "Mutual information per iteration: the paper's metric (left) and the InfoNCE bound log C − loss (right)."),
    ("win_rate", "Win rate per iteration with 95% CI: raw (solid) and length-balanced (dashed); 0.5 = parity."),
    ("length", "Mean response length (tokens) under the positive and the negative constitutions."),
    ("loss", "SAMI training loss per optimizer step, one line per iteration."),
    (
        "adherence",
        "Adherence per principle: fraction of responses following the principle under the positive constitution "
        "(solid) and following the antithesis under the antithesis constitution (dashed), 95% Wilson CI.",
    ),
)
PLOT_MISSING = {
    "mi": "no evaluation metrics yet",
    "win_rate": "no judgments yet",
    "length": "no evaluation metrics yet",
    "loss": "no training logs yet",
    "adherence": "no principle carries a check",
}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _html_header(summary: dict) -> str:
    run = summary.get("run", {})
    cons = run.get("constitutions") or {}
    principles = ", ".join(p["name"] for p in cons.get("principles", []))
    cons_text = " · ".join(
        x
        for x in (
            cons.get("source") and f"{cons['source']}",
            cons.get("task") and f"task: {cons['task']}",
            principles and f"principles: {principles}",
            cons.get("scheme") and f"scheme: {cons['scheme']}",
            cons.get("n_constitutions") and f"C = {cons['n_constitutions']}",
        )
        if x
    )
    done = [it["iteration"] for it in summary["iterations"] if it["mi"] is not None or it["win_rates"]]
    planned = run.get("planned_iterations")
    progress = f"{len(done)} evaluated" + (f" of {planned + 1} (iterations 0..{planned})" if planned else "")
    rows = [
        ("model", run.get("model") or "unknown"),
        ("constitutions", cons_text or "unknown"),
        ("iterations", progress + (f"; steps {run['steps']}" if run.get("steps") else "")),
        ("started", run.get("started") or "unknown"),
        ("last stage finished", run.get("finished") or "—"),
        ("report written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f'<header><div class="inner"><h1>SAMI run: {_e(run.get("name"))}</h1><dl>{dl}</dl></div></header>'


def _sem_text(sem: Any) -> str:
    return f"<span class='muted'> ± {_f(sem)}</span>" if _num(sem) is not None else ""


def _html_metrics(summary: dict) -> str:
    head = (
        "<tr><th>iteration</th><th>model</th><th>MI (paper)</th><th>InfoNCE bound</th><th>contrast acc.</th>"
        "<th>length +</th>"
        "<th>length −</th><th>eval queries</th><th>samples kept / dropped</th><th>train loss first → last</th></tr>"
    )
    body = []
    for it in summary["iterations"]:
        ml = it["mean_length"] or {}
        body.append(
            f"<tr><td>{it['iteration']}</td><td class='l muted'>{_e(it.get('model') or '')}</td>"
            f"<td>{_f(it['mi'])}{_sem_text(it.get('mi_sem'))}</td><td>{_f(it['mi_bound'])}</td>"
            f"<td>{_pct(it.get('accuracy'))}</td><td>{_f(ml.get('positive'), 1)}</td>"
            f"<td>{_f(ml.get('negative'), 1)}</td><td>{_e(it.get('n_queries') or '—')}</td>"
            f"<td>{_e(_samples_text(it))}</td><td>{_e(_loss_text(it))}</td></tr>"
        )
    if not body:
        body.append("<tr><td colspan='10' class='empty'>no iteration folders yet</td></tr>")
    table = f"<div class='card'><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    reasons = []
    for it in summary["iterations"]:
        s = it.get("samples") or {}
        if s.get("drop_reasons"):
            r = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted(s["drop_reasons"].items()))
            reasons.append(f"iteration {it['iteration']}: {r}")
    if reasons:
        table += "<p class='muted'>Dropped samples by reason — " + "; ".join(reasons) + "</p>"
    labels = sorted({k for it in summary["iterations"] for k in (it["mean_length"] or {}).get("by_constitution", {})})
    if labels:
        cols = "".join(f"<th>{_e(lb)}</th>" for lb in labels)
        rows = "".join(
            f"<tr><td>{it['iteration']}</td>"
            + "".join(
                f"<td>{_f((it['mean_length'] or {}).get('by_constitution', {}).get(lb), 1)}</td>" for lb in labels
            )
            + "</tr>"
            for it in summary["iterations"]
        )
        table += (
            "<h3>Mean length by constitution (tokens)</h3>"
            f"<table class='narrow'><thead><tr><th>iteration</th>{cols}</tr></thead><tbody>{rows}</tbody></table>"
        )
    names = sorted({k for it in summary["iterations"] for k in (it["mean_length"] or {}).get("by_principle", {})})
    if names:
        cols = "".join(f"<th>+{_e(n)}</th><th>−{_e(n)}</th>" for n in names)
        rows = "".join(
            f"<tr><td>{it['iteration']}</td>"
            + "".join(
                f"<td>{_f(v.get('positive'), 1)}</td><td>{_f(v.get('negative'), 1)}</td>"
                for v in ((it["mean_length"] or {}).get("by_principle", {}).get(n) or {} for n in names)
            )
            + "</tr>"
            for it in summary["iterations"]
        )
        table += (
            "<h3>Mean length by principle sign (tokens)</h3>"
            f"<table class='narrow'><thead><tr><th>iteration</th>{cols}</tr></thead><tbody>{rows}</tbody></table>"
        )
    return table + "</div>"


def _html_win_rates(summary: dict) -> str:
    rows = _win_rows(summary)
    if not rows:
        return "<div class='card empty'>No win rates yet: no judgments were written.</div>"
    head = (
        "<tr><th>iteration</th><th class='l'>vs baseline</th><th>win rate</th><th>95% CI</th>"
        "<th>length-balanced</th><th>length-controlled</th><th>n</th><th>ties</th><th>unparsed</th>"
        "<th>failed</th></tr>"
    )
    body = "".join(
        f"<tr><td>{t}</td><td class='l'>{_e(b)}</td><td><b>{_pct(s.get('win_rate'))}</b></td>"
        f"<td class='muted'>{_ci_text(s) or '—'}</td><td>{_pct(s.get('length_balanced_win_rate'))}"
        f"<span class='muted'> {_ci_text(s, 'length_balanced_')}</span></td>"
        f"<td>{_pct(s.get('length_controlled_win_rate'))}</td><td>{_e(s.get('n', '—'))}</td>"
        f"<td>{_e(s.get('ties', '—'))}</td><td>{_e(s.get('unparsed', '—'))}</td>"
        f"<td>{_e(s.get('failed', '—'))}</td></tr>"
        for t, b, s in rows
    )
    note = (
        "<p class='muted'>Ties, unparsed verdicts and failed judge calls count 0.5. Length-balanced: the mean of the "
        "win rates on items where the model's response is longer and where it is shorter than the baseline's.</p>"
    )
    return f"<div class='card'><table><thead>{head}</thead><tbody>{body}</tbody></table>{note}</div>"


def _html_adherence(summary: dict) -> str:
    rows = _adherence_rows(summary)
    contrast = [(it["iteration"], it["contrast"]) for it in summary["iterations"] if it.get("contrast")]
    if not rows and not contrast:
        return ""
    out = "<h2>Adherence to checkable principles</h2><div class='card'>"
    if rows:
        head = (
            "<tr><th>iteration</th><th class='l'>scope</th><th>under + [95% CI]</th><th>Δ+ vs iter 0</th>"
            "<th>under − [95% CI]</th><th>Δ− vs iter 0</th><th>n</th></tr>"
        )
        body = "".join(
            f"<tr><td>{t}</td><td class='l'>{_e(scope)}</td>"
            f"<td><b>{_rate_ci(a.get('positive'), a.get('positive_ci95'))}</b></td>"
            f"<td>{_change(a.get('change_positive'))}</td>"
            f"<td>{_rate_ci(a.get('antithesis'), a.get('antithesis_ci95'))}</td>"
            f"<td>{_change(a.get('change_antithesis'))}</td><td>{_e(a.get('n', '—'))}</td></tr>"
            for t, scope, a in rows
        )
        out += f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
        out += (
            "<p class='muted'>Under +: responses under the positive constitution that pass the principle's check. "
            "Under −: responses under the antithesis constitution that follow the antithesis (by default: fail the "
            "check). All principles: a response follows every checkable principle of its constitution.</p>"
        )
    lines = _contrast_lines(summary)
    if lines:
        items = "".join(f"<li>{_e(x.removeprefix('- ').replace('**', ''))}</li>" for x in lines)
        out += f"<h3>Contrast check (one principle flipped, iteration 0)</h3><ul>{items}</ul>"
    return out + "</div>"


def _html_plots(plots: dict[str, bytes | None]) -> str:
    figs = []
    for name, caption in PLOTS:
        data = plots.get(name)
        if data is None:
            empty = f"<div class='empty'>{_e(PLOT_MISSING[name])}</div>"
            figs.append(f"<figure>{empty}<figcaption>{_e(caption)}</figcaption></figure>")
            continue
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        figs.append(f"<figure><img src='{uri}' alt='{_e(name)} plot'><figcaption>{_e(caption)}</figcaption></figure>")
    return f"<div class='plots'>{''.join(figs)}</div>"


def _html_response(title: str, response: dict | str, cls: str, extra: str = "", ctext: str | None = None) -> str:
    text = response.get("response", "") if isinstance(response, dict) else response
    c = f"<div class='ctext'>{_e(ctext)}</div>" if ctext else ""
    head = f"<h4><span>{_e(title)}</span><span>{extra}</span></h4>"
    return f"<div class='resp {cls}'>{head}{c}<pre>{_e(text)}</pre></div>"


def _tokens(n: Any) -> str:
    return f" <span class='muted'>{_e(n)} tokens</span>" if _num(n) is not None else ""


def _html_examples(examples: dict) -> str:
    parts = []
    bl = examples.get("base_vs_latest")
    parts.append("<h3>Base model vs latest iteration (positive constitution)</h3>")
    if bl:
        for pair in bl["pairs"]:
            j = pair.get("judgment")
            verdict = ""
            if j and _num(j.get("win")) is not None:
                w = float(j["win"])
                word, cls = ("iteration wins", "win") if w == 1 else ("base wins", "loss") if w == 0 else ("tie", "")
                verdict = f"<span class='tag {cls}'>judge: {word}</span>"
            parts.append(
                f"<div class='card'><div class='query'>{_e(pair['query'])}</div>"
                "<div class='pair' style='grid-template-columns:1fr 1fr'>"
                + _html_response("base model", pair["base"], "base", _tokens(pair["base"].get("num_tokens")))
                + _html_response(
                    f"iteration {bl['iteration']}",
                    pair["model"],
                    "pos",
                    verdict + _tokens(pair["model"].get("num_tokens")),
                )
                + "</div></div>"
            )
    else:
        parts.append("<div class='card empty'>no evaluated iteration with responses next to the base model yet</div>")
    cons = examples.get("constitutions")
    title = f" (iteration {cons['iteration']})" if cons else ""
    parts.append(f"<h3>Positive vs negative constitutions{title}</h3>")
    if cons:
        for row in cons["rows"]:
            cells = "".join(
                _html_response(
                    c["label"], c["response"], "pos" if j == 0 else "neg", _tokens(c["num_tokens"]), c["text"]
                )
                for j, c in enumerate(row["cells"])
            )
            parts.append(
                f"<div class='card'><div class='query'>{_e(row['query'])}</div>"
                f"<div class='pair' style='grid-template-columns:repeat({len(row['cells'])},1fr)'>{cells}</div></div>"
            )
    else:
        parts.append("<div class='card empty'>no eval/mi_responses.jsonl yet</div>")
    return "".join(parts)


def _html_constitutions(summary: dict) -> str:
    principles = (summary.get("run", {}).get("constitutions") or {}).get("principles") or []
    if not principles:
        return ""
    rows = "".join(
        f"<tr><td class='l'><b>{_e(p['name'])}</b></td><td class='l'>{_e(p['principle'])}</td>"
        f"<td class='l'>{_e(p['antithesis'])}</td></tr>"
        for p in principles
    )
    return (
        "<h2>Principles</h2><div class='card'><table><thead><tr><th class='l'>name</th><th class='l'>principle</th>"
        f"<th class='l'>antithesis</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def render_html(summary: dict, plots: dict[str, bytes | None], examples: dict) -> str:
    """The whole report page: inline CSS, plots as data URIs, no external resources."""
    gaps = _gaps(summary)
    warn = (
        "<div class='warn'><b>This run is incomplete or has unreadable files.</b> The report shows what exists.<ul>"
        + "".join(f"<li>{_e(g)}</li>" for g in gaps)
        + "</ul></div>"
        if gaps
        else ""
    )
    config_yaml = yaml.safe_dump(summary.get("config") or {}, sort_keys=False, allow_unicode=True)
    body = (
        _html_header(summary)
        + "<main>"
        + warn
        + "<h2>Metrics per iteration</h2>"
        + _html_metrics(summary)
        + "<h2>Win rates</h2>"
        + _html_win_rates(summary)
        + _html_adherence(summary)
        + "<h2>Plots</h2>"
        + _html_plots(plots)
        + "<h2>Sample responses</h2>"
        + _html_examples(examples)
        + _html_constitutions(summary)
        + "<h2>Config</h2><div class='card'><details><summary>config.yaml (secrets removed)</summary>"
        + f"<pre>{_e(config_yaml)}</pre></details></div>"
        + "<footer>SAMI: Self-Supervised Alignment with Mutual Information (Fränken et al., NeurIPS 2024). "
        "MI (paper) = mean over queries of ℓ(y_j|c_j) − mean_k ℓ(y_j|c_k) with summed log-probs; "
        "InfoNCE bound = log C − symmetric InfoNCE loss.</footer></main>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>SAMI run: {_e(summary.get('run', {}).get('name'))}</title><style>{CSS}</style></head>"
        f"<body>{body}<script>{SCRIPT}</script></body></html>\n"
    )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_plots(run_dir: str | os.PathLike, summary: dict) -> dict[str, bytes | None]:
    """PNG bytes of each plot (None where there is nothing to plot yet)."""
    run_dir = Path(run_dir)
    reader = _Reader(run_dir)
    curves = {}
    for t, it_dir in _iterations(run_dir):
        history = _log_history(reader, it_dir / "train") if t > 0 else None
        if history:
            curves[t] = loss_curve(history)
    its = summary["iterations"]
    return {
        "mi": plot_mi(its),
        "win_rate": plot_win_rates(its),
        "length": plot_lengths(its),
        "loss": plot_loss(curves),
        "adherence": plot_adherence(its),
    }


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write `report/summary.json`, `report/summary.md`, `report/*.png` and `report/index.html`; returns index.html."""
    run_dir = Path(run_dir)
    summary = build_summary(run_dir)
    out = run_dir / "report"
    plots = make_plots(run_dir, summary)
    for name, data in plots.items():
        if data is not None:
            _atomic_write_bytes(out / f"{name}.png", data)
        else:  # nothing to plot (any more): no stale picture from an earlier report
            (out / f"{name}.png").unlink(missing_ok=True)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", render_markdown(summary))
    index = out / "index.html"
    atomic_write_text(index, render_html(summary, plots, collect_examples(run_dir)))
    return index
