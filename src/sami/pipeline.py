"""The iterative SAMI driver: a thin loop over resumable stages, recorded in `manifest.json`.

```
constitutions                    load (or write) the principles
iter-0/responses                 the base model's evaluated responses and scores (MI, lengths, contrast check)
iter-0/judgments                 judged against evaluation.baselines (only when there are any)
iter-0/metrics                   metrics.json, from the files above (no model)
for t in 1..T:
    iter-t/samples               self-generate with π_{t-1} on this iteration's query slice
    iter-t/train                 train from π_0 (or π_{t-1}) for steps[t-1] optimizer steps
    iter-t/responses             π_t's evaluated responses and scores (and the baselines' not yet generated)
    iter-t/judgments             π_t against the base model and any other baselines (the judge only)
    iter-t/metrics               metrics.json
    iter-t/<method>/...          comparisons (sami.comparisons.stages)
report
```
Each stage is keyed in the manifest by the hash of the config parts it depends on and of the stages it reads
(`stage_keys`). A stage runs when it never finished, when its hash changed (then it clears what it wrote before
and reruns in place), when its outputs are missing, or when a stage it reads reruns; otherwise it is skipped. So
changing only `evaluation.judge` reruns judgments, metrics and the report, and keeps samples, checkpoints and
responses. `plan_stages` says what a run would do without doing it (`sami run --dry-run`).

A stage that was interrupted resumes: generation and evaluation skip ids already written, training continues from
the last resume checkpoint in `train.partial/` (every `training.save_steps` optimizer steps) and renames the folder
when done.
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
from sami.comparisons.stages import comparison_methods
from sami.config import RunConfig, config_to_yaml
from sami.constitutions import ConstitutionSet, load_constitutions
from sami.data import Query, iteration_slice, load_queries
from sami.errors import SamiInputError
from sami.ifeval import stage as benchmark_stage
from sami.io import atomic_write_text, count_failed
from sami.layout import EvalLayout, RunLayout
from sami.manifest import Manifest, StageKey, StageStatus
from sami.report import summary_table
from sami.run_inputs import input_groups
from sami.stage_settings import evaluation_baselines, evaluation_settings, training_arguments

log = logging.getLogger(__name__)


def _dump(config: RunConfig, **kwargs) -> dict:
    """`config.model_dump(mode="json")` without the query sources' `transform` and `revision` where unset, so runs
    written before those fields existed keep their hashes."""
    data = config.model_dump(mode="json", **kwargs)
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
    data = _dump(config, exclude=exclude)
    if data.get("comparisons") is None:
        data.pop("comparisons", None)  # runs without comparisons keep the hash they had before the section existed
    elif data["comparisons"].get("sft") is None:
        data["comparisons"].pop("sft", None)  # and DPO-only runs the hash they had before comparisons.sft existed
    benchmark_stage.drop_defaults(data)  # likewise runs without evaluation.benchmarks
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]


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


# Evaluation fields that do not change the evaluated responses: the judge (its own stage), whether a foreign judge's
# file is judged again (the pipeline always does) and how often files are written.
NOT_IN_RESPONSES = ("judge", "rejudge", "chunk_size", *benchmark_stage.BENCHMARK_FIELDS)
# Generation fields that say how a server is started, not what it generates: out of every hash.
NOT_IN_SAMPLES = ("server", "server_port", "server_timeout")


def stage_keys(config: RunConfig, *, contents: bool = True) -> dict[str, StageKey]:
    """Every stage of a run, in run order, keyed by the config parts it depends on, the contents of the files it
    reads (`sami.run_inputs`; `contents=False`: the keys of manifest version 2, without them) and the stages it
    reads."""
    c = _dump(config)
    files = input_groups(config) if contents else {}

    def read(*groups: str) -> dict[str, str]:
        return {k: v for g in groups for k, v in files.get(g, {}).items()}

    model, data, ev, iters = c["model"], c["data"], c["evaluation"], c["iterations"]
    policy = {f"model.{k}": model[k] for k in ("policy", "dtype", "trust_remote_code")}  # π_0 (LoRA: training's)
    sampling = {
        **policy,
        "sampling": c["sampling"],
        "prompts": c["prompts"],
        "filters": c["filters"],
        "data.train": {k: data[k] for k in ("train", "train_per_iteration", "n_slices")},
        "generation": {k: v for k, v in c["generation"].items() if k not in NOT_IN_SAMPLES},
        "seed": c["seed"],
        **read("policy", "train_data"),
    }
    training = {k: v for k, v in c["training"].items() if k != "save_steps"}
    responses = {
        **policy,
        "prompts": c["prompts"],
        "sampling.scheme": c["sampling"]["scheme"],
        "sampling.n_constitutions": c["sampling"]["n_constitutions"],
        "data.eval": {k: data[k] for k in ("eval", "eval_limit")},
        "evaluation": {k: v for k, v in ev.items() if k not in NOT_IN_RESPONSES},
        **read("policy", "eval_data", "baselines"),
    }
    keys: dict[str, StageKey] = {}

    def add(name: str, parts: dict, upstream: list[str]) -> None:
        keys[name] = StageKey.of(parts, {u: keys[u] for u in upstream})

    def evaluation(prefix: str, t: int, reads: list[str], *, judged: bool) -> None:
        add(f"{prefix}/responses", {**responses, "iteration": t}, ["constitutions", *reads])
        last = f"{prefix}/responses"
        if judged:
            add(f"{prefix}/judgments", {"evaluation.judge": ev["judge"], **read("judge")}, [last])
            last = f"{prefix}/judgments"
        add(f"{prefix}/metrics", {}, [last])
        bench = benchmark_stage.stage_parts(ev)
        if bench is not None and prefix == f"iter-{t}":  # IFEval of π_t (`evaluation.benchmarks`)
            add(f"{prefix}/benchmarks", {**policy, **bench, "iteration": t}, reads)

    add(
        "constitutions",
        {k: c[k] for k in ("constitutions", "writer", "seed")}
        | {"prompts.task": c["prompts"]["task"]}
        | read("constitutions"),
        [],
    )
    evaluation("iter-0", 0, [], judged=bool(config.evaluation.baselines))
    methods = {m: c["comparisons"][m] for m in comparison_methods(config)}
    for t in range(1, config.iterations.count + 1):
        add(
            f"iter-{t}/samples",
            {**sampling, "iteration": t},
            ["constitutions"] + ([f"iter-{t - 1}/train"] if t > 1 else []),
        )
        trained = {"training": training, "model.lora": model["lora"], "iterations.steps": iters["steps"][t - 1]}
        trained |= read("policy")
        trained["iterations.train_from"] = iters["train_from"]
        add(f"iter-{t}/train", trained, [f"iter-{t}/samples"])
        evaluation(f"iter-{t}", t, [f"iter-{t}/train", "iter-0/responses"], judged=True)
        for method, settings in methods.items():
            add(f"iter-{t}/{method}/train", {**trained, f"comparisons.{method}": settings}, [f"iter-{t}/samples"])
            reads = [f"iter-{t}/{method}/train", f"iter-{t}/responses", "iter-0/responses"]
            evaluation(f"iter-{t}/{method}", t, reads, judged=True)
    add("report", {"config": config_hash(config)}, list(keys))
    return keys


def plan_stages(config: RunConfig, run_dir: Path) -> dict[str, StageStatus]:
    """What `sami run` would do in `run_dir` (stage name -> run or skip, and why), reading only: nothing is
    written. Raises `SamiInputError` where the run would (an old manifest of another config)."""
    return Manifest(
        Path(run_dir), config_hash(config), stage_keys(config), write=False, legacy_keys=legacy(config)
    ).plan


def legacy(config: RunConfig) -> dict[str, StageKey]:
    """The stage keys manifests of version 2 recorded (without input file contents)."""
    return stage_keys(config, contents=False)


class Pipeline:
    """Runs (or resumes) one SAMI experiment described by a `RunConfig` into `run_dir`."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None, *, console: Console | None = None):
        self.config = config
        self.run_dir = Path(run_dir or config.resolved_output_dir())
        self.layout = RunLayout(self.run_dir)
        self.console = console or Console(stderr=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.run_dir, config_hash(config), stage_keys(config), legacy_keys=legacy(config))
        atomic_write_text(self.layout.config, config_to_yaml(config))

    # ---- helpers -------------------------------------------------------------------------------
    def checkpoint(self, t: int) -> str:
        """π_t: the base model for t = 0, else the checkpoint trained in iteration t."""
        return self.layout.policy(t, self.config.model.policy)

    def start_model(self, t: int) -> str:
        """Where training of iteration t starts: π_0 (`iterations.train_from: base`, the paper's) or π_{t-1}."""
        return self.config.model.policy if self.config.iterations.train_from == "base" else self.checkpoint(t - 1)

    def _stage(self, name: str) -> StageStatus | None:
        """The stage's status when `name` has to run (and says so, and records that it started), else None."""
        status = self.manifest.status(name)
        if not status.run:
            self.console.print(f"[dim]✓ {name} (done)[/dim]")
            return None
        self.console.rule(f"[bold]{name}[/bold] [dim]({status.reason})[/dim]")
        self.manifest.start(name, in_place=status.in_place)
        return status

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
        from sami.generation.base import closing
        from sami.generation.server import policy_endpoint
        from sami.sampling import generate_samples, policy_generator

        name = f"iter-{t}/samples"
        status = self._stage(name)
        if not status:
            return
        out = self.layout.samples(t)
        if status.in_place:  # samples of another config: generation would resume from them
            for old in out.parent.glob(f"{out.stem}.*"):
                if old.is_file():
                    old.unlink()
        # Data-parallel generation only for the hf backend; vllm and servers parallelise on their own.
        if self.config.launcher.kind == "accelerate" and self.config.generation.backend == "hf":
            from sami.launch import run_stage

            args = ["stage", "generate", "--run-dir", str(self.run_dir), "--iteration", str(t)]
            run_stage(self.config.launcher, [*args, "--policy", self.checkpoint(t - 1)], what=name)
            stats = json.loads(self.layout.samples_stats(t).read_text(encoding="utf-8"))
        else:
            policy = self.checkpoint(t - 1)
            with policy_endpoint(
                self.config.generation, policy, base_policy=self.config.model.policy, what=name,
                log_path=out.parent / "server.log",
            ) as generation:  # fmt: skip
                config = self.config.model_copy(update={"generation": generation})
                generator, tokenizer = policy_generator(config, policy)
                with closing(generator):  # the vLLM engine is shut down when the stage ends, also on error
                    stats = generate_samples(
                        generator,
                        self.train_queries(t),
                        cset,
                        out,
                        self.config.sampling,
                        template=self.config.prompts.build(),
                        filters=self.config.filters,
                        seed=iteration_seed(self.config, t),
                        tokenizer=tokenizer,
                    )
        if not stats.get("kept"):
            raise SamiInputError(
                f"{name}: every generated example was dropped by the filters "
                f"({stats.get('drop_reasons')}); loosen `filters` or raise sampling.max_new_tokens"
            )
        self.manifest.finish(name, [out, self.layout.samples_stats(t)], kept=stats.get("kept"))

    def train(self, t: int) -> None:
        name = f"iter-{t}/train"
        status = self._stage(name)
        if not status:
            return
        final = self.layout.train(t)
        partial = self.layout.train_partial(t)  # an interrupted attempt's resume checkpoint stays there
        if status.in_place:  # resume checkpoints of another config
            shutil.rmtree(partial, ignore_errors=True)
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

    def base_responses(self) -> dict[str, dict[str, str]]:
        """The base model's evaluated responses (iteration 0), as the baseline "base" of later iterations."""
        from sami.evaluation.evaluate import load_side_responses

        path = self.layout.eval(0).responses
        return {"base": load_side_responses(path, side="model")} if path.is_file() else {}

    def evaluate(self, t: int, cset: ConstitutionSet) -> None:
        """π_t's evaluation: iter-t/responses, iter-t/judgments (against the base model from t = 1, and any other
        baselines) and iter-t/metrics."""
        self.evaluation_stages(
            f"iter-{t}",
            self.layout.eval(t),
            cset,
            model_ref=self.checkpoint(t),
            model_label=f"iter-{t}",
            baselines=evaluation_baselines(self.config, against_base=t > 0),
            contrast=t == 0,
        )
        benchmark_stage.run_benchmarks(self, t)

    def evaluation_stages(
        self,
        prefix: str,
        files: EvalLayout,
        cset: ConstitutionSet,
        *,
        model_ref: str,
        model_label: str,
        baselines: dict,
        contrast: bool,
        prepare=None,
        baseline_evals: dict[str, Path] | None = None,
    ) -> None:
        """The three evaluation stages `PREFIX/responses`, `PREFIX/judgments` (when there are baselines) and
        `PREFIX/metrics` of one model into `files`. `prepare()`, when given, runs before the responses step (after
        an in-place rerun cleared the folder). `baseline_evals`: baseline name -> that model's own evaluation folder
        in this run (its MI and lengths are copied from there; "base" is always iteration 0's)."""
        from sami.evaluation.evaluate import EvaluationInputs, run_evaluation

        config = self.config
        settings = evaluation_settings(config)
        inputs = EvaluationInputs(
            queries=self.eval_queries(),
            cset=cset,
            template=config.prompts.build(),
            model_label=model_label,
            baselines=baselines,
            baseline_responses=self.base_responses() if "base" in baselines else {},
            # the base model's MI and lengths are iteration 0's own: taken from there, not generated again
            baseline_evals={"base": self.layout.eval(0).root, **(baseline_evals or {})},
            trust_remote_code=config.model.trust_remote_code,
            attn_implementation=config.model.attn_implementation,
            contrast=contrast and settings.contrast,
        )
        common = {"console": self.console}
        name = f"{prefix}/responses"
        status = self._stage(name)
        if status:
            if status.in_place:  # responses of another config (and the judgments and metrics made from them)
                shutil.rmtree(files.root, ignore_errors=True)
            files.root.mkdir(parents=True, exist_ok=True)
            if prepare is not None:
                prepare()
            run_evaluation(settings, model_ref, files.root, inputs, steps=("responses",), **common)
            written = [files.responses, files.mi_responses, files.antithesis_responses, files.contrast_responses]
            written.append(files.scores)
            self.manifest.finish(name, [p for p in written if p.exists()])
        if baselines and self._stage(f"{prefix}/judgments"):
            # rejudge: a judgments file of another judge is moved aside and judged again, never mixed
            run_evaluation(settings, model_ref, files.root, inputs, steps=("judgments",), rejudge=True, **common)
            judged = [files.judgments(b) for b in baselines]
            failed = count_failed(p for p in judged if p.exists())
            if failed:
                self.console.print(f"[red]{prefix}/judgments: {failed} judge requests failed; rerun to retry[/red]")
            self.manifest.finish(f"{prefix}/judgments", [p for p in judged if p.exists()], failures=failed)
        if self._stage(f"{prefix}/metrics"):
            run_evaluation(settings, model_ref, files.root, inputs, steps=("metrics",), **common)
            self.manifest.finish(f"{prefix}/metrics", [files.metrics])

    def report(self) -> dict:
        """Write the report; returns the summary it wrote (or, when nothing changed, the one written before)."""
        from sami.report import write_report

        if not self._stage("report"):
            return json.loads((self.layout.report / "summary.json").read_text(encoding="utf-8"))
        summary = write_report(self.run_dir, incomplete=self.manifest.incomplete())
        self.manifest.finish("report", [self.layout.report / "summary.json"])
        return summary

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self) -> Path:
        from sami.models import check_attention

        # FlexAttention trains only on an accelerator: stop before iteration 0, not at the first training stage
        check_attention(self.config.model.attn_implementation, backward=True)
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
