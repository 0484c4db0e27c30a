"""`plan_run(config, settings)`: the memory per device and time of every stage of a run, before anything runs.

The stages are those `sami.pipeline` runs today: self-generation (the `generation` backend), training (under the
`launcher`), the run's baselines (`baselines/NAME` of the stage table, once per run), evaluation (responses and MI
scores in one process, on one device, with the `hf` engine) and judging (a local judge model, an API, or rules).
The formulas are in `sami.plan`; this module reads a run config into their inputs, checks each stage against the
stated devices and says what to change when one does not fit.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sami.constitutions import load_constitutions, sample_constitutions
from sami.data import load_queries
from sami.errors import SamiInputError
from sami.launch import accelerate_config_path
from sami.model_shapes import ModelShape, model_shape
from sami.plan import (
    GB,
    Devices,
    Memory,
    PlanSettings,
    TrainSetup,
    decode_step_seconds,
    dtype_bytes,
    forward_seconds,
    generation_memory,
    parse_devices,
    scoring_memory,
    training_flops,
    training_memory,
)
from sami.run_config import RunConfig
from sami.stage_runs import baseline_stage_name
from sami.stage_settings import evaluation_baselines, evaluation_settings
from sami.stages import stage_table

DEFAULT_PROMPT_TOKENS = {"dialogue": 200, "summarization": 450}


@dataclass
class StagePlan:
    name: str
    where: str
    memory: Memory | None  # None: runs elsewhere (a server, an API) or needs no model
    seconds: list[float | None] = field(default_factory=list)  # per iteration it runs in
    fits: bool = True
    reason: str = ""
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float | None:
        return None if any(s is None for s in self.seconds) else sum(self.seconds)  # type: ignore[arg-type]


@dataclass
class RunPlan:
    source: str
    devices: Devices
    policy: ModelShape
    settings: PlanSettings
    dims: dict[str, int]
    stages: list[StagePlan]

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)


# ---- reading the config --------------------------------------------------------------------------------
def _count_queries(sources, per_source: int | None, n_slices: int = 1) -> int | None:
    """Queries the sources give to one iteration (a source's slice, capped at `per_source`), loading only local
    files; None if unknown."""
    total = 0
    for src in sources:
        local = src.bundled or (src.path and Path(src.path).exists())
        if local:
            n = len(load_queries(src)) // n_slices
        elif per_source or src.limit:
            n = min(x for x in (per_source, src.limit) if x)
        else:
            return None
        total += min(n, per_source) if per_source else n
    return total


def _principles_per_constitution(config: RunConfig) -> int:

    try:
        cset = load_constitutions(config.constitutions)
        first = sample_constitutions(cset, config.sampling.scheme, 1, random.Random(0), mode=config.evaluation.mode)
        return len(first[0].items)
    except SamiInputError:
        return 2


def _launch_config(config: RunConfig) -> dict:
    """The accelerate config's distributed fields, with the launcher's extra_args applied on top."""
    launcher = config.launcher
    out = {"sharding": "none", "offload_optimizer": False, "offload_params": False, "checkpointing": False}
    if launcher.kind != "accelerate" or not launcher.config:
        return out

    data = yaml.safe_load(accelerate_config_path(launcher.config).read_text(encoding="utf-8")) or {}
    kind = str(data.get("distributed_type", "")).upper()
    ds, fsdp = data.get("deepspeed_config") or {}, data.get("fsdp_config") or {}
    if kind == "FSDP":
        out["sharding"] = "fsdp"
    elif kind == "DEEPSPEED" and int(ds.get("zero_stage", 0)) == 3:
        out["sharding"] = "zero3"
    options = {
        "offload_optimizer_device": ds.get("offload_optimizer_device"),
        "offload_param_device": ds.get("offload_param_device"),
        "fsdp_offload_params": fsdp.get("fsdp_offload_params"),
        "fsdp_activation_checkpointing": fsdp.get("fsdp_activation_checkpointing"),
    }
    args = launcher.extra_args
    for i, arg in enumerate(args):
        key, _, value = arg.lstrip("-").partition("=")
        if key in options:
            options[key] = value or (args[i + 1] if i + 1 < len(args) else "true")
    out["offload_optimizer"] = str(options["offload_optimizer_device"]).lower() in ("cpu", "nvme")
    out["offload_params"] = (
        str(options["offload_param_device"]).lower() in ("cpu", "nvme")
        or str(options["fsdp_offload_params"]).lower() == "true"
    )
    out["checkpointing"] = str(options["fsdp_activation_checkpointing"]).lower() == "true"
    return out


# ---- checks and advice -----------------------------------------------------------------------------------
def gb_text(x: float) -> str:
    """Bytes as GB (10⁹) with one decimal."""
    return f"{x / GB:.1f} GB"


def _usable(devices: Devices, settings: PlanSettings) -> float:
    return devices.memory - settings.runtime_reserve_gb * GB


def _check(stage: StagePlan, devices: Devices, settings: PlanSettings) -> bool:
    if stage.memory is None:
        return True
    need = stage.memory.total
    if need > _usable(devices, settings):
        top = sorted(stage.memory.parts.items(), key=lambda kv: -kv[1])[:3]
        parts = ", ".join(f"{k} {gb_text(v)}" for k, v in top)
        stage.fits = False
        reserve = settings.runtime_reserve_gb
        stage.reason = (
            f"needs {gb_text(need + reserve * GB)} per device ({parts}, + {reserve:g} GB reserve) "
            f"on {devices.name}-{devices.memory_gb:g}GB"
        )
        return False
    if settings.host_memory_gb and stage.memory.host > settings.host_memory_gb * GB:
        stage.fits = False
        stage.reason = (
            f"offload needs {gb_text(stage.memory.host)} of host RAM per node, {settings.host_memory_gb:g} GB stated"
        )
        return False
    return True


def _min_tensor_parallel(weights: float, devices: Devices, settings: PlanSettings, share: float = 0.7) -> int | None:
    """Smallest power-of-two tensor parallel size whose weight shard takes at most `share` of a device."""
    tp = 1
    while tp <= devices.count:
        if weights / tp <= share * _usable(devices, settings):
            return tp
        tp *= 2
    return None


def _training_advice(shape, setup: TrainSetup, devices: Devices, settings: PlanSettings, grad_accum: int) -> list[str]:
    usable, reserve = _usable(devices, settings), settings.runtime_reserve_gb * GB

    def fits(s: TrainSetup) -> bool:
        m = training_memory(shape, s)
        return m.total <= usable and not (settings.host_memory_gb and m.host > settings.host_memory_gb * GB)

    def smaller_batch(s: TrainSetup) -> TrainSetup | None:
        for b in range(s.micro_batch - 1, 0, -1):  # divisors: the same queries per optimizer step
            if s.micro_batch % b == 0 and fits(cand := TrainSetup(**{**s.__dict__, "micro_batch": b})):
                return cand
        return None

    changes: list[tuple[str, dict]] = []
    if setup.sharding == "none" and devices.count > 1:
        changes.append(
            (
                f"shard over the {devices.count} devices (launcher: {{kind: accelerate, config: fsdp, "
                f"num_processes: {devices.count}}})",
                {"sharding": "fsdp", "processes": devices.count},
            )
        )
    if not setup.checkpointing:
        changes.append(
            ("gradient checkpointing (training.trainer_args: {gradient_checkpointing: true})", {"checkpointing": True})
        )
    if setup.chunk_size == 0:
        changes.append(("the chunked LM head (training.logprob_chunk_size: null)", {"chunk_size": None}))
    if not setup.offload_optimizer:
        changes.append(
            (
                "offload the optimizer to CPU (launcher: {config: zero3, extra_args: "
                "[--offload_optimizer_device, cpu]})",
                {"offload_optimizer": True, "sharding": "zero3", "processes": max(setup.processes, devices.count)},
            )
        )
    advice, combined = [], setup
    for text, change in changes:
        cand = TrainSetup(**{**setup.__dict__, **change})
        if fits(cand):
            advice.append(f"{text}: {gb_text(training_memory(shape, cand).total + reserve)} per device")
        combined = TrainSetup(**{**combined.__dict__, **change})
    if (b := smaller_batch(setup)) is not None:
        advice.append(
            f"training.per_device_train_batch_size: {b.micro_batch} with gradient_accumulation_steps: "
            f"{setup.micro_batch // b.micro_batch * grad_accum} (same queries per step): "
            f"{gb_text(training_memory(shape, b).total + reserve)} per device"
        )
    if not advice:
        if fits(combined) or (combined := smaller_batch(combined)) is not None:
            advice.append(
                f"all of: {'; '.join(t for t, _ in changes)}, micro-batch {combined.micro_batch}: "
                f"{gb_text(training_memory(shape, combined).total + reserve)} per device"
            )
        else:
            advice.append(
                "more or larger devices: it does not fit even sharded, offloaded, checkpointed at micro-batch 1"
            )
    return advice


# ---- stages ----------------------------------------------------------------------------------------------
def _hf_generation_seconds(shape, devices, settings, *, wb, n_prompts, batch, p, r, processes=1) -> float | None:
    per_process = math.ceil(n_prompts / processes)
    step = decode_step_seconds(
        shape,
        devices,
        settings,
        weight_bytes=wb,
        batch=batch,
        context=p + r // 2,
        overhead=settings.hf_step_overhead_s,
    )
    prefill = forward_seconds(shape, devices, settings, per_process * p)
    if step is None or prefill is None:
        return None
    return math.ceil(per_process / batch) * r * step + prefill


def _vllm(shape, devices, settings, *, wb, tp, utilization, n_prompts, p, r) -> tuple[Memory, float | None, int]:
    """Memory per device of a vLLM engine over `tp` devices, its time, and how many sequences its cache holds."""
    weights = shape.n_params * wb / tp
    budget = utilization * devices.memory - settings.runtime_reserve_gb * GB
    kv_seq = (p + r) * shape.kv_bytes_per_token(wb) / tp
    mem = Memory({"weights": weights, "KV cache (vLLM fills the rest)": max(budget - weights, kv_seq)})
    seqs = max(0, int((budget - weights) // kv_seq))
    batch = max(1, min(settings.vllm_max_seqs, seqs, n_prompts))
    step = decode_step_seconds(shape, devices, settings, weight_bytes=wb, batch=batch, context=p + r // 2, shards=tp)
    prefill = forward_seconds(shape, devices, settings, n_prompts * p, n=tp)
    seconds = None if step is None or prefill is None else math.ceil(n_prompts / batch) * r * step + prefill
    return mem, seconds, seqs


def _self_generation(config, shape, devices, settings, dims, n_train) -> StagePlan:
    gen, p, r = config.generation, dims["P"], config.sampling.max_new_tokens
    wb = dtype_bytes(getattr(gen, "dtype", None) or config.model.dtype)  # openai: no dtype of its own
    n_prompts = n_train * config.sampling.n_constitutions
    iters = config.iterations.count
    if gen.backend == "hf":
        procs = config.launcher.num_processes if config.launcher.kind == "accelerate" else 1
        mem = generation_memory(
            shape, weight_bytes=wb, batch=gen.prefill_batch_size or gen.batch_size, prompt_tokens=p, new_tokens=r
        )
        secs = _hf_generation_seconds(
            shape, devices, settings, wb=wb, n_prompts=n_prompts, batch=gen.batch_size, p=p, r=r, processes=procs
        )
        stage = StagePlan("self-generation", f"hf, {procs} process(es), batch {gen.batch_size}", mem, [secs] * iters)
        if not _check(stage, devices, settings):
            tp = _min_tensor_parallel(shape.n_params * wb, devices, settings)
            stage.advice.append(f"generation.backend: vllm with tensor_parallel_size: {tp}" if tp else "more devices")
            if gen.batch_size > 1:
                stage.advice.append("a smaller generation.batch_size (the KV cache grows with it)")
        return stage
    tp = gen.tensor_parallel_size if gen.backend == "vllm" else None
    utilization = getattr(gen, "gpu_memory_utilization", 0.9)  # openai: timed as a vLLM server at its default
    if tp is None:  # openai: a server elsewhere; timed as a vLLM server over the smallest fitting tensor parallel
        tp = _min_tensor_parallel(shape.n_params * wb, devices, settings) or devices.count
    mem, secs, seqs = _vllm(
        shape,
        devices,
        settings,
        wb=wb,
        tp=tp,
        utilization=utilization,
        n_prompts=n_prompts,
        p=p,
        r=r,
    )
    if gen.backend == "openai":
        stage = StagePlan("self-generation", f"server at {gen.base_url}", None, [secs] * iters)
        stage.notes.append(f"timed as vLLM with tensor parallel {tp} on these devices; the server's memory is its own")
        return stage
    stage = StagePlan(
        "self-generation", f"vLLM, tensor parallel {tp} ({tp} of {devices.count} devices)", mem, [secs] * iters
    )
    if tp > devices.count:
        stage.fits, stage.reason = False, f"tensor_parallel_size {tp} > {devices.count} devices"
    elif seqs < 1 or not _check(stage, devices, settings):
        stage.fits = False
        weights = gb_text(mem.parts["weights"])
        stage.reason = stage.reason or f"weights {weights} per device leave no room for the KV cache"
        need = _min_tensor_parallel(shape.n_params * wb, devices, settings)
        stage.advice.append(f"generation.tensor_parallel_size: {need}" if need else "more devices")
    else:
        stage.notes.append(f"KV cache holds {seqs} sequences of {p + r} tokens")
    return stage


def _training(config, shape, devices, settings, dims) -> StagePlan:
    tr, launch = config.training, _launch_config(config)
    procs = config.launcher.num_processes if config.launcher.kind == "accelerate" else 1
    checkpointing = launch["checkpointing"] or any(
        bool(tr.trainer_args.get(k)) for k in ("gradient_checkpointing", "activation_checkpointing")
    )
    lora = config.model.lora
    setup = TrainSetup(
        micro_batch=tr.per_device_train_batch_size,
        c=config.sampling.n_constitutions,
        prompt_tokens=dims["P"],
        response_tokens=dims["R_train"],
        optim=tr.optim,
        bf16=tr.bf16,
        sharding=launch["sharding"],
        processes=procs,
        offload_optimizer=launch["offload_optimizer"],
        offload_params=launch["offload_params"],
        checkpointing=checkpointing,
        chunk_size=tr.logprob_chunk_size,
        lora_r=int(lora.get("r", 16)) if lora is not None else None,
        reference=tr.beta > 0,
    )
    mem = training_memory(shape, setup)
    global_tokens = setup.tokens * procs * tr.gradient_accumulation_steps
    flops = training_flops(shape, global_tokens, checkpointing=checkpointing, reference=setup.reference)
    step = flops / (procs * devices.tflops * 1e12 * settings.train_mfu) if devices.tflops else None
    steps = config.iterations.steps[: config.iterations.count]
    where = f"{procs} process(es), {setup.sharding}" + (", offload" if setup.offload_optimizer else "")
    where += ", checkpointing" if checkpointing else ""
    stage = StagePlan("training", where, mem, [None if step is None else n * step for n in steps])
    stage.notes.append(
        f"micro-batch {setup.micro_batch}: T = B·C·(P + C·R) = {setup.tokens} tokens; "
        f"{global_tokens} tokens per optimizer step"
    )
    if mem.host:
        stage.notes.append(f"host RAM for the offloaded state: {gb_text(mem.host)} per node")
    if procs > devices.count:
        stage.fits, stage.reason = False, f"{procs} processes on {devices.count} devices"
    elif not _check(stage, devices, settings):
        stage.advice = _training_advice(shape, setup, devices, settings, tr.gradient_accumulation_steps)
    return stage


def _evaluation(config, shape, devices, settings, dims, n_eval, k) -> list[StagePlan]:

    ev = evaluation_settings(config)
    p, r, wb, iters = dims["P"], ev.max_new_tokens, dtype_bytes(ev.dtype), config.iterations.count
    patterns = min(2**k, ev.mi_max_patterns) if ev.mi == "sign_patterns" else ev.n_constitutions
    per_model = n_eval * (patterns if ev.intrinsic else 1)
    models: list[tuple[str, ModelShape, int]] = []  # (which, shape, responses) of every iteration's hf models
    contrast = (ev.contrast_limit or n_eval) * k if ev.contrast else 0
    for t in range(iters + 1):  # the baselines: stages of their own (_baseline_stages); "base" is iteration 0's
        models.append((f"iter-{t}", shape, per_model + (contrast if t == 0 else 0)))
    gen_mem = [
        generation_memory(s, weight_bytes=wb, batch=ev.batch_size, prompt_tokens=p, new_tokens=r) for _, s, _ in models
    ]
    worst = max(range(len(models)), key=lambda i: gen_mem[i].total)
    seconds: list[float | None] = []
    for t in range(iters + 1):
        secs = [
            _hf_generation_seconds(s, devices, settings, wb=wb, n_prompts=n, batch=ev.batch_size, p=p, r=r)
            for (w, s, n) in models
            if w.split(":")[0] == f"iter-{t}"
        ]
        seconds.append(None if None in secs else sum(secs))  # type: ignore[arg-type]
    responses = StagePlan(
        "evaluation responses",
        f"hf in its own process, 1 of {devices.count} devices, batch {ev.batch_size}",
        gen_mem[worst],
        seconds,
    )
    responses.notes.append(
        f"{per_model} responses per model per iteration ({n_eval} queries × {patterns}); "
        f"largest model: {models[worst][1].name}"
    )
    if not _check(responses, devices, settings):
        _whole_model_advice(responses, devices, settings, "a smaller evaluation.batch_size (KV cache)", ev.batch_size)
        if wb == 4:
            responses.advice.append("evaluation.dtype: bfloat16")
    score_mem = scoring_memory(
        models[worst][1], weight_bytes=wb, queries=ev.batch_size, c=patterns, prompt_tokens=p, response_tokens=r
    )
    tokens = n_eval * patterns * (p + patterns * r)
    score_secs = [forward_seconds(shape, devices, settings, tokens * (1 + len(models) // (iters + 1)))] * (iters + 1)
    scoring = StagePlan(
        "evaluation scoring (MI)",
        f"own process, 1 device, {ev.batch_size} queries × {patterns} rows",
        score_mem if ev.intrinsic else None,
        score_secs if ev.intrinsic else [0.0],
    )
    if not _check(scoring, devices, settings):
        _whole_model_advice(
            scoring, devices, settings, "a smaller evaluation.batch_size (queries per MI forward)", ev.batch_size
        )
    return [responses, scoring, _judging(config, ev, devices, settings, dims, n_eval)]


def _whole_model_advice(stage: StagePlan, devices, settings, smaller: str, batch: int) -> None:
    """Advice for a stage that loads a whole model on one device: a larger device, or a smaller batch."""
    weights = stage.memory.parts["weights"] if stage.memory else 0.0
    if weights > _usable(devices, settings):
        stage.advice.append(
            f"the weights alone need {gb_text(weights)}: a device with ≥ "
            f"{gb_text(stage.memory.total + settings.runtime_reserve_gb * GB)}, since evaluation loads "
            "each model whole on one device (no tensor parallel or sharding there yet: issue 28)"
        )
    elif batch > 1:
        stage.advice.append(smaller)


def _judging(config, ev, devices, settings, dims, n_eval) -> StagePlan:
    judge, iters = ev.judge, config.iterations.count
    baselines = [len(run_b) for run_b in (_baselines(config, t) for t in range(iters + 1))]
    if judge.kind == "rules":
        return StagePlan("judging", "rules (the principles' checks, no model)", None, [0.0] * (iters + 1))
    per_iter = [n_eval * b * (2 if judge.both_orders else 1) for b in baselines]
    if judge.kind == "api":
        secs = [n * settings.api_latency_s / judge.max_concurrency for n in per_iter]
        return StagePlan("judging", f"API {judge.model_name or ''} ({judge.max_concurrency} in flight)", None, secs)
    shape = model_shape(judge.model)
    p_judge = dims["P"] + 2 * ev.max_new_tokens
    mem = scoring_memory(
        shape,
        weight_bytes=dtype_bytes(judge.dtype),
        queries=judge.batch_size,
        c=1,
        prompt_tokens=p_judge,
        response_tokens=0,
    )
    secs = [forward_seconds(shape, devices, settings, n * p_judge) for n in per_iter]
    stage = StagePlan("judging", f"local judge {judge.model}, batch {judge.batch_size}", mem, secs)
    if not _check(stage, devices, settings):
        stage.advice.append("a smaller evaluation.judge.batch_size, judge dtype bfloat16, or an api judge")
    return stage


def _baseline_stages(config, devices, settings, dims, n_eval, k) -> list[StagePlan]:
    """One plan per `baselines/NAME` stage of the run's table: run once per run, in a process of its own."""
    ev, specs = evaluation_settings(config), evaluation_baselines(config, against_base=False)
    p, r, wb = dims["P"], ev.max_new_tokens, dtype_bytes(ev.dtype)
    patterns = min(2**k, ev.mi_max_patterns) if ev.mi == "sign_patterns" else ev.n_constitutions
    by_stage = {baseline_stage_name(name): spec for name, spec in specs.items()}
    out = []
    for name in (n for n in stage_table(config, contents=False) if n in by_stage):
        spec = by_stage[name]
        if spec.generation is not None and spec.generation.backend != "hf":
            served = spec.generation
            secs = n_eval * settings.api_latency_s / getattr(served, "max_concurrency", 1)
            out.append(StagePlan(name, f"{served.backend} server (generates elsewhere), once per run", None, [secs]))
            continue
        b_shape, scored = model_shape(spec.model), ev.intrinsic and ev.baseline_intrinsic
        n = n_eval * patterns if scored else n_eval
        mem = generation_memory(b_shape, weight_bytes=wb, batch=ev.batch_size, prompt_tokens=p, new_tokens=r)
        gen = _hf_generation_seconds(b_shape, devices, settings, wb=wb, n_prompts=n, batch=ev.batch_size, p=p, r=r)
        score = forward_seconds(b_shape, devices, settings, n_eval * patterns * (p + patterns * r)) if scored else 0.0
        where = f"hf in its own process, 1 of {devices.count} devices, batch {ev.batch_size}, once per run"
        stage = StagePlan(name, where, mem, [None if gen is None or score is None else gen + score])
        stage.notes.append(f"{n} responses of {b_shape.name}" + (" and their MI" if scored else ""))
        if not _check(stage, devices, settings):
            _whole_model_advice(stage, devices, settings, "a smaller evaluation.batch_size (KV cache)", ev.batch_size)
        out.append(stage)
    return out


def _baselines(config, t: int) -> dict:

    return evaluation_baselines(config, against_base=t > 0)


def plan_run(config: RunConfig, settings: PlanSettings, *, source: str = "config") -> RunPlan:
    """Every stage's estimated memory per device and time on `settings.devices`; reads no weights."""
    devices = parse_devices(settings.devices, settings.device_tflops, settings.device_bandwidth_gbs)
    shape = model_shape(config.model.policy)
    task = config.prompts.task or "dialogue"
    p = settings.prompt_tokens or DEFAULT_PROMPT_TOKENS.get(task, 300)
    budget = config.evaluation.max_new_tokens if config.sampling.reasoning else config.sampling.max_new_tokens
    eos = 0 if config.training.eos == "never" else 1  # a scored EOS
    r_train = settings.response_tokens or config.training.max_response_length or budget + eos
    dims = {"P": p, "R_train": r_train, "C": config.sampling.n_constitutions}
    data = config.data
    n_train = _count_queries(data.train, data.train_per_iteration, data.n_slices)
    n_eval = _count_queries(data.eval, data.eval_limit)
    if n_train is None or n_eval is None:
        raise SamiInputError(f"{source}: data: cannot count the queries offline; set train_per_iteration/eval_limit")
    dims |= {"train queries": n_train, "eval queries": n_eval}
    k = _principles_per_constitution(config)
    stages = [
        _self_generation(config, shape, devices, settings, dims, n_train),
        _training(config, shape, devices, settings, dims),
        *_baseline_stages(config, devices, settings, dims, n_eval, k),
        *_evaluation(config, shape, devices, settings, dims, n_eval, k),
    ]
    return RunPlan(source, devices, shape, settings, dims, stages)
