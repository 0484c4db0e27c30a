"""Memory and time formulas of a SAMI run's stages, from a model's shape alone (no weights): what `sami plan` uses.

All sizes are bytes per device unless named otherwise; GB = 10⁹ bytes (a device named `80GB` has 80·10⁹ bytes).
Sources of the formulas:

* **Model state per parameter** (ZeRO, Rajbhandari et al. 2020, arXiv 1910.02054, §3.1: mixed-precision Adam
  keeps 2 + 2 + 12 bytes per parameter: fp16/bf16 weights and gradients, fp32 master copy, momentum and
  variance). Generalised by the optimizer's fp32 states per parameter (`OPTIMIZER_STATES`: Adam/AdamW 2,
  RMSprop 1 with torch's default momentum 0, SGD 0 without momentum, 8-bit Adam 2 of 1 byte). Under DeepSpeed
  ZeRO-3 with bf16: 2 (weights) + 2 (grads) + 4 (master) + 4·states; under FSDP and DDP, which train the fp32
  weights `sami` loads with bf16 autocast or FSDP's mixed-precision policy: 4 (weights, the master) + 4 (grads)
  + 4·states. Both total (8 + 4·states) bytes per parameter. ZeRO-3 and FSDP full shard divide it by the number
  of processes (ZeRO §5.1, stage P_os+g+p); ZeRO-Offload (Ren et al. 2021, arXiv 2101.06840) moves the fp32
  master and optimizer states to host memory (the device keeps weights and gradients); FSDP's `offload_params`
  moves parameters, gradients and optimizer state there.
* **Unsharded working set** (FSDP/ZeRO-3): the units being gathered, current and prefetched decoder layer plus
  the root unit (embeddings, LM head) in bf16, and one layer's unsharded gradient before its reduce-scatter.
* **Activations** per micro-batch: `sami.logprobs.pack_encoded` lays B queries out as B·C rows of P + C·R tokens
  (each prompt once, then all C responses), T = B·C·(P + C·R) tokens. Saved for backward per token and layer,
  counting the tensors a llama decoder layer (transformers 5, sdpa attention) keeps: the residual input, two
  RMSNorms' normalised value and output (6·H over both), q after RoPE, k and v repeated to all query heads (with
  a mask transformers' sdpa path uses `repeat_kv`, not GQA), the attention output and o_proj's input (5·H_q), and
  the gated MLP's gate, up, SiLU and product (4·I per routed expert): the same inventory as Korthikanti et al.
  2022 (arXiv 2205.05198, §4.1) for this layer type, without the s² term (the fused attention kernels keep no
  score matrix). In bf16 each RMSNorm keeps its float32 input copy instead of the input (4 + 2 + 2 bytes·H).
  With gradient checkpointing only each layer's input (H per token) is kept, plus one layer's activations while
  it is recomputed; one layer's worth is added either way as the backward's working set. The boolean prefix
  mask is B·C·(P + C·R)² bytes.
* **Logits** (`sami.lm_head`): K = B·C·(C·R + 1) positions predict a response token. Unchunked, the [K, V]
  logits in the compute dtype are kept (plus their float32 copy in bf16), and the backward of `logsumexp` and of
  the target gather hold three float32 [K, V] tensors at once: K·V·(a + 12) bytes (+ 4 in bf16); chunked, three
  float32 [chunk, V] buffers at a time (logits, probabilities, gradient). `None` = automatic, as in
  `sami.lm_head.resolve_chunk_size`.
* **KV cache**: 2 · layers · kv_heads · head_dim · bytes per token (K and V of every layer), per sequence of
  P + R tokens; vLLM takes `gpu_memory_utilization` of each device and fills what the weights leave with it.
* **Time**: training FLOPs 6·N_active per token (2 forward + 4 backward, Kaplan et al. 2020, arXiv 2001.08361;
  8·N with checkpointing's second forward), at `train_mfu` of the device's dense bf16 peak. Decoding is bound by
  memory bandwidth: each step reads the weights (and the batch's KV cache) once, at `bandwidth_efficiency` of the
  device's peak bandwidth, plus `hf_step_overhead_s` per step for the `hf` backend's Python loop (measured:
  benchmarks/RESULTS.md, 48 ms per step at batch 64 on one H200). Prefill and scoring forwards: 2·N_active FLOPs
  per token at `train_mfu`. Every generated response is counted at its full token budget (an upper bound).

Device peaks (`DEVICES`) are the vendors' datasheet numbers: H100 SXM 989 TFLOP/s dense BF16 and 3.35 TB/s,
H200 989 TFLOP/s and 4.8 TB/s, A100 312 TFLOP/s and 2.04 TB/s (80 GB) / 1.56 TB/s (40 GB), L40S 362 TFLOP/s and
0.864 TB/s. Hand-written because no library plans all of a SAMI run's stages (accelerate's `estimate-memory`
counts weights, gradients and Adam only, for one model and without activations or generation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sami.errors import SamiInputError
from sami.lm_head import resolve_chunk_size
from sami.model_shapes import ModelShape

GB = 1e9

# name -> (dense bf16 TFLOP/s, HBM bandwidth in GB/s by memory size in GB (0: any))
DEVICES: dict[str, tuple[float, dict[int, float]]] = {
    "H100": (989.0, {0: 3350.0}),
    "H200": (989.0, {0: 4800.0}),
    "A100": (312.0, {80: 2039.0, 40: 1555.0, 0: 2039.0}),
    "L40S": (362.0, {0: 864.0}),
}

# optimizer name (prefix, TrainingArguments' `optim`) -> (states per parameter, bytes per state)
OPTIMIZER_STATES: dict[str, tuple[int, int]] = {
    "adamw_8bit": (2, 1),
    "paged_adamw_8bit": (2, 1),
    "adamw_bnb_8bit": (2, 1),
    "adam": (2, 4),
    "paged_adam": (2, 4),
    "rmsprop": (1, 4),
    "lion": (1, 4),
    "sgd": (0, 4),
    "adafactor": (0, 4),  # factored second moment: O(rows + cols) per matrix, neglected
}


class PlanSettings(BaseModel):
    """What `sami plan` assumes: the devices and the throughputs the time estimates use."""

    model_config = ConfigDict(extra="forbid")

    devices: str = Field(
        "8xH100-80GB", description="devices of one node: COUNTxNAME-MEMGB, e.g. 8xH100-80GB, 1xA100-40GB, 2xCPU-24GB"
    )
    device_tflops: float | None = Field(
        None, gt=0, description="dense bf16 TFLOP/s per device (None: the datasheet value of the named device)"
    )
    device_bandwidth_gbs: float | None = Field(
        None, gt=0, description="memory bandwidth per device in GB/s (None: the datasheet value)"
    )
    train_mfu: float = Field(
        0.35,
        gt=0,
        le=1,
        description="fraction of the bf16 peak reached by training, prefill and scoring forwards "
        "(Llama 3 reports 0.38-0.43 on H100 at scale; small-batch FSDP fine-tuning is lower)",
    )
    bandwidth_efficiency: float = Field(
        0.6, gt=0, le=1, description="fraction of the peak memory bandwidth a decoding step reaches (assumption)"
    )
    hf_step_overhead_s: float = Field(
        0.045,
        ge=0,
        description="seconds per decoding step of the hf backend's loop on a GPU (measured: "
        "benchmarks/RESULTS.md, 912M llama on one H200 at batch 64)",
    )
    vllm_max_seqs: int = Field(256, ge=1, description="sequences a vLLM engine decodes at once (vLLM's max_num_seqs)")
    api_latency_s: float = Field(8.0, gt=0, description="seconds per api judge request (assumption)")
    prompt_tokens: int | None = Field(
        None,
        ge=1,
        description="prompt length P in tokens (None: 200 for dialogue, 450 for summarization; "
        "the principles plus a query)",
    )
    response_tokens: int | None = Field(
        None,
        ge=1,
        description="trained response length R (None: training.max_response_length, else sampling.max_new_tokens; "
        "with sampling.reasoning, evaluation.max_new_tokens: only the text after the reasoning is trained on)",
    )
    runtime_reserve_gb: float = Field(
        2.0, ge=0, description="per device: CUDA context, NCCL buffers, allocator fragmentation (assumption)"
    )
    host_memory_gb: float | None = Field(
        None, gt=0, description="host RAM per node, checked against CPU offload (None: reported, not checked)"
    )


@dataclass(frozen=True)
class Devices:
    count: int
    name: str
    memory_gb: float
    tflops: float | None  # dense bf16 peak per device
    bandwidth_gbs: float | None

    @property
    def memory(self) -> float:
        return self.memory_gb * GB

    def __str__(self) -> str:
        return f"{self.count}x{self.name}-{self.memory_gb:g}GB"


_DEVICES_RE = re.compile(r"^\s*(\d+)\s*[x×*]\s*([A-Za-z][A-Za-z0-9]*)-(\d+(?:\.\d+)?)\s*GB\s*$", re.IGNORECASE)


def parse_devices(text: str, tflops: float | None = None, bandwidth_gbs: float | None = None) -> Devices:
    """`8xH100-80GB` -> 8 devices of 80 GB with the H100's datasheet peaks (or the given ones)."""
    match = _DEVICES_RE.match(text)
    if not match or int(match.group(1)) < 1:
        raise SamiInputError(f"devices: expected COUNTxNAME-MEMGB such as 8xH100-80GB, got {text!r}")
    count, name, mem = int(match.group(1)), match.group(2).upper(), float(match.group(3))
    peak, bandwidths = DEVICES.get(name, (None, {}))
    bandwidth = bandwidths.get(int(mem), bandwidths.get(0)) if bandwidths else None
    return Devices(count, name, mem, tflops or peak, bandwidth_gbs or bandwidth)


