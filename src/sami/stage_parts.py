"""The config parts each stage's hash reads (`sami.manifest.StageKey`), from one dump of the run config.

A stage reruns when one of its parts changes, so these dicts decide what a changed setting reruns: the judge only
judgments and what reads them; a sampling knob the samples and everything below. The shapes here are pinned for the
shipped configs by `tests/test_stage_key_pins.py`: a change that moves them reruns every finished run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sami.hash_compat import legacy_shape
from sami.ifeval.stage import BENCHMARK_FIELDS, drop_defaults
from sami.run_config import RunConfig
from sami.run_inputs import input_groups

# Evaluation fields that do not change the evaluated responses: the judge (its own stage), whether a foreign judge's
# file is judged again (the pipeline always does), how often files are written and how the model is placed.
NOT_IN_RESPONSES = ("judge", "rejudge", "chunk_size", "device_map", *BENCHMARK_FIELDS)
# Evaluation fields that do not change a baseline's responses or scores (besides those above): the evaluated model's
# own checks and engine (a baseline generates as its entry says), and the baselines (each stage hashes its own entry).
NOT_IN_BASELINE = (*NOT_IN_RESPONSES, "baselines", "adherence", "contrast", "contrast_limit", "generation")
# Generation fields that say how a server is started, not what it generates: out of every hash.
NOT_IN_SAMPLES = ("server", "server_port", "server_timeout")
# Generation fields the evaluation does not read (it passes greedy decoding and its own budget with every call).
NOT_IN_EVAL_ENGINE = ("max_new_tokens", "temperature", "top_p", "seed", *NOT_IN_SAMPLES)


def dump_config(config: RunConfig, **kwargs: Any) -> dict:
    """`config.model_dump(mode="json")` without the query sources' `transform` and `revision` where unset, and the
    generation/judge/writer sections in their flat legacy shape (`sami.hash_compat`), so runs written before those
    changes keep their hashes."""
    data = legacy_shape(config.model_dump(mode="json", **kwargs), exclude=kwargs.get("exclude"))
    for section in ("train", "eval"):
        for source in data["data"][section]:
            for key in ("transform", "revision"):
                if source.get(key) is None:
                    source.pop(key, None)
    return data


def config_hash(config: RunConfig) -> str:
    """Hash of everything that changes results (not where the run is written, how it is launched, nor how often
    training checkpoints for resume)."""
    exclude = {"output_dir": True, "launcher": True, "training": {"save_steps"}, "generation": set(NOT_IN_SAMPLES)}
    data = dump_config(config, exclude=exclude)
    if data.get("comparisons") is None:
        data.pop("comparisons", None)  # runs without comparisons keep the hash they had before the section existed
    elif data["comparisons"].get("sft") is None:
        data["comparisons"].pop("sft", None)  # and DPO-only runs the hash they had before comparisons.sft existed
    drop_defaults(data)  # likewise runs without evaluation.benchmarks
    data["evaluation"].pop("device_map", None)  # where the evaluated model is placed, not what it computes
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageParts:
    """The parts of each kind of stage. `contents=False`: without the input files' contents (the keys of manifest
    version 2)."""

    dumped: dict[str, Any]
    files: dict[str, dict[str, str]]

    @classmethod
    def of(cls, config: RunConfig, *, contents: bool = True) -> StageParts:
        return cls(dump_config(config), input_groups(config) if contents else {})

    def read(self, *groups: str) -> dict[str, str]:
        """The `file:PATH` parts of the input file groups (`sami.run_inputs`)."""
        return {k: v for g in groups for k, v in self.files.get(g, {}).items()}

    @property
    def policy(self) -> dict[str, Any]:
        """π_0 (with LoRA: training's starting model)."""
        model = self.dumped["model"]
        return {f"model.{k}": model[k] for k in ("policy", "dtype", "trust_remote_code")}

    def constitutions(self) -> dict[str, Any]:
        c = self.dumped
        parts = {k: c[k] for k in ("constitutions", "writer", "seed")} | {"prompts.task": c["prompts"]["task"]}
        return parts | self.read("constitutions")

    def samples(self, t: int) -> dict[str, Any]:
        c = self.dumped
        data = c["data"]
        return {
            **self.policy,
            "sampling": c["sampling"],
            "prompts": c["prompts"],
            "filters": c["filters"],
            "data.train": {k: data[k] for k in ("train", "train_per_iteration", "n_slices")},
            "generation": {k: v for k, v in c["generation"].items() if k not in NOT_IN_SAMPLES},
            "seed": c["seed"],
            **self.read("policy", "train_data"),
            "iteration": t,
        }

    def train(self, t: int) -> dict[str, Any]:
        c = self.dumped
        training = {k: v for k, v in c["training"].items() if k != "save_steps"}
        parts = {
            "training": training,
            "model.lora": c["model"]["lora"],
            "iterations.steps": c["iterations"]["steps"][t - 1],
        }
        parts |= self.read("policy")
        parts["iterations.train_from"] = c["iterations"]["train_from"]
        return parts

    def _evaluated(self, excluded: tuple[str, ...]) -> dict[str, Any]:
        """What every evaluated response reads: the prompts, how each query's constitutions are drawn, the
        evaluation queries and the evaluation settings but `excluded`."""
        c = self.dumped
        evaluation = {k: v for k, v in c["evaluation"].items() if k not in excluded}
        if "generation" in evaluation:  # the evaluation's engine (absent at its default: the hf of before)
            engine = c["generation"] if evaluation["generation"] == "run" else evaluation["generation"]
            evaluation["generation"] = {k: v for k, v in engine.items() if k not in NOT_IN_EVAL_ENGINE}
        return {
            "prompts": c["prompts"],
            "sampling.scheme": c["sampling"]["scheme"],
            "sampling.n_constitutions": c["sampling"]["n_constitutions"],
            "data.eval": {k: c["data"][k] for k in ("eval", "eval_limit")},
            "evaluation": evaluation,
        }

    def responses(self, t: int) -> dict[str, Any]:
        """π_t's evaluated responses and scores. The run's baselines are stages of their own (`baseline`): only
        their absence is hashed here (`baselines: {}`, as before they were), so a changed baseline reruns its stage
        and the judgments that read it, never a model's responses."""
        parts = {**self.policy, **self._evaluated(NOT_IN_RESPONSES), **self.read("policy", "eval_data")}
        parts["evaluation"]["baselines"] = {}
        return parts | {"iteration": t}

    def baseline(self, name: str) -> dict[str, Any]:
        """Baseline `name`'s stage: its entry in `evaluation.baselines` (and its model folder's contents), the
        evaluation queries and prompts, the evaluation settings that change its responses or MI, and the dtype and
        remote-code setting it takes from the run's model; not π_0."""
        model = self.dumped["model"]
        return {
            "baseline": name,
            "evaluation.baselines": self.dumped["evaluation"]["baselines"][name],
            "model.dtype": model["dtype"],
            "model.trust_remote_code": model["trust_remote_code"],
            **self._evaluated(NOT_IN_BASELINE),
            **self.read(f"baseline:{name}", "eval_data"),
        }

    def judgments(self) -> dict[str, Any]:
        return {"evaluation.judge": self.dumped["evaluation"]["judge"], **self.read("judge")}

    def benchmarks(self, t: int) -> dict[str, Any] | None:
        """None: no benchmark stage (`evaluation.benchmarks` empty)."""
        ev = self.dumped["evaluation"]
        if not ev.get("benchmarks"):
            return None
        return {**self.policy, **{f"evaluation.{k}": ev.get(k) for k in BENCHMARK_FIELDS}, "iteration": t}

    def comparison(self, t: int, method: str) -> dict[str, Any]:
        return {**self.train(t), f"comparisons.{method}": self.dumped["comparisons"][method]}
