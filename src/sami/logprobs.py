"""Response log-probabilities under many prompts at once, with prefix sharing.

Token convention (the same everywhere in sami: the trainer's collator, the evaluation's MI, `logprob_matrix`
and `batched_logprob_matrices`; the rule and why it was chosen are in `sami.tokens`):

* prompt ids   = `tokenizer(prompt).input_ids`, without adding special tokens again to a text that already starts
  with BOS (a rendered chat template): one BOS, as in generation;
* response ids = the ids the model generated after the prompt: `prompt + separator + response` is tokenized as one
  text and the ids after the prompt's own ids are the response's (the separator restores the whitespace the
  sampler stripped; a byte-level BPE model writes `ĠSure` after "Assistant:"). Response j is tokenized after its
  own prompt j (the one it was written under) and the same ids are scored under every prompt;
* EOS is appended by the policy `eos`: "generated" (default; only where the model ended with EOS), "always" or
  "never" (`include_eos=True/False` is the older spelling of the last two);
* the model sees `prompt ids + response ids` (concatenated ids), and only response tokens are scored:
  `log π(response | prompt) = Σ_t log π(r_t | prompt, r_<t)` (`normalize="sum"`) or that sum divided by the
  number of response tokens (`normalize="mean"`).

Prefix sharing: instead of one padded sequence per (prompt, response) pair, each row of the batch holds one
prompt once, followed by every response of its query. A 4D attention mask (boolean for sdpa, a FlexAttention
block mask for flex_attention, additive in the model's dtype for eager) lets each response token see the
prompt and the earlier tokens of its own response only, `position_ids` restart after the
prompt for each response, and padding is masked. Prompts are left-padded so that all responses sit in the last
columns; the LM head runs only there (`logits_to_keep`, through the model's own forward, so DDP and peft wrappers
work), and the log-softmax is taken in float32 for the predicted tokens only; for large batches the head and
log-softmax run in chunks that keep no full-vocabulary logits (`sami.lm_head`). Attention must be `sdpa`,
`eager` or `flex_attention` (a custom 4D mask cannot go through flash attention). The packing and the masks are
in `sami.prefix_packing`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sami.errors import SamiInputError
from sami.lm_head import (
    ReferenceStates,
    accumulation_dtype,
    resolve_chunk_size,
    run_chunked_head,
    supports_chunked_head,
)
from sami.models import accepts_logits_to_keep
from sami.prefix_packing import attention_mask_for, pack_prefix_shared
from sami.tokens import encode_prompts, encode_responses, eos_flags, resolve_eos

log = logging.getLogger(__name__)

NORMALIZE = ("mean", "sum")
_MASK_ATTENTION = ("sdpa", "eager", "flex_attention")


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt ids (`sami.tokens.encode_prompts`): the tokenizer's own special tokens, one BOS at most."""
    return encode_prompts(tokenizer, prompts)


def tokenize_responses(
    tokenizer,
    responses: Sequence[str],
    *,
    prompts: Sequence[str],
    eos: str | None = None,
    include_eos: bool | None = None,
    separators: Sequence[str | None] | None = None,
    ended_with_eos: Sequence[Any] | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    where: str = "",
) -> list[list[int]]:
    """Response ids: `responses[j]` as the model wrote it after `prompts[j]` (`sami.tokens.encode_responses`),
    plus EOS as the policy `eos` (or the older `include_eos`) says, `ended_with_eos[j]` for "generated"."""
    flags = eos_flags(resolve_eos(eos, include_eos), len(responses), ended_with_eos)
    return encode_responses(
        tokenizer, prompts, responses, separators=separators, eos=flags, prompt_ids=prompt_ids, where=where
    )


@dataclass
class EncodedExamples:
    """Token ids of B examples: `prompt_ids[b][i]` and `response_ids[b][j]`, after validation."""

    ids: list[str]
    prompt_ids: list[list[list[int]]]
    response_ids: list[list[list[int]]]
    n_truncated_prompts: int = 0


