"""The token-boundary rule: which ids a prompt and a response become, the same in generation, training and scoring.

SAMI trains on `log π(y | x, c)` of responses the model wrote itself, so the scored ids must be the ids it
generated. Samples store the response *text* without its leading whitespace (what filters and judges read), so
the boundary between prompt and response has to be restored when the text is tokenized again:

* **prompt ids** (`encode_prompts`) = `tokenizer(prompt).input_ids`, except that a text that already starts with
  the tokenizer's BOS token (a chat template that renders `{{ bos_token }}`, as Llama-3 and Mistral do) is
  tokenized with `add_special_tokens=False`: one BOS, never two. The hf generator encodes its prompts with the
  same function, so generation and scoring see the same prompt ids.
* **response ids** (`encode_responses`) = the ids of `prompt + separator + response`, tokenized as one text, after
  the prompt's own ids. The separator is the whitespace the model wrote before the stored text: recorded by the
  sampler and the evaluation (`meta["separators"]`, `separators`), otherwise (hand-written samples, older files)
  inferred: `""` after a prompt that ends
  in whitespace (a chat template's `assistant\\n`) or for a response that starts with whitespace itself, else
  `" "` (a base prompt ending in "Assistant:", after which a byte-level BPE model writes `ĠSure`). If the
  prompt's ids are not a prefix of the joint ids (the prompt's last token would merge with the response's
  first characters, e.g. a prompt ending in a space, or a model that writes ":" after "Assistant:"), the model
  cannot have written the joint ids: its continuation started after the prompt's last token, so the response
  ids are those of `separator + response` tokenized on its own, and a warning names the example. (An error
  here would stop a whole run on one odd self-generated sample.)
* **EOS** is appended according to the policy `eos`: `"generated"` (default) only to responses the model ended
  with its EOS token (`meta["ended_with_eos"]`; a response cut at a stop string or by the token budget, or
  whose ending is unknown, gets none), `"always"` to every response, `"never"` to none. The older boolean
  `include_eos` maps to `"always"` / `"never"`. The authors' code differs by task: the TL;DR code scores EOS
  (`always`), the HH release code does not (`never`).

Why joint tokenization rather than tokenizing the response alone: tokenizers disagree on the first token of a
text on its own (byte-level BPE drops the space, SentencePiece adds `▁`), while the joint text is tokenized the
way the model saw such text in training, and the prefix check catches the rare prompt that ends mid-token. Why
not store the generated ids: samples are text that users filter, edit and write by hand; the joint rule gives the
generated ids for the model's own (canonically tokenized) output and a defined answer for any other text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sami.errors import SamiInputError

log = logging.getLogger(__name__)

EOS_POLICIES = ("generated", "always", "never")


def resolve_eos(eos: str | None = None, include_eos: bool | None = None) -> str:
    """The EOS policy: `eos` ("generated", "always", "never"; None = "generated"), or the older boolean
    `include_eos` (True = "always", False = "never") when it is given."""
    if include_eos is not None:
        mapped = "always" if include_eos else "never"
        if eos is not None and eos != mapped:
            raise SamiInputError(f"include_eos={include_eos} contradicts eos={eos!r}; set only eos")
        return mapped
    eos = "generated" if eos is None else eos
    if eos not in EOS_POLICIES:
        raise SamiInputError(f"eos: expected one of {', '.join(EOS_POLICIES)}, got {eos!r}")
    return eos


def eos_flags(policy: str, n: int, ended_with_eos: Sequence[Any] | None = None) -> list[bool]:
    """Whether each of `n` responses gets an EOS token under `policy` (`ended_with_eos`: per response, True when
    the model ended it with EOS; None or missing entries count as not ended)."""
    if policy == "always":
        return [True] * n
    if policy == "never" or ended_with_eos is None:
        return [False] * n
    if len(ended_with_eos) != n:
        raise SamiInputError(f"ended_with_eos: {len(ended_with_eos)} values for {n} responses")
    return [x is True for x in ended_with_eos]


def adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """False when `text` already starts with the tokenizer's BOS token (a rendered chat template holds it)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (isinstance(bos, str) and bos and text.startswith(bos))


