"""The iterative SAMI driver: a thin loop over resumable stages, recorded in `manifest.json`.

```
iter-0/eval                      evaluate the base model (intrinsic metrics; win rates vs other baselines)
for t in 1..T:
    iter-t/samples               self-generate with π_{t-1} on this iteration's query slice
    iter-t/train                 train from π_0 (or π_{t-1}) for steps[t-1] optimizer steps
    iter-t/eval                  evaluate π_t against the base model and any other baselines
report
```
Every stage writes its own files atomically and is skipped on a rerun once the manifest lists it. A stage that
was interrupted resumes: generation and evaluation skip ids already written, training continues from the last
resume checkpoint in `train.partial/` (every `training.save_steps` optimizer steps) and renames the folder when done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

from rich.console import Console

from sami.comparisons import run_comparisons
from sami.config import RunConfig, config_to_yaml
from sami.constitutions import ConstitutionSet, load_constitutions
from sami.data import Query, iteration_slice, load_queries
from sami.errors import SamiInputError
from sami.io import atomic_write_text
from sami.layout import RunLayout
from sami.manifest import Manifest
from sami.report import summary_table

log = logging.getLogger(__name__)


def config_hash(config: RunConfig) -> str:
    """Hash of everything that changes results (not where the run is written, how it is launched, nor how often
    training checkpoints for resume)."""
    data = config.model_dump(mode="json", exclude={"output_dir": True, "launcher": True, "training": {"save_steps"}})
    if data.get("comparisons") is None:
        data.pop("comparisons", None)  # runs without comparisons keep the hash they had before the section existed
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]


def training_arguments(config: RunConfig, *, output_dir: Path, max_steps: int):
    """The `SAMIConfig` (TrainingArguments) of one training stage, from the run config."""
    from sami.trainer import SAMIConfig

    tr = config.training
    fields = tr.model_dump(exclude={"trainer_args"})
    return SAMIConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        seed=config.seed,
        n_constitutions=config.sampling.n_constitutions,
        **fields,
        **tr.trainer_args,
    )


def train_from_config(
    config: RunConfig, *, model_ref: str, samples_path: Path, output_dir: Path, max_steps: int
) -> Path:
    """Train one iteration's checkpoint as the run config says (in this process), resuming from the newest
    checkpoint in `output_dir` if an earlier attempt left one. TensorBoard logs, when `training.report_to` names
    it, land in the checkpoint folder's `runs/`."""
    from sami.trainer import train_sami

    args = training_arguments(config, output_dir=output_dir, max_steps=max_steps)
    return train_sami(model_ref, samples_path, output_dir, args, lora=config.model.lora, resume=True)


def iteration_seed(config: RunConfig, t: int) -> int:
    """The self-generation seed of iteration t: each iteration draws its own constitutions and samples."""
    return config.seed + t


def train_queries(config: RunConfig, t: int) -> list[Query]:
    """Iteration t's slice of each training source (sliced per source, so every source stays represented)."""
    d = config.data
    return [
        q
        for src in d.train
        for q in iteration_slice(load_queries(src), t, n_slices=d.n_slices, size=d.train_per_iteration)
    ]