def encode_examples(
    tokenizer,
    prompts: Sequence[Sequence[str]],
    responses: Sequence[Sequence[str]],
    *,
    eos: str | None = None,
    include_eos: bool | None = None,
    separators: Sequence[Sequence[str | None] | None] | None = None,
    ended_with_eos: Sequence[Sequence[Any] | None] | None = None,
    max_prompt_length: int | None = None,
    truncate_prompt_left: bool = False,
    max_response_length: int | None = None,
    ids: Sequence[Any] | None = None,
    min_constitutions: int = 2,
) -> EncodedExamples:
    """Tokenize B examples with the module's token convention and validate them.

    Response j of example b is tokenized after its own prompt `prompts[b][j]`, with `separators[b]` (per
    response; None: inferred) and EOS by the policy `eos` (`ended_with_eos[b]` per response for "generated").
    Raises `SamiInputError` naming the example id for: a prompts/responses count mismatch, fewer than
    `min_constitutions` prompts, an empty prompt or response, a response longer than `max_response_length`
    (responses are never truncated), or a prompt longer than `max_prompt_length` unless `truncate_prompt_left`
    (then the prompt keeps its last `max_prompt_length` tokens, after its BOS token if it starts with one, and the
    count is returned).
    """
    policy = resolve_eos(eos, include_eos)
    n_examples = len(prompts)
    for name, per_example in (("separators", separators), ("ended_with_eos", ended_with_eos)):
        if per_example is not None and len(per_example) != n_examples:
            raise SamiInputError(f"got {len(per_example)} {name} lists for {n_examples} examples")
    if len(prompts) != len(responses):
        raise SamiInputError(f"got {len(prompts)} prompt lists but {len(responses)} response lists")
    ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
    if len(ids) != len(prompts):
        raise SamiInputError(f"got {len(ids)} ids for {len(prompts)} examples")
    out = EncodedExamples(ids=ids, prompt_ids=[], response_ids=[])
    for b, (ex_id, ps, rs) in enumerate(zip(ids, prompts, responses, strict=True)):
        where = f"example {ex_id}"
        for name, texts in (("prompts", ps), ("responses", rs)):
            if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
                raise SamiInputError(f"{where}: '{name}' must be a list of strings")
        if len(ps) != len(rs):
            raise SamiInputError(f"{where}: {len(ps)} prompts but {len(rs)} responses (need one response per prompt)")
        if len(ps) < min_constitutions:
            raise SamiInputError(f"{where}: needs at least {min_constitutions} constitutions, got C={len(ps)}")
        for j, r in enumerate(rs):
            if not r.strip():
                raise SamiInputError(f"{where}: response {j} is empty")
        p_ids = tokenize_prompts(tokenizer, ps)
        r_ids = tokenize_responses(
            tokenizer,
            rs,
            prompts=ps,
            eos=policy,
            separators=separators[b] if separators is not None else None,
            ended_with_eos=ended_with_eos[b] if ended_with_eos is not None else None,
            prompt_ids=p_ids,
            where=where,
        )
        for i, p in enumerate(p_ids):
            if not p:
                raise SamiInputError(f"{where}: prompt {i} is empty (no tokens)")
            if max_prompt_length is not None and len(p) > max_prompt_length:
                if not truncate_prompt_left:
                    raise SamiInputError(
                        f"{where}: prompt {i} has {len(p)} tokens > max_prompt_length={max_prompt_length} "
                        "(set truncate_prompt_left to cut prompts from the left)"
                    )
                bos = tokenizer.bos_token_id
                keep_bos = bos is not None and p[0] == bos and max_prompt_length > 1
                p_ids[i] = ([bos] if keep_bos else []) + p[len(p) - max_prompt_length + keep_bos :]
                out.n_truncated_prompts += 1
        for j, r in enumerate(r_ids):
            if max_response_length is not None and len(r) > max_response_length:
                raise SamiInputError(
                    f"{where}: response {j} has {len(r)} tokens > max_response_length={max_response_length} "
                    "(responses are never truncated; raise the limit or drop the example)"
                )
        out.prompt_ids.append(p_ids)
        out.response_ids.append(r_ids)
    return out


