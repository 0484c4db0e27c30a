"""A run folder read into one summary dict (`report/summary.json`); nothing is recomputed with a model.

Only the files the project writes are read (paths from `sami.layout.RunLayout`):

```
config.yaml, manifest.json, constitutions.json
iter-T/samples.stats.json                 {"kept", "dropped", "drop_reasons", ...} (sami.sampling)
iter-T/train/log_history.json             the Trainer's log history (sami.trainer): "sami/loss", else "loss"
iter-T/eval/metrics.json                  MI, lengths, win rates, adherence, per subset (sami.evaluation)
iter-T/eval/judgments-<baseline>.jsonl    win rates while metrics.json does not hold them yet
iter-T/eval/mi_responses.jsonl            mean lengths while metrics.json is not written yet
iter-T/<method>/train, iter-T/<method>/eval   a comparison model (e.g. DPO), read like iter-T/train and eval
```
A run in progress or cut short is fine: what is missing is listed, an unreadable file becomes a problem line.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from sami.errors import SamiInputError
from sami.evaluation.adherence import with_change
from sami.evaluation.winrate import summarize
from sami.io import read_jsonl
from sami.layout import EvalLayout, RunLayout
from sami.run_files import Lengths, Metrics, SubsetMetrics, read_run_file

SECRET_KEY = re.compile(r"api_?key|secret|passw(or)?d|(^|_)(auth|access|hf|bearer)_?token$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+:[^/@\s]+@")
COMPARISON_METHODS = ("dpo", "sft")


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, bool, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when `path` looks like a run folder (config.yaml, manifest.json or iter-N folders)."""
    layout = RunLayout(Path(path))
    if not layout.root.is_dir():
        return False
    return layout.config.is_file() or layout.manifest.is_file() or bool(layout.iterations())


def scrub_secrets(obj: Any) -> Any:
    """A copy of a config without keys that may hold secrets (api keys, tokens, passwords) or URL credentials."""
    if isinstance(obj, dict):
        return {k: scrub_secrets(v) for k, v in obj.items() if not SECRET_KEY.search(str(k))}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    if isinstance(obj, str):
        return URL_CREDENTIALS.sub("***@", obj)
    return obj if obj is None or isinstance(obj, bool | int | float) else str(obj)  # YAML dates etc. -> text


class Reader:
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

    def log_history(self, train_dir: Path) -> list[dict] | None:
        """`train_dir/log_history.json` (a list of log entries), or None when it is not written yet."""
        data = self.json(train_dir / "log_history.json")
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else None


# ---- pieces of an iteration -----------------------------------------------------------------------------------