class Pipeline:
    """Runs (or resumes) one SAMI experiment described by a `RunConfig` into `run_dir`."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None, *, console: Console | None = None):
        self.config = config
        self.run_dir = Path(run_dir or config.resolved_output_dir())
        self.layout = RunLayout(self.run_dir)
        self.console = console or Console(stderr=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.run_dir, config_hash(config))
        atomic_write_text(self.layout.config, config_to_yaml(config))

    # ---- helpers -------------------------------------------------------------------------------
    def checkpoint(self, t: int) -> str:
        """π_t: the base model for t = 0, else the checkpoint trained in iteration t."""
        return self.layout.policy(t, self.config.model.policy)

    def start_model(self, t: int) -> str:
        """Where training of iteration t starts: π_0 (`iterations.train_from: base`, the paper's) or π_{t-1}."""
        return self.config.model.policy if self.config.iterations.train_from == "base" else self.checkpoint(t - 1)

    def _stage(self, name: str) -> bool:
        """True when `name` still has to run (and says so)."""
        if self.manifest.done(name):
            self.console.print(f"[dim]✓ {name} (done)[/dim]")
            return False
        self.console.rule(f"[bold]{name}")
        return True

    # ---- stages ----------------------------------------------------------------------------------
    def constitutions(self) -> ConstitutionSet:
        path = self.layout.constitutions
        if self._stage("constitutions"):
            if self.config.writer is not None:
                from sami.writer import write_constitutions_from_settings

                cset = write_constitutions_from_settings(
                    self.config.writer, seed=self.config.seed, task_type=self.config.prompts.task
                )
            else:
                cset = load_constitutions(self.config.constitutions)
            cset.save(path)
            self.manifest.finish("constitutions", [path])
        return ConstitutionSet.load(path)

    def train_queries(self, t: int) -> list[Query]:
        return train_queries(self.config, t)

    def eval_queries(self) -> list[Query]:
        limit = self.config.data.eval_limit
        return [q for src in self.config.data.eval for q in load_queries(src)[:limit]]

    def generate(self, t: int, cset: ConstitutionSet) -> None:
        from sami.sampling import generate_samples_from_config

        name = f"iter-{t}/samples"
        if not self._stage(name):
            return
        out = self.layout.samples(t)
        # Data-parallel generation only for the hf backend; vllm and servers parallelise on their own.
        if self.config.launcher.kind == "accelerate" and self.config.generation.backend == "hf":
            from sami.launch import run_stage

            args = ["stage", "generate", "--run-dir", str(self.run_dir), "--iteration", str(t)]
            run_stage(self.config.launcher, [*args, "--policy", self.checkpoint(t - 1)], what=name)
            stats = json.loads(self.layout.samples_stats(t).read_text(encoding="utf-8"))
        else:
            stats = generate_samples_from_config(
                self.config,
                policy=self.checkpoint(t - 1),
                queries=self.train_queries(t),
                cset=cset,
                out_path=out,
                seed=iteration_seed(self.config, t),
            )
        if not stats.get("kept"):
            raise SamiInputError(
                f"{name}: every generated example was dropped by the filters "
                f"({stats.get('drop_reasons')}); loosen `filters` or raise sampling.max_new_tokens"
            )
        self.manifest.finish(name, [out, self.layout.samples_stats(t)], kept=stats.get("kept"))

    def train(self, t: int) -> None:
        name = f"iter-{t}/train"
        if not self._stage(name):
            return
        final = self.layout.train(t)
        partial = self.layout.train_partial(t)  # an interrupted attempt's resume checkpoint stays there
        start = self.start_model(t)
        if self.config.launcher.kind == "accelerate":
            from sami.launch import run_stage

            args = ["stage", "train", "--run-dir", str(self.run_dir), "--iteration", str(t), "--model", start]
            args += ["--output-dir", str(partial), "--max-steps", str(self.config.iterations.steps[t - 1])]
            run_stage(self.config.launcher, args, what=name)
        else:
            train_from_config(
                self.config,
                model_ref=start,
                samples_path=self.layout.samples(t),
                output_dir=partial,
                max_steps=self.config.iterations.steps[t - 1],
            )
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        self.manifest.finish(name, [final])

    def evaluate(self, t: int, cset: ConstitutionSet) -> None:
        from sami.evaluation.evaluate import run_evaluation_from_config

        name = f"iter-{t}/eval"
        if not self._stage(name):
            return
        out = self.layout.eval(t).root
        run_evaluation_from_config(
            self.config,
            model_ref=self.checkpoint(t),
            model_label=f"iter-{t}",
            queries=self.eval_queries(),
            cset=cset,
            out_dir=out,
            base_responses=self.layout.eval(0).responses if t > 0 else None,
            contrast=t == 0,
            judge_against_base=t > 0,
        )
        self.manifest.finish(name, [out])

    def report(self) -> dict:
        """Write the report; returns the summary it wrote."""
        from sami.report import write_report

        summary = write_report(self.run_dir)
        self.manifest.finish("report", [self.layout.report / "summary.json"])
        return summary

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> Path:
        random.seed(self.config.seed)
        cset = self.constitutions()
        self.evaluate(0, cset)
        for t in range(1, self.config.iterations.count + 1):
            self.generate(t, cset)
            self.train(t)
            self.evaluate(t, cset)
            run_comparisons(self, t, cset)
        summary = self.report()
        index = self.layout.report / "index.html"
        self.console.print(summary_table(summary))
        self.console.print(f"report: {index}")
        return index