def dtype_bytes(dtype: str | None) -> int:
    """Bytes per element of a config dtype (`auto` = the checkpoints' bf16; None = sami's float32 default)."""
    return 4 if dtype in (None, "float32", "fp32") else 2


def optimizer_states(optim: str) -> tuple[int, int]:
    """(fp32-sized states per parameter, bytes per state) of a TrainingArguments `optim` name."""
    name = optim.lower()
    for prefix in sorted(OPTIMIZER_STATES, key=len, reverse=True):
        if name.startswith(prefix):
            return OPTIMIZER_STATES[prefix]
    return OPTIMIZER_STATES["adam"]  # unknown optimizers planned as Adam (the largest common one)


@dataclass
class Memory:
    """Estimated peak bytes per device, by part, and bytes of host memory per node."""

    parts: dict[str, float] = field(default_factory=dict)
    host: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def lora_params(shape: ModelShape, r: int) -> int:
    """Trainable parameters of a rank-r LoRA on every linear layer but the head (peft's `all-linear`)."""
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    attention = (h + q) + 2 * (h + kv) + (q + h)
    mlp = 3 * (h + i) * shape.num_experts
    return r * shape.num_layers * (attention + mlp)


def layer_activation_bytes(shape: ModelShape, act_bytes: int) -> int:
    """Bytes one token keeps for backward in one decoder layer (see the module docstring)."""
    h, q = shape.hidden_size, shape.num_heads * shape.head_dim
    norms = 6 * h * act_bytes if act_bytes >= 4 else 2 * (4 + 2 + 2) * h  # bf16: float32 copy, normalised, output
    return (5 * q + 4 * shape.intermediate_size * shape.experts_per_token) * act_bytes + norms