def loss_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, loss) pairs of a Trainer log history; "sami/loss" is preferred over "loss" (DPO logs only "loss")."""
    points = []
    for entry in log_history:
        loss, step = number(entry.get("sami/loss", entry.get("loss"))), _int(entry.get("step"))
        if loss is not None and step is not None:
            points.append((step, loss))
    return points


def train_summary(history: list[dict]) -> dict:
    """Steps, first and last loss and the last value of each `sami/*` log key."""
    curve = loss_curve(history)
    last = {k: float(v) for e in history for k, v in e.items() if k.startswith("sami/") and number(v) is not None}
    steps = [s for s in (_int(e.get("step")) for e in history) if s is not None]
    return {
        "steps": max(steps) if steps else None,
        "first_loss": curve[0][1] if curve else None,
        "final_loss": curve[-1][1] if curve else None,
        "final_logs": last,
    }


def sample_counts(stats: dict) -> dict:
    """Kept and dropped examples of a `samples.stats.json` (`sami.sampling.sample_stats`)."""
    return {
        "kept": _int(stats.get("kept")),
        "dropped": _int(stats.get("dropped")),
        "drop_reasons": _dict(stats.get("drop_reasons")),
    }


def lengths(block: BaseModel, name: str) -> dict:
    """The `mean_length` / `mean_length_tokens` block `name` of a metrics block in its full shape ({} when the file
    does not hold it)."""
    if name not in block.model_fields_set:
        return {}
    return (getattr(block, name) or Lengths()).model_dump()


def lengths_from_mi_responses(records: list[dict]) -> tuple[dict, dict]:
    """Mean lengths in characters and in tokens by constitution sign (constitution 0 is the positive one), from
    `mi_responses.jsonl` records; ({}, {}) when there are none."""
    chars: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[float]] = {True: [], False: []}
    for r in records:
        for j, (text, n) in enumerate(zip(r.get("responses") or [], r.get("num_tokens") or [], strict=False)):
            chars[j == 0].append(float(len(str(text))))
            tokens[j == 0].append(float(n))

    def block(values: dict[bool, list[float]]) -> dict:
        if not values[True]:
            return {}
        pos, neg = (sum(v) / len(v) if v else None for v in (values[True], values[False]))
        return {"positive": pos, "negative": neg, "by_constitution": {}, "by_principle": {}}

    return block(chars), block(tokens)


def subset_entry(sub: SubsetMetrics) -> dict:
    """One subset of metrics.json's `subsets` with the summary's keys."""
    return {
        "n_queries": sub.n_queries,
        "mi": sub.mi,
        "mi_sem": sub.mi_sem,
        "mi_bound": sub.mi_bound,
        "mean_length": lengths(sub, "mean_length"),
        "mean_length_tokens": lengths(sub, "mean_length_tokens"),
        "win_rates": dict(sub.win_rates),
        "adherence": sub.adherence,
    }


def read_metrics(reader: Reader, path: Path) -> Metrics | None:
    """An evaluation folder's metrics.json (None when absent; a file that does not fit becomes a problem line
    naming the file and the field)."""
    try:
        return read_run_file(Metrics, path, reader.rel(path))
    except SamiInputError as e:
        reader.problems.append(str(e))
        return None


def evaluation_entry(reader: Reader, ev: EvalLayout, where: str) -> dict:
    """The keys of an iteration read from one evaluation folder (metrics.json, judgments, mi_responses); `where`
    names the folder in `missing` (e.g. "eval", relative to the iteration folder)."""
    read = read_metrics(reader, ev.metrics)
    metrics = read or Metrics()
    entry: dict[str, Any] = {"model": metrics.model, "n_queries": metrics.n_queries}
    for key in ("mi", "mi_sem", "mi_bound", "sami_loss", "accuracy"):
        entry[key] = getattr(metrics, key)
    entry["n_constitutions"] = metrics.n_constitutions if isinstance(metrics.n_constitutions, int) else None
    entry["mi_kind"] = metrics.mi_kind
    entry["n_sign_patterns"] = metrics.n_sign_patterns if isinstance(metrics.n_sign_patterns, int) else None
    entry["mi_sampled"] = metrics.mi_sampled
    notes: list[str] = []
    if "mean_length" in metrics.model_fields_set:
        entry["mean_length"] = lengths(metrics, "mean_length")
        entry["mean_length_tokens"] = lengths(metrics, "mean_length_tokens")
    else:
        entry["mean_length"], entry["mean_length_tokens"] = lengths_from_mi_responses(reader.jsonl(ev.mi_responses))
        if entry["mean_length"]:
            notes.append(f"mean lengths computed from {ev.mi_responses.name}")

    win_rates = dict(metrics.win_rates)
    if ev.root.is_dir():
        for path in ev.judgment_files():
            baseline = path.stem.removeprefix("judgments-")
            records = [] if baseline in win_rates else reader.jsonl(path)
            if not records:
                continue
            try:
                win_rates[baseline] = summarize(records)
            except SamiInputError as e:
                reader.problems.append(f"{reader.rel(path)}: {e}")
                continue
            notes.append(f"win rate vs {baseline} computed from {path.name} (metrics.json does not hold it)")
    entry["win_rates"] = win_rates
    entry["adherence"] = metrics.adherence
    entry["contrast"] = metrics.contrast
    ifeval = reader.json(ev.root / "ifeval" / "results.json") if (ev.root / "ifeval").is_dir() else None
    if isinstance(ifeval, dict):  # `evaluation.benchmarks: [ifeval]`
        entry["benchmarks"] = {"ifeval": ifeval}
    entry["subsets"] = {name: subset_entry(sub) for name, sub in sorted(metrics.subsets.items())}
    entry["missing"] = [] if read is not None and read.model_fields_set else [f"{where}/{ev.metrics.name}"]
    entry["notes"] = notes
    return entry


def comparison_entry(reader: Reader, layout: RunLayout, t: int, method: str) -> dict:
    """A comparison model of iteration t (e.g. DPO): its evaluation, its training and `vs_sami`, the head-to-head
    win rate against π_t (taken out of `win_rates`)."""
    entry = evaluation_entry(reader, layout.comparison_eval(t, method), f"{method}/eval")
    history = reader.log_history(layout.comparison_train(t, method))
    entry["train"] = train_summary(history) if history is not None else None
    if history is None:
        entry["missing"].append(f"{method}/train/log_history.json")
    entry["vs_sami"] = entry["win_rates"].pop("sami", None)
    for sub in entry["subsets"].values():
        sub["win_rates"].pop("sami", None)
    return {"iteration": t, **entry}


def iteration_entry(reader: Reader, layout: RunLayout, t: int) -> dict:
    """Everything known about iteration t: samples and training (t > 0), evaluation, comparisons."""
    entry: dict[str, Any] = {"iteration": t}
    missing: list[str] = []
    if t > 0:
        stats = reader.json(layout.samples_stats(t))
        entry["samples"] = sample_counts(stats) if isinstance(stats, dict) else None
        if stats is None:
            missing.append(layout.samples_stats(t).name)
        history = reader.log_history(layout.train(t))
        entry["train"] = train_summary(history) if history is not None else None
        if history is None:
            missing.append("train/log_history.json")
    ev = evaluation_entry(reader, layout.eval(t), "eval")
    missing += ev.pop("missing")
    entry.update(ev)
    entry["missing"], entry["notes"] = missing, entry.pop("notes")  # keep the old key order: missing, notes
    comparisons = {
        method: comparison_entry(reader, layout, t, method)
        for method in COMPARISON_METHODS
        if any(
            p.exists()
            for p in (
                layout.comparison_train(t, method),
                layout.comparison_train_partial(t, method),
                layout.comparison_eval(t, method).root,
            )
        )
    }
    if comparisons:
        entry["comparisons"] = comparisons
    return entry


def add_adherence_change(entry: dict, first: dict | None) -> None:
    """Adherence of `entry` (pooled and per subset) with its change from `first` (iteration 0's entry)."""
    first = first or {}
    entry["adherence"] = with_change(entry["adherence"], first.get("adherence"))
    for name, sub in entry["subsets"].items():
        base = (first.get("subsets") or {}).get(name) or {}
        sub["adherence"] = with_change(sub["adherence"], base.get("adherence"))


# ---- the run ---------------------------------------------------------------------------------------------------


def _when(manifest: dict) -> dict:
    started = manifest.get("created_at")
    finished = [s.get("finished_at") for s in _dict(manifest.get("stages")).values() if isinstance(s, dict)]
    finished = [x for x in finished if isinstance(x, str)]
    return {"started": started if isinstance(started, str) else None, "finished": max(finished, default=None)}


def run_info(reader: Reader, layout: RunLayout, config: dict, manifest: dict, iterations: list[dict]) -> dict:
    """Name, model, principles and progress of the run."""
    model = _dict(config.get("model")).get("policy")
    if not isinstance(model, str):
        model = next((it["model"] for it in iterations if it["iteration"] == 0 and it.get("model")), None)
    cset = _dict(reader.json(layout.constitutions))
    principles = [
        {k: str(p.get(k, "")) for k in ("name", "principle", "antithesis")}
        for p in cset.get("principles") or []
        if isinstance(p, dict)
    ]
    sampling, iters = _dict(config.get("sampling")), _dict(config.get("iterations"))
    stages = manifest.get("stages")
    return {
        "name": str(config.get("name") or layout.root.resolve().name),
        "model": model,
        "constitutions": {
            "source": config.get("constitutions") if isinstance(config.get("constitutions"), str) else None,
            "task": cset.get("task"),
            "writer": cset.get("writer"),
            "principles": principles,
            "train_principles": cset.get("train_principles"),
            "heldout_principles": cset.get("heldout_principles"),
            "scheme": sampling.get("scheme"),
            "n_constitutions": sampling.get("n_constitutions"),
        },
        "planned_iterations": _int(iters.get("count")),
        "steps": iters.get("steps") if isinstance(iters.get("steps"), list) else None,
        "stages_done": sorted(stages) if isinstance(stages, dict) else None,
        **_when(manifest),
    }


def build_summary(run_dir: str | os.PathLike) -> dict:
    """The metrics of a run folder, per iteration, plus its config (without secrets) and what is missing.

    Shape: `{"run": {...}, "iterations": [{"iteration", "mi", "mi_bound", "mi_kind", "mean_length" (in
    `length_unit`), "mean_length_tokens" (when `mean_length` is in characters), "win_rates", "adherence",
    "contrast", "subsets": {name: {...}}, "samples", "train", "comparisons": {"dpo" / "sft": {... , "vs_sami"}} (when
    iter-T/dpo/ or iter-T/sft/ exists), "missing", "notes"}], "length_unit": "characters" | "tokens", "config": {...},
    "problems": [...]}`. A metric that does not exist yet is `null`. `adherence` (when principles carry checks)
    is `sami.evaluation.adherence.adherence` with `change_positive` / `change_antithesis` from iteration 0.
    """
    layout = RunLayout(Path(run_dir))
    if not layout.root.exists():
        raise SamiInputError(f"{layout.root}: no such folder")
    if not is_run_dir(layout.root):
        raise SamiInputError(f"{layout.root}: not a run folder (no config.yaml, manifest.json or iter-N folders)")
    reader = Reader(layout.root)
    config = reader.yaml(layout.config)
    if config is None and not layout.config.is_file():
        reader.problems.append("config.yaml: missing")
    config = scrub_secrets(config) if isinstance(config, dict) else {}
    manifest = _dict(reader.json(layout.manifest))
    iterations = [iteration_entry(reader, layout, t) for t, _ in layout.iterations()]
    first = next((it for it in iterations if it["iteration"] == 0), None)
    for it in iterations:
        for entry in (it, *it.get("comparisons", {}).values()):
            add_adherence_change(entry, first)
    planned = _int(_dict(config.get("iterations")).get("count"))
    if planned is not None:
        absent = [t for t in range(planned + 1) if t not in {it["iteration"] for it in iterations}]
        if absent:
            reader.problems.append(f"iterations not started yet: {', '.join(map(str, absent))} (of 0..{planned})")
    return {
        "run": run_info(reader, layout, config, manifest, iterations),
        "iterations": iterations,
        "length_unit": length_unit(iterations),
        "config": config,
        "problems": reader.problems,
    }


def length_unit(iterations: list[dict]) -> str:
    """The unit of the iterations' `mean_length`: "characters" where the lengths come with tokens beside
    (`mean_length_tokens`), else "tokens" (what the evaluation's metrics.json measures today)."""
    return "characters" if any(it.get("mean_length_tokens") for it in iterations) else "tokens"