def _tokenize(tokenizer: Any, texts: list[str], special: list[bool]) -> list[list[int]]:
    """Ids of each text, with or without the tokenizer's special tokens (one batched call per kind)."""
    out: list[list[int]] = [[] for _ in texts]
    for flag in (True, False):
        idx = [i for i, s in enumerate(special) if s is flag]
        if idx:
            ids = tokenizer([texts[i] for i in idx], add_special_tokens=flag).input_ids
            for i, x in zip(idx, ids, strict=True):
                out[i] = list(x)
    return out


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt ids: the tokenizer's own special tokens, unless the text already starts with BOS (see module)."""
    prompts = list(prompts)
    return _tokenize(tokenizer, prompts, [adds_special_tokens(tokenizer, p) for p in prompts])


def default_separator(prompt: str, response: str) -> str:
    """The separator when none is recorded: "" after trailing whitespace or before leading whitespace, else " "."""
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return ""
    return " "


def encode_responses(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    separators: Sequence[str | None] | None = None,
    eos: Sequence[bool] | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    where: str = "",
) -> list[list[int]]:
    """Ids of `responses[j]` written after `prompts[j]`: the joint ids of `prompt + separator + response` after
    the prompt's ids (`prompt_ids`, default `encode_prompts`), plus EOS where `eos[j]`.

    `separators[j]` None (or no `separators`) means `default_separator`. When the prompt's ids are not a prefix
    of the joint ids, response j is `separator + response` tokenized alone, and a warning names `where`
    ("example q0") and j.
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise SamiInputError(f"{where or 'responses'}: {len(prompts)} prompts for {len(responses)} responses")
    seps = list(separators) if separators is not None else [None] * len(responses)
    if len(seps) != len(responses):
        raise SamiInputError(f"{where or 'separators'}: {len(seps)} separators for {len(responses)} responses")
    seps = [default_separator(p, r) if s is None else str(s) for p, r, s in zip(prompts, responses, seps, strict=True)]
    special = [adds_special_tokens(tokenizer, p) for p in prompts]
    if prompt_ids is None:
        prompt_ids = _tokenize(tokenizer, prompts, special)
    joint = _tokenize(tokenizer, [p + s + r for p, s, r in zip(prompts, seps, responses, strict=True)], special)
    flags = list(eos) if eos is not None else [False] * len(responses)
    if any(flags) and getattr(tokenizer, "eos_token_id", None) is None:
        raise SamiInputError("EOS is to be scored but the tokenizer has no eos_token_id")
    out = []
    for j, (p, ids) in enumerate(zip(prompt_ids, joint, strict=True)):
        p = list(p)
        if ids[: len(p)] == p and len(ids) > len(p):
            ids = ids[len(p) :]
        else:
            log.warning(
                "%sresponse %d: the prompt's last token merges with the response (separator %r); scoring the "
                "response tokenized on its own",
                f"{where}: " if where else "",
                j,
                seps[j],
            )
            ids = list(tokenizer([seps[j] + responses[j]], add_special_tokens=False).input_ids[0])
        out.append(ids + ([int(tokenizer.eos_token_id)] if flags[j] else []))
    return out


def response_context(record: dict[str, Any], n: int) -> tuple[list[str | None] | None, list[Any] | None]:
    """(separators, ended_with_eos) of a record's `n` responses, from its top level or its `meta` (None: absent)."""
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    out = []
    for key in ("separators", "ended_with_eos"):
        value = record.get(key, meta.get(key))
        out.append(list(value) if isinstance(value, list) and len(value) == n else None)
    return out[0], out[1]


def written_separator(text: str) -> str:
    """The whitespace `text` starts with (what the model wrote before the stored, stripped response)."""
    return text[: len(text) - len(text.lstrip())]