def logits_bytes(shape: ModelShape, positions: int, act_bytes: int, chunk_size: int | None) -> tuple[float, int]:
    """(bytes, chunk) of the LM head's logits for `positions` predicting positions; chunk 0 = unchunked."""
    chunk = resolve_chunk_size(chunk_size, shape.vocab_size, positions)
    if chunk:
        return 3 * min(chunk, positions) * shape.vocab_size * 4, chunk
    return positions * shape.vocab_size * (act_bytes + 12 + (4 if act_bytes < 4 else 0)), 0


@dataclass(frozen=True)
class TrainSetup:
    """How a training stage runs: the parts of the config the memory formula reads."""

    micro_batch: int
    c: int
    prompt_tokens: int
    response_tokens: int
    optim: str = "adamw_torch"
    bf16: bool = False
    sharding: Literal["none", "fsdp", "zero3"] = "none"
    processes: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    checkpointing: bool = False
    chunk_size: int | None = None
    lora_r: int | None = None
    reference: bool = False  # beta > 0: a frozen reference model beside the policy

    @property
    def row_tokens(self) -> int:
        return self.prompt_tokens + self.c * self.response_tokens

    @property
    def tokens(self) -> int:
        """T = B·C·(P + C·R): the micro-batch's packed tokens."""
        return self.micro_batch * self.c * self.row_tokens

    @property
    def logit_positions(self) -> int:
        return self.micro_batch * self.c * (self.c * self.response_tokens + 1)


