"""IFEval's protocol: its prompts, strict and loose scoring, and the four accuracies.

As IFEval's `evaluation_lib.py` (google-research `instruction_following_eval`, Apache-2.0): an instruction is
followed *strictly* when the (non-blank) response passes its checker, and *loosely* when any of eight variants
passes: the response, the response without its first line, without its last line, without both, and each of
those four with every `*` removed. Prompt-level accuracy counts prompts whose instructions are all followed,
instruction-level accuracy counts instructions. Output records have IFEval's fields (`prompt`, `response`,
`instruction_id_list`, `follow_all_instructions`, `follow_instruction_list`; `key` added).

Standard errors are those of a mean of 0/1 outcomes (sample standard deviation / sqrt(n), as lm-evaluation-harness
reports); instruction-level ones treat instructions as independent, which they are not within a prompt.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sami.errors import SamiInputError
from sami.ifeval.instructions import follows, parse_kwargs
from sami.io import iter_jsonl

LEVELS = ("strict", "loose")


@dataclass(frozen=True)
class IFEvalInput:
    """One IFEval prompt: its key, text, instruction ids and their validated kwargs."""

    key: str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def bundled_inputs_path() -> Path:
    """IFEval's 541 prompts as shipped in the package (`assets/ifeval/input_data.jsonl`)."""
    return Path(str(resources.files("sami") / "assets" / "ifeval" / "input_data.jsonl"))


def load_inputs(path: str | os.PathLike | None = None) -> list[IFEvalInput]:
    """IFEval input records (`key`, `prompt`, `instruction_id_list`, `kwargs`); errors name the file and line."""
    path = bundled_inputs_path() if path is None else Path(path)
    if not path.is_file():
        raise SamiInputError(f"{path}: no such file")
    out, seen = [], set()
    for line, record in iter_jsonl(path):
        where = f"{path}:{line}"
        prompt, ids, kwargs = record.get("prompt"), record.get("instruction_id_list"), record.get("kwargs")
        if not isinstance(prompt, str) or not prompt.strip():
            raise SamiInputError(f"{where}: prompt: expected a non-empty string")
        if not isinstance(ids, list) or not ids:
            raise SamiInputError(f"{where}: instruction_id_list: expected a non-empty list")
        kwargs = kwargs if kwargs is not None else [{}] * len(ids)
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise SamiInputError(f"{where}: kwargs: expected a list as long as instruction_id_list")
        parsed = tuple(
            parse_kwargs(cid, kw, f"{where}: instruction {i}")
            for i, (cid, kw) in enumerate(zip(ids, kwargs, strict=True))
        )
        key = str(record.get("key", line))
        if key in seen:
            raise SamiInputError(f"{where}: key: {key!r} appears twice")
        seen.add(key)
        out.append(IFEvalInput(key, prompt, tuple(ids), parsed))
    if not out:
        raise SamiInputError(f"{path}: no prompts")
    return out


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants of a response (the response itself first)."""
    lines = response.split("\n")
    first = "\n".join(lines[1:]).strip()
    last = "\n".join(lines[:-1]).strip()
    both = "\n".join(lines[1:-1]).strip()
    variants = [response, first, last, both]
    return [response, response.replace("*", ""), first, last, both] + [v.replace("*", "") for v in variants[1:]]


def score(inp: IFEvalInput, response: str, level: str) -> dict[str, Any]:
    """IFEval's output record for one response, strict or loose."""
    candidates = [response] if level == "strict" else loose_variants(response)
    flags = [
        any(c.strip() and follows(cid, kw, c) for c in candidates)
        for cid, kw in zip(inp.instruction_id_list, inp.kwargs, strict=True)
    ]
    return {
        "key": inp.key,
        "prompt": inp.prompt,
        "response": response,
        "instruction_id_list": list(inp.instruction_id_list),
        "follow_all_instructions": all(flags),
        "follow_instruction_list": flags,
    }


def _acc(outcomes: list[bool]) -> tuple[float | None, float | None]:
    n = len(outcomes)
    if n == 0:
        return None, None
    p = sum(outcomes) / n
    se = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None  # sample std (ddof 1) / sqrt(n)
    return p, se


def accuracies(strict: list[dict], loose: list[dict]) -> dict[str, Any]:
    """The four accuracies with their standard errors, the mean of prompt- and instruction-level accuracy per level
    (`average_strict`, `average_loose`: model cards' "IFEval (average prompt/inst)"), and accuracy per id."""
    out: dict[str, Any] = {
        "num_prompts": len(strict),
        "num_instructions": sum(len(r["instruction_id_list"]) for r in strict),
    }
    per_id: dict[str, dict[str, list[bool]]] = {}
    for level, records in (("strict", strict), ("loose", loose)):
        prompt_acc, prompt_se = _acc([r["follow_all_instructions"] for r in records])
        inst = [f for r in records for f in r["follow_instruction_list"]]
        inst_acc, inst_se = _acc(inst)
        out[f"prompt_level_{level}_acc"] = prompt_acc
        out[f"prompt_level_{level}_acc_stderr"] = prompt_se
        out[f"inst_level_{level}_acc"] = inst_acc
        out[f"inst_level_{level}_acc_stderr"] = inst_se
        for r in records:
            for cid, flag in zip(r["instruction_id_list"], r["follow_instruction_list"], strict=True):
                per_id.setdefault(cid, {"strict": [], "loose": []})[level].append(flag)
    for level in LEVELS:
        values = [out[f"prompt_level_{level}_acc"], out[f"inst_level_{level}_acc"]]
        out[f"average_{level}"] = None if None in values else sum(values) / 2
    out["per_instruction"] = {
        cid: {"n": len(v["strict"]), "strict_acc": _acc(v["strict"])[0], "loose_acc": _acc(v["loose"])[0]}
        for cid, v in sorted(per_id.items())
    }
    return out
