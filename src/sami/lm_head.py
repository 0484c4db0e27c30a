"""Chunked LM head: response-token log-probs (and a KL term) without keeping full-vocabulary logits.

The unchunked path (`packed_logprobs(..., chunk_size=0)`) lets the model's LM head produce [K, V] logits for the
K positions that predict a response token and keeps them, and their float32 log-softmax, for backward: at a
128k vocabulary that is the term that decides the batch size. Here the K hidden states go through the head in
chunks of positions. Per chunk, only the float32 log-prob of each target token (`z[t] - logsumexp(z)`) and, with
a reference, the per-position `KL(p || p_ref)` are kept; the backward recomputes the chunk's logits from the
saved hidden states and head weight (`ChunkedHeadLogprobs`, a custom `torch.autograd.Function`). The gradient
with respect to a chunk's logits is `Σ_t g_t (onehot(t) - p) + g_kl · p ⊙ (log p - log p_ref - KL)`.
With a frozen head (LoRA), no weight gradient is needed, so the forward stores the [K, H] products `p @ W` (and
the KL's) instead, and the backward does no recomputation at all.

Wrappers: the chunked head runs *inside the model's own forward*. `_override_head` replaces, for one call, the
forward of `model.get_output_embeddings()` so that where the model would compute logits it computes these
results instead, and the model returns them as its `logits`. So DDP (its unused-parameter search starts from the
forward's outputs), FSDP (FSDP1 and FSDP2 unshard the module that owns the head for its forward, and again for
the backward, which is triggered from the forward's outputs; the weight saved for backward is the gathered one,
exactly as `nn.Linear` saves it) and peft (the adapter-wrapped forward is the one called) all see an ordinary
forward whose output depends on the head weight. Models whose forward changes the logits after the head
(soft-capping, logit scales) or whose head is not a plain `nn.Linear` (a LoRA-adapted or `modules_to_save`
head) use the unchunked path, and so does a head with forward hooks (they expect to see logits), except FSDP2's
own: accelerate's FSDP2 wrapping makes `[final norm, lm_head]` an FSDP unit of their own (the head becomes an
`FSDPLinear` with FSDP's hooks). Under DeepSpeed ZeRO-3 (which hooks every module) the unchunked path is kept: the
chunked one did not reproduce the unsharded weights there (`_SHARDING_HOOK_MODULES`).

Why by hand: TRL's `selective_log_softmax` starts from logits that are already materialised; Liger-Kernel's
fused linear cross-entropy is a Triton (GPU-only) kernel that returns a mean loss, not per-token log-probs with
their own upstream gradients, nor a KL to another model's head. Neither covers SAMI's C×C matrix (one position
predicting the first token of all C responses) or runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

# Elements of one chunk's [chunk, V] float32 logits when the chunk size is automatic (32 MiB).
AUTO_CHUNK_ELEMENTS = 2**23
# Automatic mode chunks only when the kept [K, V] float32 logits would exceed this (256 MiB): below it they cost
# little memory, and the unchunked path saves the chunked backward's extra head matmul (the recomputation).
AUTO_MIN_LOGITS = 2**26
# config attributes of models whose forward changes the logits after the LM head
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scale")
# Where the forward hooks of FSDP2 (`fully_shard`) are defined: the chunked head is exact under them. DeepSpeed
# ZeRO-3's (`deepspeed.runtime.zero`) are not listed, so they keep the unchunked path: forced on under ZeRO-3 on 2 CPU
# processes, the chunked head trained weights 1e-4 away from the unsharded run (unchunked: 1.2e-6), cause not found.
_SHARDING_HOOK_MODULES = ("torch.distributed.fsdp",)


def auto_chunk_size(vocab_size: int) -> int:
    """Positions per chunk in automatic mode: about 32 MiB of float32 logits, 16 to 1024 rows."""
    return max(16, min(1024, AUTO_CHUNK_ELEMENTS // max(1, vocab_size)))


def resolve_chunk_size(chunk_size: int | None, vocab_size: int, n_positions: int | None = None) -> int:
    """`n > 0`: n positions per chunk; `0`: unchunked (returns 0); `None`: automatic, i.e. chunked with
    `auto_chunk_size` when the K = `n_positions` rows of logits would exceed `AUTO_MIN_LOGITS` elements (or K is
    not known), else unchunked."""
    if chunk_size is None:
        if n_positions is not None and n_positions * vocab_size <= AUTO_MIN_LOGITS:
            return 0
        return auto_chunk_size(vocab_size)
    if chunk_size < 0:
        raise ValueError(f"logprob_chunk_size must be >= 0 (0 = unchunked), got {chunk_size}")
    return int(chunk_size)


def _is_plain_linear(head) -> bool:
    """An `nn.Linear`, or one that FSDP2's `fully_shard` made an `FSDPLinear` (it swaps the class for a subclass
    of `(FSDPModule, Linear)`); a peft LoRA layer or `ModulesToSaveWrapper` is not."""
    cls = type(head)
    if cls is torch.nn.Linear:
        return True
    return cls.__bases__[-1:] == (torch.nn.Linear,) and all(_is_fsdp2_class(b) for b in cls.__bases__[:-1])


def _is_fsdp2_class(cls: type) -> bool:
    return cls.__module__.startswith(_SHARDING_HOOK_MODULES[0]) and cls.__name__ == "FSDPModule"


def _hook_module(hook) -> str:
    """The module that defines `hook`, under `functools.partial` and `functools.wraps` wrappers. (DeepSpeed's hooks,
    `deepspeed.runtime.zero` ones, some inside `deepspeed.utils.nvtx` closures, are not FSDP2's either way.)"""
    for _ in range(10):
        inner = getattr(hook, "func", None) or getattr(hook, "__wrapped__", None)
        if inner is None:
            break
        hook = inner
    return getattr(hook, "__module__", None) or ""


def _only_sharding_hooks(head) -> bool:
    """Whether every forward hook on `head` is FSDP2's: they gather the weight for the forward (and again for the
    backward) and never look at the output. Any other hook may expect to see (and edit) the logits."""
    hooks = [*head._forward_hooks.values(), *head._forward_pre_hooks.values()]
    return all(_hook_module(h).startswith(_SHARDING_HOOK_MODULES) for h in hooks)


def supports_chunked_head(base) -> bool:
    """Whether `base` (an unwrapped transformers model) has a plain linear head whose output is the logits
    (under FSDP2 the head is sharded and hooked by it: still a plain head; under ZeRO-3: not, see
    `_SHARDING_HOOK_MODULES`)."""
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None or not _is_plain_linear(head):
        return False
    if not _only_sharding_hooks(head):
        return False
    config = getattr(base, "config", None)
    for name in _LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, 0, 0.0, False):
            return False
    return True


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where log-softmax is taken: float32 for half and single precision weights, float64 for float64 ones."""
    return torch.promote_types(dtype, torch.float32)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A chunk's logits as the head computes them (model dtype), then in the accumulation dtype."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return logits.to(accumulation_dtype(logits.dtype))


class ChunkedHeadLogprobs(torch.autograd.Function):
    """`(target log-probs [N], KL [K] or empty)` from K hidden states, without keeping [K, V] logits.

    Inputs: `hidden` [K, H] and the head's `weight` [V, H] / `bias` [V] or None; `target_pos` [N] (row of
    `hidden` that predicts each target) and `target_ids` [N]; for a KL term the reference's `ref_hidden` [K, H]
    and head `ref_weight` / `ref_bias` (no gradient flows into them), else None; `chunk_size` positions per
    chunk. Outputs are float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target_pos, target_ids, ref_hidden, ref_weight, ref_bias, chunk_size):
        k, acc = hidden.shape[0], accumulation_dtype(weight.dtype)
        with_kl = ref_hidden is not None
        need_h = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])
        # frozen head (LoRA): the hidden-state gradient is linear in the upstream gradients; store its parts now
        store = need_h and not need_w
        order = torch.argsort(target_pos, stable=True)
        bounds = torch.searchsorted(
            target_pos[order], torch.arange(0, k + chunk_size, chunk_size, device=hidden.device)
        )
        bounds = bounds.tolist()
        out = torch.empty(target_pos.shape[0], dtype=acc, device=hidden.device)
        lse = torch.empty(k, dtype=acc, device=hidden.device)  # kept: the backward needs no reduction
        kl = torch.empty(k if with_kl else 0, dtype=acc, device=hidden.device)
        expect = torch.empty((k, hidden.shape[1]) if store else (0,), dtype=weight.dtype, device=hidden.device)
        expect_kl = torch.empty(
            (k, hidden.shape[1]) if store and with_kl else (0,), dtype=weight.dtype, device=hidden.device
        )
        for c, s in enumerate(range(0, k, chunk_size)):
            e = min(k, s + chunk_size)
            logp = _logits(hidden[s:e], weight, bias)
            lse[s:e] = torch.logsumexp(logp, dim=-1)
            logp -= lse[s:e, None]
            idx = order[bounds[c] : bounds[c + 1]]
            out[idx] = logp[target_pos[idx] - s, target_ids[idx]]
            if not (with_kl or store):
                continue
            p = logp.exp()
            if with_kl:
                ref = _logits(ref_hidden[s:e], ref_weight, ref_bias)
                ref -= torch.logsumexp(ref, dim=-1, keepdim=True)
                diff = logp.sub_(ref)  # log p - log p_ref (logp is not needed any more)
                del ref
                kl_c = torch.linalg.vecdot(p, diff)
                kl[s:e] = kl_c
                if store:
                    diff -= kl_c[:, None]
                    expect_kl[s:e] = (p * diff).to(weight.dtype) @ weight
            if store:
                expect[s:e] = p.to(weight.dtype) @ weight
        ctx.chunk_size = chunk_size
        ctx.store = store
        ctx.with_kl = with_kl
        ctx.bounds = bounds
        if store:
            ctx.save_for_backward(weight, target_pos, target_ids, expect, expect_kl)
        else:
            ctx.save_for_backward(
                hidden, weight, bias, target_pos, target_ids, order, lse, ref_hidden, ref_weight, ref_bias
            )
        return out, kl

    @staticmethod
    def backward(ctx, g_out, g_kl):
        if ctx.store:
            weight, target_pos, target_ids, expect, expect_kl = ctx.saved_tensors
            k, acc = expect.shape[0], accumulation_dtype(weight.dtype)
            g_pos = torch.zeros(k, dtype=acc, device=g_out.device).index_add_(0, target_pos, g_out)
            grad = -g_pos[:, None] * expect.to(acc)
            if ctx.with_kl:
                grad += g_kl[:, None] * expect_kl.to(acc)
            grad.index_add_(0, target_pos, g_out[:, None] * weight[target_ids].to(acc))
            return grad.to(weight.dtype), None, None, None, None, None, None, None, None
        hidden, weight, bias, target_pos, target_ids, order, lse, ref_hidden, ref_weight, ref_bias = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        k, chunk_size, bounds, acc = hidden.shape[0], ctx.chunk_size, ctx.bounds, accumulation_dtype(weight.dtype)
        g_pos = torch.zeros(k, dtype=acc, device=g_out.device).index_add_(0, target_pos, g_out)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        for c, s in enumerate(range(0, k, chunk_size)):
            e = min(k, s + chunk_size)
            logp = _logits(hidden[s:e], weight, bias)
            logp -= lse[s:e, None]
            p = logp.exp()
            if ctx.with_kl:
                ref = _logits(ref_hidden[s:e], ref_weight, ref_bias)
                ref -= torch.logsumexp(ref, dim=-1, keepdim=True)
                diff = logp.sub_(ref)
                del ref
                diff -= torch.linalg.vecdot(p, diff)[:, None]  # log p - log p_ref - KL
                diff.mul_(p).mul_(g_kl[s:e, None])
                grad_z = diff.sub_(p.mul_(g_pos[s:e, None]))
            else:
                del logp
                grad_z = p.mul_(-g_pos[s:e, None])
            idx = order[bounds[c] : bounds[c + 1]]
            grad_z.index_put_((target_pos[idx] - s, target_ids[idx]), g_out[idx], accumulate=True)
            if need_b:
                grad_b += grad_z.sum(0)
            grad_z = grad_z.to(weight.dtype)
            if need_h:
                torch.mm(grad_z, weight, out=grad_h[s:e])
            if need_w:
                torch.addmm(grad_w, grad_z.T, hidden[s:e], out=grad_w)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


