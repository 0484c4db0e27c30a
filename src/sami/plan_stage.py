"""What every stage's plan shares: `StagePlan`, the check against the devices, the smallest tensor parallel size,
and the time of `hf` and vLLM generation (built from `sami.plan`'s formulas, which keep their sources there).

`sami.plan_run` plans self-generation and training with these, `sami.plan_eval` the evaluation's stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sami.model_shapes import ModelShape
from sami.plan import GB, Devices, Memory, PlanSettings, decode_step_seconds, forward_seconds


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


def gb_text(x: float) -> str:
    """Bytes as GB (10⁹) with one decimal."""
    return f"{x / GB:.1f} GB"


def usable(devices: Devices, settings: PlanSettings) -> float:
    """Bytes of one device a stage may use: its memory less the runtime reserve."""
    return devices.memory - settings.runtime_reserve_gb * GB


def check(stage: StagePlan, devices: Devices, settings: PlanSettings) -> bool:
    """Whether the stage's memory fits one device (and its offload the stated host RAM); if not, says why."""
    if stage.memory is None:
        return True
    need = stage.memory.total
    if need > usable(devices, settings):
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


def min_tensor_parallel(weights: float, devices: Devices, settings: PlanSettings, share: float = 0.7) -> int | None:
    """Smallest power-of-two tensor parallel size whose weight shard takes at most `share` of a device (the rest:
    the KV cache); None if not even all the devices give that."""
    tp = 1
    while tp <= devices.count:
        if weights / tp <= share * usable(devices, settings):
            return tp
        tp *= 2
    return None


def hf_generation_seconds(shape, devices, settings, *, wb, n_prompts, batch, p, r, processes=1) -> float | None:
    """`n_prompts` responses of `r` tokens with the `hf` backend: `processes` data-parallel ranks of `batch`."""
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


def vllm_generation(
    shape: ModelShape, devices: Devices, settings: PlanSettings, *, wb, tp, utilization, n_prompts, p, r, replicas=1
) -> tuple[Memory, float | None, int]:
    """Memory per device of a vLLM engine over `tp` devices, the time of `n_prompts` responses over `replicas`
    such engines (data parallel), and how many sequences one engine's cache holds."""
    weights = shape.n_params * wb / tp
    budget = utilization * devices.memory - settings.runtime_reserve_gb * GB
    kv_seq = (p + r) * shape.kv_bytes_per_token(wb) / tp
    mem = Memory({"weights": weights, "KV cache (vLLM fills the rest)": max(budget - weights, kv_seq)})
    seqs = max(0, int((budget - weights) // kv_seq))
    per_replica = math.ceil(n_prompts / replicas)
    batch = max(1, min(settings.vllm_max_seqs, seqs, per_replica))
    step = decode_step_seconds(shape, devices, settings, weight_bytes=wb, batch=batch, context=p + r // 2, shards=tp)
    prefill = forward_seconds(shape, devices, settings, per_replica * p, n=tp)
    seconds = None if step is None or prefill is None else math.ceil(per_replica / batch) * r * step + prefill
    return mem, seconds, seqs
