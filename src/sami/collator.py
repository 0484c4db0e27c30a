"""The SAMI training examples: `samples.jsonl` read and checked (`load_samples`, `validate_samples`) and collated
into prefix-shared rows (`SAMICollator`, the `sami.logprobs` convention)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import datasets

from sami.errors import SamiInputError
from sami.io import iter_jsonl
from sami.logprobs import encode_examples, pack_encoded
from sami.sami_config import SAMIConfig
from sami.tokens import response_context

log = logging.getLogger(__name__)


@dataclass
class SAMICollator:
    """Tokenize examples with the `sami.logprobs` convention and pack them into prefix-shared rows.

    An example's optional "separators" and "ended_with_eos" (per response, from the sample's meta) restore the
    whitespace the model wrote before each response and say which responses it ended with EOS (`eos="generated"`).
    """

    tokenizer: Any
    eos: str | None = None
    include_eos: bool | None = None
    max_prompt_length: int | None = None
    max_response_length: int | None = None
    truncate_prompt_left: bool = False
    n_constitutions: int | None = None

    @classmethod
    def from_config(cls, tokenizer, config: SAMIConfig) -> SAMICollator:
        return cls(
            tokenizer,
            eos=config.eos,
            max_prompt_length=config.max_prompt_length,
            max_response_length=config.max_response_length,
            truncate_prompt_left=config.truncate_prompt_left,
            n_constitutions=config.n_constitutions,
        )

    def encode(self, examples: list[dict]):
        ids = [str(ex.get("id", i)) for i, ex in enumerate(examples)]
        if self.n_constitutions is not None:
            for ex_id, ex in zip(ids, examples, strict=True):
                if len(ex["prompts"]) != self.n_constitutions:
                    raise SamiInputError(
                        f"example {ex_id}: {len(ex['prompts'])} prompts but n_constitutions={self.n_constitutions}"
                    )
        return encode_examples(
            self.tokenizer,
            [ex["prompts"] for ex in examples],
            [ex["responses"] for ex in examples],
            eos=self.eos,
            include_eos=self.include_eos,
            separators=[ex.get("separators") for ex in examples],
            ended_with_eos=[ex.get("ended_with_eos") for ex in examples],
            max_prompt_length=self.max_prompt_length,
            truncate_prompt_left=self.truncate_prompt_left,
            max_response_length=self.max_response_length,
            ids=ids,
        )

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        enc = self.encode(examples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = pack_encoded(enc, pad_token_id=int(pad or 0))
        batch["ids"] = enc.ids
        batch["num_truncated_prompts"] = enc.n_truncated_prompts
        return batch


def load_samples(path: str | os.PathLike):
    """Read `samples.jsonl` into a `datasets.Dataset` with columns id, prompts, responses, plus separators and
    ended_with_eos (from the records' meta, None per response where a record has none) when any record has them.

    Every record needs a unique "id", "prompts" (C >= 2 strings) and "responses" (C non-empty strings); a bad
    record raises `SamiInputError` naming file:line.
    """
    records, seen = [], {}
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("id", "prompts", "responses"):
            if key not in rec:
                raise SamiInputError(f"{where}: missing field '{key}'")
        ex_id = str(rec["id"])
        if ex_id in seen:
            raise SamiInputError(f"{where}: duplicate id {ex_id!r} (first on line {seen[ex_id]})")
        seen[ex_id] = lineno
        prompts, responses = rec["prompts"], rec["responses"]
        for key, value in (("prompts", prompts), ("responses", responses)):
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise SamiInputError(f"{where}: '{key}' must be a list of strings (id {ex_id})")
        if len(prompts) != len(responses):
            raise SamiInputError(f"{where}: {len(prompts)} prompts but {len(responses)} responses (id {ex_id})")
        if len(prompts) < 2:
            raise SamiInputError(f"{where}: needs at least 2 constitutions, got C={len(prompts)} (id {ex_id})")
        for j, r in enumerate(responses):
            if not r.strip():
                raise SamiInputError(f"{where}: response {j} is empty (id {ex_id})")
        separators, ended = response_context(rec, len(responses))
        records.append(
            {
                "id": ex_id,
                "prompts": prompts,
                "responses": responses,
                "separators": separators or [None] * len(responses),
                "ended_with_eos": ended or [None] * len(responses),
            }
        )
    if not records:
        raise SamiInputError(f"{path}: no samples")
    for key in ("separators", "ended_with_eos"):
        if all(x is None for r in records for x in r[key]):
            for r in records:
                del r[key]
    return datasets.Dataset.from_list(records)


def validate_samples(dataset, tokenizer, config: SAMIConfig) -> int:
    """Tokenize every example once, before training, so bad input fails early. Returns the truncated-prompt count."""
    collator = SAMICollator.from_config(tokenizer, config)
    truncated = 0
    sizes = set()
    for ex in dataset:
        truncated += collator.encode([ex]).n_truncated_prompts
        sizes.add(len(ex["prompts"]))
        if len(sizes) > 1 and config.per_device_train_batch_size > 1:
            raise SamiInputError(
                f"example {ex['id']}: C={len(ex['prompts'])} differs from other examples; a batch needs one C "
                "(set n_constitutions or per_device_train_batch_size=1)"
            )
    if truncated:
        log.warning(
            "%d prompt(s) will be cut from the left to max_prompt_length=%s",
            truncated,
            config.max_prompt_length,
        )
    return truncated