def chunked_head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target_pos: torch.Tensor,
    target_ids: torch.Tensor,
    *,
    chunk_size: int,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target log-probs [N] (float32; float64 for a float64 head) and, with `ref_hidden`, the per-position
    KL(p || p_ref) [K] (else None)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if ref_hidden is not None:
        ref_hidden = ref_hidden.detach()
        ref_weight = (weight if ref_weight is None else ref_weight).detach()
        ref_bias = ref_bias.detach() if ref_bias is not None else None
    out, kl = ChunkedHeadLogprobs.apply(
        hidden, weight, bias, target_pos, target_ids, ref_hidden, ref_weight, ref_bias, int(chunk_size)
    )
    return out, (kl if ref_hidden is not None else None)


@dataclass
class ReferenceStates:
    """What the KL term needs from the reference model, per kept position: hidden states [K, H] and its head.

    `weight` / `bias` None: the reference shares the policy's head (peft with the adapter switched off), which
    is then taken inside the policy's forward, where wrappers have gathered it.
    """

    hidden: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@contextmanager
def _override_head(head: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]):
    """Replace `head.forward` for the duration of one model call (the module's hooks still run around it)."""
    had_own = "forward" in head.__dict__
    previous = head.__dict__.get("forward")
    head.forward = forward
    try:
        yield
    finally:
        if had_own:
            head.forward = previous
        else:
            del head.forward


