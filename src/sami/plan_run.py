"""`plan_run(config, settings)`: the memory per device and time of every stage of a run, before anything runs.

The stages are those `sami.pipeline` runs today: self-generation (the `generation` backend), training (under the
`launcher`), the run's baselines (`baselines/NAME` of the stage table: hf on one device, once per run), evaluation
(the evaluated model's responses with the engine `evaluation.generation` names, the MI scores on one device) and
judging (a local judge model, an API, or rules); the last three are `sami.plan_eval`'s. The formulas are in
`sami.plan`; this module reads a run config into their inputs, checks each stage against the stated devices
(`sami.plan_stage`) and says what to change when one does not fit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
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
    PlanSettings,
    TrainSetup,
    dtype_bytes,
    generation_memory,
    parse_devices,
    training_flops,
    training_memory,
)
from sami.plan_eval import baseline_stages, evaluation_stages
from sami.plan_stage import (  # StagePlan and gb_text are read from here by sami.plan_report
    StagePlan,
    check,
    gb_text,
    hf_generation_seconds,
    min_tensor_parallel,
    usable,
    vllm_generation,
)
from sami.run_config import RunConfig

__all__ = ["RunPlan", "StagePlan", "gb_text", "plan_run"]

DEFAULT_PROMPT_TOKENS = {"dialogue": 200, "summarization": 450}


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


# ---- advice -----------------------------------------------------------------------------------------------
def _training_advice(shape, setup: TrainSetup, devices: Devices, settings: PlanSettings, grad_accum: int) -> list[str]:
    room, reserve = usable(devices, settings), settings.runtime_reserve_gb * GB

    def fits(s: TrainSetup) -> bool:
        m = training_memory(shape, s)
        return m.total <= room and not (settings.host_memory_gb and m.host > settings.host_memory_gb * GB)

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
        secs = hf_generation_seconds(
            shape, devices, settings, wb=wb, n_prompts=n_prompts, batch=gen.batch_size, p=p, r=r, processes=procs
        )
        stage = StagePlan("self-generation", f"hf, {procs} process(es), batch {gen.batch_size}", mem, [secs] * iters)
        if not check(stage, devices, settings):
            tp = min_tensor_parallel(shape.n_params * wb, devices, settings)
            stage.advice.append(f"generation.backend: vllm with tensor_parallel_size: {tp}" if tp else "more devices")
            if gen.batch_size > 1:
                stage.advice.append("a smaller generation.batch_size (the KV cache grows with it)")
        return stage
    tp = gen.tensor_parallel_size if gen.backend == "vllm" else None
    utilization = getattr(gen, "gpu_memory_utilization", 0.9)  # openai: timed as a vLLM server at its default
    if tp is None:  # openai: a server elsewhere; timed as a vLLM server over the smallest fitting tensor parallel
        tp = min_tensor_parallel(shape.n_params * wb, devices, settings) or devices.count
    mem, secs, seqs = vllm_generation(
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
    elif seqs < 1 or not check(stage, devices, settings):
        stage.fits = False
        weights = gb_text(mem.parts["weights"])
        stage.reason = stage.reason or f"weights {weights} per device leave no room for the KV cache"
        need = min_tensor_parallel(shape.n_params * wb, devices, settings)
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
    elif not check(stage, devices, settings):
        stage.advice = _training_advice(shape, setup, devices, settings, tr.gradient_accumulation_steps)
    return stage


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
        *baseline_stages(config, devices, settings, dims, n_eval, k),
        *evaluation_stages(config, shape, devices, settings, dims, n_eval, k),
    ]
    return RunPlan(source, devices, shape, settings, dims, stages)
