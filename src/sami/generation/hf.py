"""Generation with a transformers causal LM in this process: batched, left-padded, KV-cached.

The decoding loop is written out (prefill, then one token per step) rather than calling `model.generate`, so
that each sequence leaves the batch as soon as it is finished (EOS, a stop string or the token budget), and
so that sampling draws from one random generator per prompt: with a seed, a prompt's sampled text does not
depend on which other prompts share its batch.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sami.errors import SamiInputError
from sami.generation.base import (
    Completion,
    GenerationSettings,
    Prompt,
    check_request,
    cut_at_stop,
    prompt_seeds,
)
from sami.lm_head import accumulation_dtype
from sami.models import accepts_logits_to_keep, left_pad, load_model, load_tokenizer
from sami.prompts import render_prompt
from sami.tokens import encode_prompts

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 16  # tokens: a shorter common prefix is not worth its own forward


class HFGenerator:
    """A `TextGenerator` over a transformers model and its tokenizer.

    Prompts are tokenized (chat messages through the tokenizer's chat template), sorted by length and run
    in batches of `batch_size` with left padding; results come back in the original order. A token prefix that
    all prompts of a batch share (a template's instructions) is computed once (`share_prefix`). The prompts of
    a batch are prefilled `prefill_batch_size` at a time into one KV cache (default: 8 on CPU, where that is
    ~10% faster than one large forward, and the whole batch elsewhere). The model is used as it is (dtype,
    device); `from_settings` loads one when given a reference.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        prefill_batch_size: int | None = None,
        share_prefix: bool = True,
        logprobs: bool = False,
    ):
        if batch_size < 1:
            raise SamiInputError(f"generation.batch_size: must be >= 1, got {batch_size}")
        if prefill_batch_size is not None and prefill_batch_size < 1:
            raise SamiInputError(f"generation.prefill_batch_size: must be >= 1, got {prefill_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        if prefill_batch_size is None:
            prefill_batch_size = 8 if _device_type(model) == "cpu" else batch_size
        self.prefill_batch_size = prefill_batch_size
        self.share_prefix = share_prefix
        self.logprobs = logprobs  # sum the log-probs of the generated tokens into Completion.logprob
        # A peft model injects its adapters into the base model's modules; its forward is that of the base.
        self._net = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(self._net.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = accepts_logits_to_keep(self._net)
        probe = self._new_cache(1)  # prefix sharing and prefill in parts need this module's cache layers
        self._own_cache = probe is not None and all(hasattr(layer, "join_rows") for layer in probe.layers)
        self.eos_ids = _eos_ids(model, tokenizer)
        self._anchor: list[int] | None = None  # token ids of "a", for decode_continuation
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    @classmethod
    def from_settings(cls, settings: GenerationSettings, *, model: Any = None, tokenizer: Any = None) -> HFGenerator:
        """Use a loaded `model` + `tokenizer`, or load `model` (a reference; default `settings.model`)."""
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        if model is None or isinstance(model, str | os.PathLike):
            ref = str(model if model is not None else settings.model)
            remote = settings.trust_remote_code
            if tokenizer is None:
                tokenizer = load_tokenizer(ref, trust_remote_code=remote)
            device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_model(ref, dtype=settings.dtype, device=device, trust_remote_code=remote)
            model.eval()
        elif tokenizer is None:
            raise SamiInputError("the hf generator needs the tokenizer of the model it was given")
        return cls(
            model,
            tokenizer,
            batch_size=settings.batch_size,
            prefill_batch_size=settings.prefill_batch_size,
            share_prefix=settings.share_prefix,
        )

    # ---- prompts -------------------------------------------------------------------------------------
    def prompt_text(self, prompt: Prompt) -> str:
        """The model's input text: a string as it is, chat messages through the chat template."""
        return render_prompt(prompt, self.tokenizer)

    def encode(self, prompt: Prompt, text: str | None = None) -> list[int]:
        """Token ids of a prompt: a string as scoring encodes it (`sami.tokens.encode_prompts`: the tokenizer's
        special tokens, one BOS at most); a chat text has its special tokens already. `text` is the prompt's
        `prompt_text`, if already known."""
        if isinstance(prompt, str):
            return encode_prompts(self.tokenizer, [prompt])[0]
        text = text if text is not None else self.prompt_text(prompt)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    # ---- generation ----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[Prompt],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[Completion]:
        """Generate one completion per prompt. `min_new_tokens` forbids EOS and stop strings before that
        many tokens (used by benchmarks to force a fixed length)."""
        check_request(prompts, max_new_tokens, temperature, top_p)
        if not prompts:
            return []
        stop = [s for s in (stop or []) if s]
        texts = [self.prompt_text(p) for p in prompts]
        ids = [self.encode(p, t) for p, t in zip(prompts, texts, strict=True)]
        for i, x in enumerate(ids):
            if not x:
                raise SamiInputError(f"prompts[{i}]: empty prompt (no tokens)")
        seeds: list[int | None] = [None] * len(prompts)
        if temperature > 0:
            seeds = list(prompt_seeds(secrets.randbits(63) if seed is None else seed, texts))
        # Longest first: similar lengths share a batch (little padding) and memory peaks at the start.
        order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
        results: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    outs = self._generate_batch(
                        [ids[i] for i in batch],
                        [seeds[i] for i in batch],
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        stop=stop,
                        min_new_tokens=min_new_tokens,
                    )
                    for i, c in zip(batch, outs, strict=True):
                        results[i] = c
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _new_cache(self, capacity: int):
        """A KV cache whose full-attention layers are allocated once for `capacity` tokens (None: the model's own)."""
        try:
            cache = DynamicCache(config=self._net.config)
        except Exception:  # an unusual config: let the model build its cache
            return None
        if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
            cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
        return cache

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        kwargs = {self._cache_arg: cache} if cache is not None else {}
        if self._keep_arg:
            kwargs["logits_to_keep"] = 1
        out = self._net(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kwargs
        )
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1, :], new_cache

    def _shared_prefix(self, batch_ids: list[list[int]]) -> int:
        """Length of the token prefix all prompts of a batch share, when it is worth computing once (else 0).
        Every prompt keeps at least one token of its own, whose logits start its generation."""
        if not self.share_prefix or len(batch_ids) < 2 or not self._own_cache:
            return 0
        shared = min(len(os.path.commonprefix(batch_ids)), min(len(x) for x in batch_ids) - 1)
        return shared if shared >= MIN_SHARED_PREFIX else 0

    def _prefill(self, input_ids, attention_mask, position_ids, capacity: int, prefix: list[int]):
        """Run the prompts through the model and return (last logits, KV cache).

        `prefix` (tokens every prompt starts with, already cut from `input_ids`) runs once, and its cache is
        copied to every row. The rest runs `prefill_batch_size` rows at a time; the rows' caches are then
        joined into one. Both need this module's preallocated cache; without it, one plain forward.
        """
        n, rows = len(input_ids), self.prefill_batch_size
        if not self._own_cache:
            return self._forward(input_ids, attention_mask, position_ids, self._new_cache(capacity))
        shared = None
        if prefix:
            ids = torch.tensor([prefix], dtype=torch.long, device=input_ids.device)
            _, shared = self._forward(ids, None, None, self._new_cache(capacity))
        logits, caches = [], []
        for s in range(0, n, rows):
            cache = self._new_cache(capacity)
            if shared is not None:
                cache.layers = [layer.repeated(len(input_ids[s : s + rows])) for layer in shared.layers]
            lg, cache = self._forward(
                input_ids[s : s + rows], attention_mask[s : s + rows], position_ids[s : s + rows], cache
            )
            logits.append(lg)
            caches.append(cache)
        first = caches[0]
        if len(caches) > 1:
            for i, layer in enumerate(first.layers):
                layer.join_rows([c.layers[i] for c in caches[1:]])
        return torch.cat(logits), first

    def _generate_batch(
        self,
        batch_ids: list[list[int]],
        seeds: list[int | None],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        min_new_tokens: int,
    ) -> list[Completion]:
        device = self._net.device
        n = len(batch_ids)
        shared = self._shared_prefix(batch_ids)
        input_ids, mask = left_pad([x[shared:] for x in batch_ids], self.pad_id)
        width = input_ids.shape[1]
        # Positions count real tokens only, so a left-padded prompt sees the same positions as an unpadded one
        # (with a shared prefix, the padding sits between the prefix and each prompt's own tokens).
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + shared
        mask = torch.cat([mask.new_ones((n, shared)), mask], dim=1)
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        next_pos = positions[:, -1] + 1

        generators = None
        if temperature > 0:
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]  # type: ignore[arg-type]
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=device)
        window = max((len(s) for s in stop), default=0) + 4  # tokens enough to hold any stop string

        generated: list[list[int]] = [[] for _ in range(n)]
        finish: list[str] = ["length"] * n
        ended_eos = [False] * n
        logps = [0.0] * n
        active = list(range(n))  # batch rows still generating -> their index in this batch
        logits, cache = self._prefill(
            input_ids, mask, positions, shared + width + max_new_tokens, batch_ids[0][:shared]
        )
        for step in range(max_new_tokens):
            logits = logits.to(accumulation_dtype(logits.dtype))  # float32, or float64 for a float64 model
            step_logps = torch.log_softmax(logits, dim=-1) if self.logprobs else None
            if step < min_new_tokens and len(eos):
                logits[:, eos] = float("-inf")
            tokens = self._pick(logits, temperature, top_p, [generators[r] for r in active] if generators else None)
            if step_logps is not None:
                picked = step_logps.gather(-1, tokens[:, None])[:, 0].tolist()
                for row, lp in zip(active, picked, strict=True):
                    logps[row] += lp
            keep: list[int] = []
            for k, (row, tok) in enumerate(zip(active, tokens.tolist(), strict=True)):
                if tok in self.eos_ids:
                    finish[row] = "stop"
                    ended_eos[row] = True
                    continue
                generated[row].append(tok)
                if stop and step + 1 >= min_new_tokens:
                    tail = self.tokenizer.decode(generated[row][-window:], skip_special_tokens=True)
                    if any(s in tail for s in stop):
                        finish[row] = "stop"
                        continue
                keep.append(k)
            if not keep or step + 1 == max_new_tokens:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask, tokens, next_pos = mask[index], tokens[index], next_pos[index]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits, cache = self._forward(tokens[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1

        out = []
        for row in range(n):
            text, found = cut_at_stop(self.decode_continuation(generated[row]), stop)
            reason = "stop" if found else finish[row]
            out.append(
                Completion(
                    text=text,
                    num_tokens=len(generated[row]),
                    finish_reason=reason,
                    ended_with_eos=ended_eos[row] and not found,
                    token_ids=list(generated[row]),
                    logprob=logps[row] if self.logprobs else None,
                )
            )
        return out

    def decode_continuation(self, ids: list[int]) -> str:
        """The text of generated ids as written after a prompt, leading whitespace included.

        Decoding the ids alone drops a leading space for SentencePiece tokenizers (`▁Sure` -> "Sure"); decoding
        them after an anchor token ("a") and removing the anchor's text keeps it, for byte-level BPE alike.
        """
        plain = self.tokenizer.decode(ids, skip_special_tokens=True)
        if self._anchor is None:
            anchor = list(self.tokenizer("a", add_special_tokens=False).input_ids)
            ok = self.tokenizer.decode(anchor, skip_special_tokens=True) == "a"
            self._anchor = anchor if ok else []
        if not self._anchor or not ids:
            return plain
        joined = self.tokenizer.decode(self._anchor + list(ids), skip_special_tokens=True)
        return joined[1:] if joined.startswith("a") and joined[1:].strip() == plain.strip() else plain

    @staticmethod
    def _pick(logits, temperature: float, top_p: float, generators):
        """Next token per row: argmax when greedy, else a draw from each row's own generator."""
        if temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)
        probs = probs.cpu()
        picks = [torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(generators)]
        return torch.cat(picks).to(logits.device)


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` that writes new keys/values into storage allocated once for `capacity` tokens.

    The stock layer concatenates the whole cache with each new token, copying it at every decoding step;
    here `keys`/`values` are views of the filled part of the storage. It grows (by copying) only if a
    sequence outgrows `capacity`.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._k = self._v = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if self._k is None or end > self._k.shape[-2]:
            size = max(end, self.capacity)
            k = key_states.new_empty((*key_states.shape[:2], size, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:2], size, value_states.shape[-1]))
            if start:
                k[:, :, :start] = self._k[:, :, :start]
                v[:, :, :start] = self._v[:, :, :start]
            self._k, self._v = k, v
        self._k[:, :, start:end] = key_states
        self._v[:, :, start:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices) -> None:
        if self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def repeated(self, rows: int):
        """A new layer holding this layer's single row copied `rows` times (a prefix shared by a batch)."""
        if self._k is None or self._k.shape[0] != 1:
            raise ValueError("only a one-row cache can be repeated")
        layer = PreallocatedLayer(self.capacity)
        layer.lazy_initialization(self.keys, self.values)
        layer._k, layer._v = self._k.repeat(rows, 1, 1, 1), self._v.repeat(rows, 1, 1, 1)
        layer.length = self.length
        layer.keys, layer.values = layer._k[:, :, : self.length], layer._v[:, :, : self.length]
        return layer

    def join_rows(self, others: list) -> None:
        """Append the rows of other layers filled to the same length (a batch prefilled in parts)."""
        if any(o.length != self.length for o in others):
            raise ValueError("only caches of the same length can be joined")
        self._k = torch.cat([self._k, *(o._k for o in others)])
        self._v = torch.cat([self._v, *(o._v for o in others)])
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("this cache only grows")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("this cache does not repeat rows")


def _device_type(model: Any) -> str:
    """ "cpu", "cuda", ... of the model's parameters ("cpu" when it cannot be told)."""
    device = getattr(model, "device", None)
    return getattr(device, "type", None) or "cpu"


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the model's generation config EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    return ids