def unwrap_model(model):
    """The plain transformers model inside DDP/DataParallel, DeepSpeed engine and peft wrappers."""
    while True:
        if isinstance(model, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "DeepSpeedEngine" and hasattr(model, "module"):  # ZeRO: Trainer's model
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def _check_model(base) -> bool:
    """Check the attention implementation; return whether the forward takes `logits_to_keep`."""
    impl = getattr(base.config, "_attn_implementation", None)
    if impl is not None and impl not in _MASK_ATTENTION:
        raise ValueError(
            f"prefix-shared log-probs need a 4D attention mask: load the model with attn_implementation='sdpa', "
            f"'eager' or 'flex_attention' (it uses {impl!r})"
        )
    return accepts_logits_to_keep(base)


def packed_logprobs(
    model,
    packed: Mapping[str, Any],
    *,
    normalize: str = "mean",
    return_logits: bool = False,
    chunk_size: int | None = None,
    reference: ReferenceStates | None = None,
    dense_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run the model on a `pack_prefix_shared` batch; return the [R, M] log-prob matrix.

    `model` may be wrapped (DDP, FSDP, peft): it is called through its own forward, with `logits_to_keep` so that
    the LM head runs on the response columns only. The head and log-softmax run in chunks of `chunk_size`
    positions (`sami.lm_head`; None = automatic, 0 = unchunked) where the model allows it. With `reference`
    (from `reference_states`), also return the mean over the K predicting positions of KL(π || π_ref) (chunked).
    With `return_logits` (unchunked), also return the [K, V] logits of the K positions that predict a response
    token (`predict_mask`). `dense_mask` uses the dense additive attention mask whatever the attention backend.
    """
    if normalize not in NORMALIZE:
        raise SamiInputError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
    base = unwrap_model(model)
    takes_keep = _check_model(base)
    device = packed["input_ids"].device
    n_rows, n_logits = int(packed["n_rows"]), int(packed["n_logits"])
    chunked = not return_logits and takes_keep and head_chunk_size(model, packed, chunk_size) > 0
    chunk = head_chunk_size(model, packed, chunk_size) if chunked else 0
    if reference is not None and not chunked:
        raise ValueError("a chunked KL reference needs the chunked head (chunk_size != 0 and a plain linear head)")

    def call():
        return model(
            input_ids=packed["input_ids"],
            attention_mask=attention_mask_for(base, packed["segment_ids"].to(device), dense=dense_mask),
            position_ids=packed["position_ids"].to(device),
            use_cache=False,
            **({"logits_to_keep": n_logits} if takes_keep else {}),
        )

    if chunked:
        head = base.get_output_embeddings()
        token_logps, kl = run_chunked_head(call, head, packed, chunk_size=chunk, reference=reference)
        matrix = _matrix(token_logps, packed, normalize)
        return (matrix, kl.mean()) if reference is not None else matrix
    logits = call().logits[:, -n_logits:]
    if logits.shape[:2] != (n_rows, n_logits):
        raise ValueError(f"unexpected logits of shape {tuple(logits.shape)} from {type(base).__name__}")
    logits = logits.reshape(n_rows * n_logits, -1)
    target_index = packed["target_index"].to(device)
    target_ids = packed["target_ids"].to(device)
    # float32 (float64 for a float64 model) log-softmax, only where a target needs it: logit(target) - logsumexp(row).
    logits32 = logits.to(accumulation_dtype(logits.dtype))
    lse = torch.logsumexp(logits32, dim=-1)
    token_logps = logits32[target_index, target_ids] - lse[target_index]
    matrix = _matrix(token_logps, packed, normalize)
    if return_logits:
        return matrix, logits[packed["predict_mask"].to(device).flatten()]
    return matrix


def head_chunk_size(model, packed: Mapping[str, Any], chunk_size: int | None = None) -> int:
    """The chunk size `packed_logprobs` uses for this model and batch (0: the unchunked path)."""
    base = unwrap_model(model)
    if not supports_chunked_head(base):
        return 0
    return resolve_chunk_size(chunk_size, base.config.vocab_size, int(packed["predict_mask"].sum()))


def _matrix(token_logps: torch.Tensor, packed: Mapping[str, Any], normalize: str) -> torch.Tensor:
    """Sum (or mean) the per-token log-probs of each (row, response) pair into the [R, M] matrix."""
    target_pair = packed["target_pair"].to(token_logps.device)
    n_rows, n_resp = int(packed["n_rows"]), int(packed["n_responses"])
    sums = torch.zeros(n_rows * n_resp, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, target_pair, token_logps)
    if normalize == "mean":
        sums = sums / torch.bincount(target_pair, minlength=n_rows * n_resp).to(sums.dtype)
    return sums.view(n_rows, n_resp)


def reference_states(model, packed: Mapping[str, Any], *, shares_head: bool = False) -> ReferenceStates:
    """The reference model's hidden states at the K predicting positions (no gradient), and its head weights.

    `shares_head`: the reference is the policy itself with something switched off (peft's `disable_adapter`),
    so the policy's head is used inside the policy's forward (where FSDP has gathered it) instead of this one.
    """
    base = unwrap_model(model)
    takes_keep = _check_model(base)
    if not (takes_keep and supports_chunked_head(base)):
        raise ValueError(f"{type(base).__name__} does not support the chunked LM head")
    device = packed["input_ids"].device
    head = base.get_output_embeddings()

    def call():
        return model(
            input_ids=packed["input_ids"],
            attention_mask=attention_mask_for(base, packed["segment_ids"].to(device)),
            position_ids=packed["position_ids"].to(device),
            use_cache=False,
            logits_to_keep=int(packed["n_logits"]),
        )

    with torch.no_grad():
        hidden = run_chunked_head(call, head, packed, chunk_size=1, hidden_only=True)
    if shares_head:
        return ReferenceStates(hidden)
    bias = head.bias.detach() if head.bias is not None else None
    return ReferenceStates(hidden, head.weight.detach(), bias)


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def logprob_matrix(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    normalize: str = "mean",
    eos: str | None = None,
    include_eos: bool | None = None,
    separators: Sequence[str | None] | None = None,
    ended_with_eos: Sequence[Any] | None = None,
) -> torch.Tensor:
    """`out[i, j] = log π(responses[j] | prompts[i])`, shape [len(prompts), len(responses)], differentiable.

    What is scored (module docstring): response j's ids are those it gets when written after its own prompt,
    `prompts[j]` (`prompts[0]` when the matrix is not square), as one text `prompt + separator + response`
    (`separators[j]`, default inferred: " " after a prompt that does not end in whitespace); they are scored after
    every prompt's ids (one BOS). EOS: `eos="generated"` (default) appends it to response j only when
    `ended_with_eos[j]` is True (none when not given), "always" to all, "never" to none; `include_eos=True/False`
    means "always"/"never". `normalize="mean"` divides by the response token count (EOS included), `"sum"` keeps
    the plain sum. Computed with prefix sharing (see the module docstring).
    """
    if not prompts or not responses:
        raise SamiInputError("logprob_matrix needs at least one prompt and one response")
    for j, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise SamiInputError(f"response {j} is empty or not a string")
    prompt_ids = tokenize_prompts(tokenizer, prompts)
    square = len(prompts) == len(responses)
    own = list(prompts) if square else [prompts[0]] * len(responses)
    response_ids = tokenize_responses(
        tokenizer,
        responses,
        prompts=own,
        eos=eos,
        include_eos=include_eos,
        separators=separators,
        ended_with_eos=ended_with_eos,
        prompt_ids=prompt_ids if square else [prompt_ids[0]] * len(responses),
    )
    device = unwrap_model(model).get_input_embeddings().weight.device
    packed = pack_prefix_shared(prompt_ids, [response_ids], [0] * len(prompt_ids), pad_token_id=_pad_id(tokenizer))
    packed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
    return packed_logprobs(model, packed, normalize=normalize)


def batched_logprob_matrices(
    model,
    tokenizer,
    prompts: Sequence[Sequence[str]],
    responses: Sequence[Sequence[str]],
    *,
    normalize: str = "mean",
    eos: str | None = None,
    include_eos: bool | None = None,
    separators: Sequence[Sequence[str | None] | None] | None = None,
    ended_with_eos: Sequence[Sequence[Any] | None] | None = None,
    max_prompt_length: int | None = None,
    truncate_prompt_left: bool = False,
    max_response_length: int | None = None,
    ids: Sequence[Any] | None = None,
) -> torch.Tensor:
    """B SAMI matrices at once: `out[b, i, j] = log π(responses[b][j] | prompts[b][i])`, shape [B, C, C].

    Same token convention and normalisation as `logprob_matrix`: response j of example b is tokenized after
    `prompts[b][j]` with `separators[b][j]`, EOS by `eos` and `ended_with_eos[b][j]`. Every example needs C >= 2
    prompts and as many responses; C must be the same across the batch. Bad input raises `SamiInputError` naming
    the example id (`ids[b]`, else its index). Prompts longer than `max_prompt_length` are an error unless
    `truncate_prompt_left`, which keeps their last tokens and logs how many were cut. Responses are never truncated.
    """
    enc = encode_examples(
        tokenizer,
        prompts,
        responses,
        eos=eos,
        include_eos=include_eos,
        separators=separators,
        ended_with_eos=ended_with_eos,
        max_prompt_length=max_prompt_length,
        truncate_prompt_left=truncate_prompt_left,
        max_response_length=max_response_length,
        ids=ids,
    )
    if enc.n_truncated_prompts:
        log.warning("left-truncated %d prompt(s) to max_prompt_length=%s", enc.n_truncated_prompts, max_prompt_length)
    packed = pack_encoded(enc, pad_token_id=_pad_id(tokenizer))
    device = unwrap_model(model).get_input_embeddings().weight.device
    packed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
    n_examples, c = len(enc.ids), len(enc.prompt_ids[0])
    return packed_logprobs(model, packed, normalize=normalize).view(n_examples, c, c)


def pack_encoded(enc: EncodedExamples, *, pad_token_id: int) -> dict[str, Any]:
    """Pack B encoded examples into B*C prefix-shared rows (row b*C + i = prompt i of example b)."""
    sizes = {len(p) for p in enc.prompt_ids}
    if len(sizes) != 1:
        first = len(enc.prompt_ids[0])
        bad = next(i for i, p in zip(enc.ids, enc.prompt_ids, strict=True) if len(p) != first)
        raise SamiInputError(
            f"example {bad}: C={len(enc.prompt_ids[enc.ids.index(bad)])} differs from C={first} "
            "of the first example in the batch"
        )
    rows = [p for prompts in enc.prompt_ids for p in prompts]
    groups = [b for b, prompts in enumerate(enc.prompt_ids) for _ in prompts]
    return pack_prefix_shared(rows, enc.response_ids, groups, pad_token_id=pad_token_id)