def _kept_rows(packed: Mapping[str, Any], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the K predicting positions among R * n_logits, and each target's row among those K."""
    predict = packed["predict_mask"].to(device).flatten()
    rows = predict.nonzero().squeeze(1)
    compact = torch.cumsum(predict, 0) - 1
    return rows, compact[packed["target_index"].to(device)]


def run_chunked_head(
    call_model: Callable[[], Any],
    head: torch.nn.Module,
    packed: Mapping[str, Any],
    *,
    chunk_size: int,
    reference: ReferenceStates | None = None,
    hidden_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor:
    """Call the model (`call_model()`, which runs its forward with `logits_to_keep = n_logits`) with the chunked
    head in place of its LM head.

    Returns `(target log-probs [N], KL [K] or None)`, or with `hidden_only` the [K, H] hidden states of the kept
    positions (what a reference pass gives to `ReferenceStates`).
    """
    n_rows, n_logits = int(packed["n_rows"]), int(packed["n_logits"])
    device = head.weight.device
    rows, target_pos = _kept_rows(packed, device)
    target_ids = packed["target_ids"].to(device)
    n_targets = target_ids.shape[0]

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[0] != n_rows or hidden_states.shape[1] < n_logits:
            raise ValueError(f"unexpected hidden states of shape {tuple(hidden_states.shape)} at the LM head")
        flat = hidden_states[:, -n_logits:].reshape(n_rows * n_logits, -1)
        kept = flat[rows]
        if hidden_only:
            return kept[None]
        ref_hidden = ref_weight = ref_bias = None
        if reference is not None:
            ref_hidden = reference.hidden
            ref_weight, ref_bias = (
                (reference.weight, reference.bias)
                if reference.weight is not None
                else (
                    head.weight,
                    head.bias,
                )
            )
        out, kl = chunked_head_logprobs(
            kept,
            head.weight,
            head.bias,
            target_pos,
            target_ids,
            chunk_size=chunk_size,
            ref_hidden=ref_hidden,
            ref_weight=ref_weight,
            ref_bias=ref_bias,
        )
        return (torch.cat([out, kl]) if kl is not None else out)[None, :, None]

    with _override_head(head, forward):
        result = call_model().logits
    if hidden_only:
        return result[0]
    flat = result.reshape(-1)
    expected = n_targets + (int(rows.shape[0]) if reference is not None else 0)
    if flat.shape[0] != expected:
        raise ValueError(f"the model changed the chunked head's output (got {tuple(result.shape)})")
    return flat[:n_targets], (flat[n_targets:] if reference is not None else None)
