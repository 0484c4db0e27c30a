"""The work of the core stages of a run, as `Stage` records: constitutions, self-generation, training, the run's
baselines (once per run), the three evaluation stages of one model, and the report.

Each record's functions read everything from the run folder and its config (`StageContext`), so the same record
runs in `sami run`'s process, in a child `sami stage NAME` or under `accelerate launch`. Two patterns are written
once here and reused by the comparisons (`sami.comparisons.stages`): a checkpoint trained in `X.partial/` and renamed
to `X/` when done (`checkpoint_stage`), and a model's evaluation (`evaluation_stages`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sami import trainer  # trainer.train_sami, looked up at call time (tests patch it)
from sami.constitutions import ConstitutionSet, load_constitutions
from sami.data import Query, iteration_slice, load_queries
from sami.distributed import generate_samples_distributed
from sami.errors import SamiInputError
from sami.evaluation.baselines import load_side_responses
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_baseline, run_evaluation
from sami.evaluation.parallel import on_main_process
from sami.evaluation.settings import BaselineSettings
from sami.generation.base import closing
from sami.generation.factory import policy_generator
from sami.generation.server import policy_endpoint
from sami.io import count_failed
from sami.layout import EvalLayout, RunLayout
from sami.principle_writer import write_constitutions_from_settings
from sami.report import write_report
from sami.run_config import RunConfig
from sami.sampling import generate_samples
from sami.stage import Stage, StageContext, Where
from sami.stage_parts import StageParts
from sami.stage_settings import evaluation_baselines, evaluation_settings, training_arguments


# ---- what several stages read ------------------------------------------------------------------
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


def eval_queries(config: RunConfig) -> list[Query]:
    """The evaluation queries: the first `data.eval_limit` of each evaluation source."""
    return [q for src in config.data.eval for q in load_queries(src)[: config.data.eval_limit]]


def start_model(config: RunConfig, layout: RunLayout, t: int) -> str:
    """Where training of iteration t starts: π_0 (`iterations.train_from: base`, the paper's) or π_{t-1}."""
    return config.model.policy if config.iterations.train_from == "base" else layout.policy(t - 1, config.model.policy)


def train_from_config(
    config: RunConfig, *, model_ref: str, samples_path: Path, output_dir: Path, max_steps: int
) -> Path:
    """Train one iteration's checkpoint as the run config says (in this process), resuming from the newest
    checkpoint in `output_dir` if an earlier attempt left one. TensorBoard logs, when `training.report_to` names
    it, land in the checkpoint folder's `runs/`."""
    args = training_arguments(config, output_dir=output_dir, max_steps=max_steps)
    return trainer.train_sami(model_ref, samples_path, output_dir, args, lora=config.model.lora, resume=True)


# ---- constitutions -----------------------------------------------------------------------------
def constitutions_stage(parts: StageParts, config: RunConfig) -> Stage:
    """Load the principles (or write them with `writer`'s model: then in a process of its own)."""

    def run(ctx: StageContext) -> None:
        c = ctx.config
        if c.writer is not None:
            cset = write_constitutions_from_settings(c.writer, seed=c.seed, task_type=c.prompts.task)
        else:
            cset = load_constitutions(c.constitutions)
        cset.save(ctx.layout.constitutions)

    where: Where = "driver" if config.writer is None else "process"
    return Stage("constitutions", parts.constitutions(), (), run, lambda ctx: [ctx.layout.constitutions], where)


# ---- self-generation ---------------------------------------------------------------------------
def samples_stage(parts: StageParts, config: RunConfig, t: int, upstream: tuple[str, ...]) -> Stage:
    """iter-t/samples: π_{t-1} writes this iteration's samples (data parallel under accelerate with the hf
    backend; vllm and servers parallelise on their own). `upstream`: the constitutions and π_{t-1}'s training."""
    name = f"iter-{t}/samples"
    distributed = config.launcher.kind == "accelerate" and config.generation.backend == "hf"

    def clear(ctx: StageContext) -> None:  # samples of another config: generation would resume from them
        out = ctx.layout.samples(t)
        for old in out.parent.glob(f"{out.stem}.*"):
            if old.is_file():
                old.unlink()

    def run(ctx: StageContext) -> None:
        c, layout = ctx.config, ctx.layout
        policy = ctx.options.get("policy") or layout.policy(t - 1, c.model.policy)
        cset = ConstitutionSet.load(layout.constitutions)
        out = layout.samples(t)
        if distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1:  # also a hand-started launch
            generate_samples_distributed(
                c, policy=policy, queries=train_queries(c, t), cset=cset, out_path=out,
                seed=iteration_seed(c, t), progress=not ctx.options.get("no_progress"),
            )  # fmt: skip
            return
        with policy_endpoint(
            c.generation, policy, base_policy=c.model.policy, what=name, log_path=out.parent / "server.log"
        ) as generation:
            config_here = c.model_copy(update={"generation": generation})
            generator, tokenizer = policy_generator(config_here, policy)
            with closing(generator):  # the vLLM engine is shut down when the stage ends, also on error
                generate_samples(
                    generator, train_queries(c, t), cset, out, c.sampling, template=c.prompts.build(),
                    filters=c.filters, seed=iteration_seed(c, t), tokenizer=tokenizer,
                )  # fmt: skip

    def after(ctx: StageContext) -> dict:
        stats = json.loads(ctx.layout.samples_stats(t).read_text(encoding="utf-8"))
        if not stats.get("kept"):
            raise SamiInputError(
                f"{name}: every generated example was dropped by the filters "
                f"({stats.get('drop_reasons')}); loosen `filters` or raise sampling.max_new_tokens"
            )
        return {"kept": stats.get("kept")}

    return Stage(
        name, parts.samples(t), upstream, run,
        lambda ctx: [ctx.layout.samples(t), ctx.layout.samples_stats(t)],
        "accelerate" if distributed else "process", clear, after,
    )  # fmt: skip


# ---- training ----------------------------------------------------------------------------------
def checkpoint_stage(
    name: str,
    parts: dict,
    upstream: tuple[str, ...],
    *,
    final: Callable[[RunLayout], Path],
    partial: Callable[[RunLayout], Path],
    train: Callable[[StageContext, Path], object],
    where: Where,
) -> Stage:
    """A stage that trains a checkpoint in `partial` (keeping its resume checkpoints there if interrupted) and,
    when done, renames it to `final`."""

    def clear(ctx: StageContext) -> None:  # resume checkpoints of another config
        shutil.rmtree(partial(ctx.layout), ignore_errors=True)

    def run(ctx: StageContext) -> None:
        out = ctx.options.get("output_dir")
        train(ctx, Path(out) if out else partial(ctx.layout))

    def after(ctx: StageContext) -> None:
        shutil.rmtree(final(ctx.layout), ignore_errors=True)
        partial(ctx.layout).rename(final(ctx.layout))

    return Stage(name, parts, upstream, run, lambda ctx: [final(ctx.layout)], where, clear, after)


def train_stage(parts: StageParts, config: RunConfig, t: int, samples: str) -> Stage:
    """iter-t/train: the SAMI objective from `start_model` for `iterations.steps[t-1]` optimizer steps, on the
    stage `samples`."""

    def train(ctx: StageContext, output_dir: Path) -> None:
        c, o = ctx.config, ctx.options
        train_from_config(
            c, model_ref=o.get("model") or start_model(c, ctx.layout, t), samples_path=ctx.layout.samples(t),
            output_dir=output_dir, max_steps=o.get("max_steps") or c.iterations.steps[t - 1],
        )  # fmt: skip

    where: Where = "accelerate" if config.launcher.kind == "accelerate" else "process"
    return checkpoint_stage(
        f"iter-{t}/train", parts.train(t), (samples,),
        final=lambda layout: layout.train(t), partial=lambda layout: layout.train_partial(t), train=train,
        where=where,
    )  # fmt: skip


# ---- baselines ---------------------------------------------------------------------------------
def baseline_stage_name(name: str) -> str:
    return f"baselines/{name}"


def shared_baselines(config: RunConfig, t: int) -> list[str]:
    """The baselines of `evaluation.baselines` that iteration t's evaluations read from their own stages (all but a
    'base' from t = 1, where 'base' is π_0's responses of iteration 0)."""
    return [name for name in config.evaluation.baselines if not (t > 0 and name == "base")]


def _inputs(config: RunConfig, layout: RunLayout, **kwargs) -> EvaluationInputs:
    """The run's evaluation queries, constitutions and prompts (and `kwargs`)."""
    return EvaluationInputs(
        queries=eval_queries(config),
        cset=ConstitutionSet.load(layout.constitutions),
        template=config.prompts.build(),
        trust_remote_code=config.model.trust_remote_code,
        attn_implementation=config.model.attn_implementation,
        **kwargs,
    )


def baseline_stage(parts: StageParts, name: str, upstream: tuple[str, ...]) -> Stage:
    """baselines/NAME: baseline NAME's responses under each query's positive constitution, and its MI responses and
    scores, written once per run into `baselines/NAME/`; every evaluation's judgments and metrics read them there.
    `upstream`: the constitutions."""

    def clear(ctx: StageContext) -> None:  # another config's responses of this baseline
        shutil.rmtree(ctx.layout.baseline(name).root, ignore_errors=True)

    def run(ctx: StageContext) -> None:
        c, layout = ctx.config, ctx.layout
        spec = evaluation_baselines(c, against_base=False)[name]
        run_baseline(
            evaluation_settings(c), name, spec, layout.baseline(name).root, _inputs(c, layout), console=ctx.console
        )

    def written(ctx: StageContext) -> list[Path]:
        f = ctx.layout.baseline(name)
        return [p for p in (f.responses, f.baseline_mi_responses(name), f.scores) if p.exists()]

    return Stage(baseline_stage_name(name), parts.baseline(name), upstream, run, written, "process", clear)


# ---- evaluation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalTarget:
    """The model one set of evaluation stages evaluates, as functions of the run (so a child process rebuilds it
    from the run folder). `extra_baselines`: more baselines than the run's (e.g. π_T for a comparison);
    `prepare`: runs before its responses are generated; `baseline_evals`: baseline name -> that model's own
    evaluation folder in this run (its MI and lengths are copied from there; "base" is always iteration 0's);
    `reads`: the stages its responses read (the constitutions, the model's training, ...)."""

    prefix: str
    t: int
    label: str
    files: Callable[[RunLayout], EvalLayout]
    model: Callable[[StageContext], str]
    contrast: bool = False
    extra_baselines: Callable[[StageContext], dict[str, BaselineSettings]] = lambda ctx: {}
    prepare: Callable[[StageContext], None] | None = None
    baseline_evals: Callable[[RunLayout], dict[str, Path]] = lambda layout: {}
    reads: tuple[str, ...] = field(default_factory=tuple)


def _baselines(ctx: StageContext, target: EvalTarget) -> dict[str, BaselineSettings]:
    return {**evaluation_baselines(ctx.config, against_base=target.t > 0), **target.extra_baselines(ctx)}


def _run(ctx: StageContext, target: EvalTarget, step: str, **kwargs) -> None:
    """One step of `run_evaluation` for `target`, with the run's inputs."""
    c, layout = ctx.config, ctx.layout
    settings = evaluation_settings(c)
    baselines = _baselines(ctx, target)
    base = layout.eval(0).responses
    inputs = _inputs(
        c,
        layout,
        model_label=target.label,
        baselines=baselines,
        baseline_responses={"base": load_side_responses(base, side="model")}
        if "base" in baselines and base.is_file()
        else {},
        baseline_evals={"base": layout.eval(0).root, **target.baseline_evals(layout)},
        # the run's baselines are written once, by their own stages: read there, never generated again
        baseline_dirs={n: layout.baseline(n).root for n in shared_baselines(c, target.t)},
        contrast=target.contrast and settings.contrast,
        base_model=c.model.policy,  # a server backend serves π₀ as configured; another model must be listed
    )
    run_evaluation(
        settings, target.model(ctx), target.files(layout).root, inputs, steps=(step,), console=ctx.console, **kwargs
    )


def evaluation_stages(parts: StageParts, config: RunConfig, target: EvalTarget, *, judged: bool) -> list[Stage]:
    """PREFIX/responses, PREFIX/judgments (when `judged`: there are baselines) and PREFIX/metrics of one model."""
    prefix, t = target.prefix, target.t

    def clear(ctx: StageContext) -> None:  # responses of another config (and the judgments and metrics made of them)
        shutil.rmtree(target.files(ctx.layout).root, ignore_errors=True)

    def responses(ctx: StageContext) -> None:
        target.files(ctx.layout).root.mkdir(parents=True, exist_ok=True)
        if target.prepare is not None:
            on_main_process(target.prepare, ctx)  # under accelerate: rank 0 writes, the others wait
        _run(ctx, target, "responses")

    def written(ctx: StageContext) -> list[Path]:
        f = target.files(ctx.layout)
        paths = [f.responses, f.mi_responses, f.antithesis_responses, f.contrast_responses, f.scores]
        return [p for p in paths if p.exists()]

    def judged_files(ctx: StageContext) -> list[Path]:
        f = target.files(ctx.layout)
        return [p for p in (f.judgments(b) for b in _baselines(ctx, target)) if p.exists()]

    def counted(ctx: StageContext) -> dict:
        failed = count_failed(judged_files(ctx))
        if failed:
            ctx.console.print(f"[red]{prefix}/judgments: {failed} judge requests failed; rerun to retry[/red]")
        return {"failures": failed}

    # rejudge: a judgments file of another judge is moved aside and judged again, never mixed
    def judge(ctx):
        return _run(ctx, target, "judgments", rejudge=True)

    judge_where: Where = "process" if config.evaluation.judge.kind == "local" else "driver"
    engine = evaluation_settings(config).generation  # `run` resolved to the run's generation section
    # data parallel over the launch's processes with hf only: vLLM and servers parallelise on their own
    parallel = config.launcher.kind == "accelerate" and (engine is None or engine.backend == "hf")
    stages = [
        Stage(f"{prefix}/responses", parts.responses(t), target.reads, responses, written,
              "accelerate" if parallel else "process", clear),
    ]  # fmt: skip
    if judged:
        reads = (f"{prefix}/responses", *map(baseline_stage_name, shared_baselines(config, t)))
        stages.append(
            Stage(f"{prefix}/judgments", parts.judgments(), reads, judge, judged_files, judge_where, after=counted)
        )
    last = stages[-1].name
    stages.append(
        Stage(f"{prefix}/metrics", {}, (last,), lambda ctx: _run(ctx, target, "metrics"),
              lambda ctx: [target.files(ctx.layout).metrics])
    )  # fmt: skip
    return stages


def policy_target(config: RunConfig, t: int, reads: tuple[str, ...]) -> EvalTarget:
    """π_t's evaluation (against the base model from t = 1, and any other baselines); iteration 0 also runs the
    contrast check."""
    return EvalTarget(
        prefix=f"iter-{t}", t=t, label=f"iter-{t}", files=lambda layout: layout.eval(t),
        model=lambda ctx: ctx.layout.policy(t, ctx.config.model.policy), contrast=t == 0, reads=reads,
    )  # fmt: skip


# ---- report ------------------------------------------------------------------------------------
def report_stage(config_hash: str, upstream: tuple[str, ...]) -> Stage:
    """The report of every stage above: summary.json, summary.md, the plots and index.html."""

    def run(ctx: StageContext) -> None:
        write_report(ctx.run_dir, incomplete=ctx.manifest.incomplete() if ctx.manifest is not None else None)

    return Stage("report", {"config": config_hash}, upstream, run, lambda ctx: [ctx.layout.report / "summary.json"])