def training_memory(shape: ModelShape, setup: TrainSetup) -> Memory:
    """Peak bytes per device of one SAMI training process (and host bytes per node under offload)."""
    n = shape.n_params
    states, state_bytes = optimizer_states(setup.optim)
    trainable = lora_params(shape, setup.lora_r) if setup.lora_r else n
    zero = setup.sharding == "zero3" and setup.bf16
    weight_b, grad_b, master_b = (2, 2, 4) if zero else (4, 4, 0)
    shards = setup.processes if setup.sharding != "none" else 1
    frozen = n - trainable if setup.lora_r else 0
    weights = (trainable * weight_b + frozen * weight_b) / shards
    grads = trainable * grad_b / shards
    master = trainable * master_b / shards
    optimizer = trainable * states * state_bytes / shards
    mem = Memory()
    offload_opt = setup.offload_optimizer or setup.offload_params
    to_host = {"master weights": master, "optimizer state": optimizer}
    if setup.offload_params:
        to_host |= {"weights": weights, "gradients": grads}
    here = {"weights": weights, "gradients": grads, "master weights": master, "optimizer state": optimizer}
    for name, value in here.items():
        if offload_opt and name in to_host:
            mem.host += value * shards  # every process of a node offloads its shard to the same host
        elif value:
            mem.parts[name] = value
    if shards > 1:
        unit = 2 if setup.bf16 else 4
        mem.parts["gathered units"] = (3 * shape.layer_params + shape.embedding_params) * unit
    act = 2 if setup.bf16 else 4
    t = setup.tokens
    per_layer = layer_activation_bytes(shape, act) * t
    kept = shape.num_layers * (t * shape.hidden_size * act if setup.checkpointing else per_layer)
    mem.parts["activations"] = kept + per_layer + 2 * t * shape.hidden_size * act
    mem.parts["attention mask"] = setup.micro_batch * setup.c * setup.row_tokens**2
    mem.parts["logits"], _ = logits_bytes(shape, setup.logit_positions, act, setup.chunk_size)
    if setup.reference:
        mem.parts["reference model"] = n * (2 if setup.bf16 else 4)
    return mem


def training_flops(shape: ModelShape, tokens: int, *, checkpointing: bool, reference: bool = False) -> float:
    """FLOPs of forward + backward over `tokens` (6·N per token, 8·N with recomputation, + 2·N for a reference)."""
    per_token = (8 if checkpointing else 6) + (2 if reference else 0)
    return per_token * shape.active_params * tokens


def generation_memory(
    shape: ModelShape, *, weight_bytes: int, batch: int, prompt_tokens: int, new_tokens: int, shards: int = 1
) -> Memory:
    """One generating model (hf): weights, the batch's KV cache and the prefill's largest transient."""
    mem = Memory()
    mem.parts["weights"] = shape.n_params * weight_bytes / shards
    mem.parts["KV cache"] = batch * (prompt_tokens + new_tokens) * shape.kv_bytes_per_token(weight_bytes) / shards
    prefill = batch * prompt_tokens
    mem.parts["prefill activations"] = prefill * (3 * shape.intermediate_size + 4 * shape.hidden_size) * weight_bytes
    mem.parts["logits"] = batch * shape.vocab_size * 4
    return mem


def scoring_memory(
    shape: ModelShape, *, weight_bytes: int, queries: int, c: int, prompt_tokens: int, response_tokens: int
) -> Memory:
    """A no-grad forward over `queries` prefix-shared examples of C prompts (the MI scores, a local judge)."""
    t = queries * c * (prompt_tokens + c * response_tokens)
    mem = Memory()
    mem.parts["weights"] = shape.n_params * weight_bytes
    mem.parts["activations"] = t * (2 * shape.hidden_size * weight_bytes + layer_activation_bytes(shape, weight_bytes))
    mem.parts["attention mask"] = queries * c * (prompt_tokens + c * response_tokens) ** 2
    mem.parts["logits"], _ = logits_bytes(shape, queries * c * (c * response_tokens + 1), weight_bytes, None)
    return mem


def decode_step_seconds(
    shape: ModelShape,
    devices: Devices,
    settings: PlanSettings,
    *,
    weight_bytes: int,
    batch: int,
    context: int,
    shards: int = 1,
    overhead: float = 0.0,
) -> float | None:
    """One decoding step of `batch` sequences: weights and their KV cache read once at the effective bandwidth."""
    if not devices.bandwidth_gbs:
        return None
    read = shape.n_params * weight_bytes + batch * context * shape.kv_bytes_per_token(weight_bytes)
    return read / shards / (devices.bandwidth_gbs * GB * settings.bandwidth_efficiency) + overhead


def forward_seconds(shape: ModelShape, devices: Devices, settings: PlanSettings, tokens: float, n: int = 1):
    """2·N_active FLOPs per token over `n` devices at `train_mfu` of the peak (prefill, scoring)."""
    if not devices.tflops:
        return None
    return 2 * shape.active_params * tokens / (n * devices.tflops * 1e12 * settings.train_mfu)
