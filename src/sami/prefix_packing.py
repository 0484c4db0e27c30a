"""Prefix-shared packing and its attention masks: one prompt per row followed by every response of its query.

`pack_prefix_shared` lays the rows out (prompts left-padded so that all responses start at one column, position
ids restarting after the prompt for each response); the masks let each response token see the prompt and the
earlier tokens of its own response only: boolean for sdpa, a FlexAttention block mask for flex_attention,
additive in the model's dtype for eager (`attention_mask_for` picks one). `sami.logprobs` scores the packed rows.
Hand-written: transformers has no packing with one shared prompt per row and several masked responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.attention.flex_attention import create_block_mask

from sami.errors import SamiInputError


def pack_prefix_shared(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    row_groups: Sequence[int],
    *,
    pad_token_id: int,
) -> dict[str, Any]:
    """Lay out R rows: row r = `prompt_ids[r]` then every response of group `row_groups[r]`.

    Prompts are left-padded so that every row's responses start at the same column S; rows are right-padded to
    the longest. Only the last `n_logits = L - S + 1` columns predict response tokens, so the LM head runs on those
    alone. All groups must have the same number of responses M. Returns a dict of CPU tensors (what a collator
    returns): `input_ids`, `position_ids`, `segment_ids` ([R, L]; segment 0 = prompt, j + 1 = response j,
    -1 = padding), `predict_mask` ([R, n_logits]: columns that predict a response token), `target_ids`,
    `target_index` (row of the flattened [R * n_logits] logits that predicts each target) and `target_pair`
    (`r * M + j`), all [N] for the N response tokens, plus `n_rows`, `n_responses`, `n_logits` and `num_tokens`
    (non-padding tokens).
    """
    n_rows = len(prompt_ids)
    if len(row_groups) != n_rows:
        raise ValueError("row_groups must give one group per prompt row")
    n_resp = {len(response_ids[g]) for g in set(row_groups)}
    if len(n_resp) != 1:
        raise SamiInputError(f"all examples of a batch need the same number of responses, got {sorted(n_resp)}")
    (m,) = n_resp
    for r in range(n_rows):
        if not prompt_ids[r]:
            raise SamiInputError(f"prompt row {r} is empty (no tokens)")
        for j, resp in enumerate(response_ids[row_groups[r]]):
            if not resp:
                raise SamiInputError(f"response {j} of prompt row {r} is empty (no tokens)")
    start = max(len(p) for p in prompt_ids)  # S: the column where every row's responses begin
    totals = [sum(len(x) for x in response_ids[row_groups[r]]) for r in range(n_rows)]
    width = start + max(totals)
    n_logits = width - start + 1  # columns S-1 .. L-1
    input_ids = torch.full((n_rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    segment_ids = torch.full((n_rows, width), -1, dtype=torch.long)
    predict_mask = torch.zeros((n_rows, n_logits), dtype=torch.bool)
    t_index: list[int] = []
    t_ids: list[int] = []
    t_pair: list[int] = []
    for r in range(n_rows):
        prompt = list(prompt_ids[r])
        p = len(prompt)
        input_ids[r, start - p : start] = torch.tensor(prompt)
        position_ids[r, start - p : start] = torch.arange(p)
        segment_ids[r, start - p : start] = 0
        predict_mask[r, 0] = True  # the last prompt token predicts the first token of every response
        col = 0  # column relative to S - 1 (= index into this row's n_logits kept columns)
        for j, resp in enumerate(response_ids[row_groups[r]]):
            n = len(resp)
            input_ids[r, start + col : start + col + n] = torch.tensor(list(resp))
            position_ids[r, start + col : start + col + n] = torch.arange(p, p + n)
            segment_ids[r, start + col : start + col + n] = j + 1
            predict_mask[r, col + 1 : col + n] = True  # token k predicts token k + 1 of the same response
            base = r * n_logits
            t_index.extend([base] + [base + col + 1 + k for k in range(n - 1)])
            t_ids.extend(resp)
            t_pair.extend([r * m + j] * n)
            col += n
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "predict_mask": predict_mask,
        "target_ids": torch.tensor(t_ids, dtype=torch.long),
        "target_index": torch.tensor(t_index, dtype=torch.long),
        "target_pair": torch.tensor(t_pair, dtype=torch.long),
        "n_rows": n_rows,
        "n_responses": m,
        "n_logits": n_logits,
        "num_tokens": sum(len(p) for p in prompt_ids) + sum(totals),
    }


def prefix_attention_allowed(segment_ids: torch.Tensor) -> torch.Tensor:
    """The boolean [R, L, L] mask (True = attend): a token sees earlier tokens of its own segment and the prompt.

    Padding (segment -1) sees earlier padding only and is never seen by a real token, so no row is fully masked.
    """
    width = segment_ids.shape[1]
    idx = torch.arange(width, device=segment_ids.device)
    causal = idx[:, None] >= idx[None, :]
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    return causal[None] & ((seg_k == seg_q) | ((seg_k == 0) & (seg_q >= 0)))


def prefix_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The dense additive [R, 1, L, L] mask (0 / -inf) in `dtype`: the reference layout (and what eager needs)."""
    allowed = prefix_attention_allowed(segment_ids)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, float("-inf"))
    return mask[:, None]


def prefix_block_mask(segment_ids: torch.Tensor):
    """The same mask as a FlexAttention `BlockMask`: blocks no token of which may attend are skipped entirely."""
    segments = segment_ids.contiguous()

    def mask_mod(b, h, q, kv):
        seg_q, seg_k = segments[b, q], segments[b, kv]
        return (q >= kv) & ((seg_k == seg_q) | ((seg_k == 0) & (seg_q >= 0)))

    n_rows, width = segments.shape
    return create_block_mask(mask_mod, B=n_rows, H=None, Q_LEN=width, KV_LEN=width, device=segments.device)


def attention_mask_for(base, segment_ids: torch.Tensor, *, dense: bool = False):
    """The attention mask for `base`'s attention implementation: a `BlockMask` for flex_attention, a boolean
    [R, 1, L, L] mask for sdpa (a quarter of the float32 mask's bytes, and no float copy kept), the additive
    mask in the model's dtype for eager. `dense` forces the additive mask (the reference in tests)."""
    impl = getattr(base.config, "_attn_implementation", None)
    if not dense and impl == "flex_attention":
        return prefix_block_mask(segment_ids)
    if not dense and impl == "sdpa":
        return prefix_attention_allowed(segment_ids)[:, None]
    return prefix_attention_mask(segment_ids, base.get_input_embeddings().weight.dtype)
