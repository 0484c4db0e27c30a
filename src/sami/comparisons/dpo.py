"""DPO on SAMI's self-generated samples (RLCD-style preference pairs), trained with TRL's `DPOTrainer`.

A `samples.jsonl` record holds C responses, response j generated under constitution j, constitution 0 the positive
one (`sami.sampling`). Its preference pair, labelled by construction as in RLCD (Yang et al. 2023):

- chosen: response 0 (under the positive constitution);
- rejected: the response under the constitution with the most principles flipped against constitution 0 (the
  first such one on a tie). The `opposite` scheme draws exactly the positive constitution and its antithesis, so
  there the rejected response is the antithesis's; a record whose constitutions all equal constitution 0 in sign
  has no pair and is left out;
- prompt: `constitution` (default) = constitution 0's training prompt, the prompt SAMI scores the responses under;
  `query` = the bare query, RLCD's form: the training template from the line holding `{query}` on (base style:
  "Human: ...\\n\\nAssistant:"), or the user message alone without the system message (chat style).

Each response keeps the whitespace the model wrote before it (`meta.separators`). TRL appends the tokenizer's EOS to
every chosen and rejected response (DPO's convention; SAMI's `eos: generated` has no counterpart here).

`train_dpo` trains like `sami.trainer.train_sami`: resume checkpoints every `save_steps` in `output_dir`, the final
model exported as a safetensors folder (LoRA merged) with `log_history.json` written last, checkpoints removed.
TRL is the optional extra `sami[compare]`; it is imported only when training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets

from sami.comparisons.settings import DPOSettings
from sami.comparisons.trl_args import shared_training_fields, trl_class, trl_config
from sami.comparisons.trl_train import train_command, train_with_trl
from sami.errors import SamiInputError
from sami.io import iter_jsonl
from sami.prompts import PromptTemplate, _fill, query_parts, render_prompt
from sami.run_config import RunConfig
from sami.tokens import default_separator, response_context
from sami.trainer_fields import DPO, method_flags

log = logging.getLogger(__name__)

PROMPT_FORMS = ("constitution", "query")


# ---- the dataset ---------------------------------------------------------------------------------------
def rejected_index(constitutions: list[dict]) -> int | None:
    """The constitution with the most principles flipped against constitution 0 (first on a tie), or None when
    every one has constitution 0's signs."""
    first = {p["name"]: p["positive"] for p in constitutions[0]["principles"]}
    best, best_flips = None, 0
    for j, c in enumerate(constitutions[1:], start=1):
        flips = sum(first.get(p["name"]) is not None and first[p["name"]] != p["positive"] for p in c["principles"])
        if flips > best_flips:
            best, best_flips = j, flips
    return best


def query_prompt(template: PromptTemplate, query: Any, tokenizer: Any = None) -> str:
    """The bare query in the template's format (RLCD's prompt): the training text from the line holding `{query}` on,
    with no constitution; chat style: the user message alone, through the chat template (after the query's own
    system text, when it has one). `query`: a string, a `Query` or a samples.jsonl record."""
    query, system = query_parts(query)
    text = template.training
    if template.style == "chat":
        messages = [{"role": "system", "content": system}] if system else []
        return render_prompt([*messages, {"role": "user", "content": _fill(text, "", query)}], tokenizer)
    start = text.rfind("\n", 0, text.find("{query}")) + 1
    return _fill(text[start:], "", query)


def check_prompt_form(prompt: str, forms: tuple[str, ...], template: PromptTemplate | None) -> None:
    """`prompt` is one of `forms`, and `query` comes with the template the samples were made with."""
    if prompt not in forms:
        raise SamiInputError(f"prompt: expected one of {forms}, got {prompt!r}")
    if prompt == "query" and template is None:
        raise SamiInputError("prompt: 'query' needs the prompt template the samples were made with")


def _completion(prompt: str, response: str, separator: str | None) -> str:
    """The response with the whitespace the model wrote before it (inferred as the trainer does when unrecorded)."""
    return (default_separator(prompt, response) if separator is None else separator) + response


def dpo_records(
    samples_path: str | os.PathLike,
    *,
    prompt: str = "constitution",
    template: PromptTemplate | None = None,
    tokenizer: Any = None,
) -> list[dict]:
    """The preference pairs of `samples.jsonl`: `{"id", "prompt", "chosen", "rejected", "rejected_index"}` per record
    that has a pair (see the module docstring). A bad record raises `SamiInputError` naming file:line."""
    check_prompt_form(prompt, PROMPT_FORMS, template)
    out, skipped = [], 0
    for lineno, rec in iter_jsonl(samples_path):
        where = f"{samples_path}:{lineno}"
        for key in ("id", "prompts", "responses", "constitutions") + (("query",) if prompt == "query" else ()):
            if key not in rec:
                raise SamiInputError(f"{where}: missing field '{key}'")
        prompts, responses, constitutions = rec["prompts"], rec["responses"], rec["constitutions"]
        if not (len(prompts) == len(responses) == len(constitutions) >= 2):
            raise SamiInputError(f"{where}: needs C >= 2 prompts, responses and constitutions of the same length")
        try:
            j = rejected_index(constitutions)
        except (KeyError, TypeError, IndexError):
            raise SamiInputError(f"{where}: constitutions must be Constitution.to_dict() records") from None
        if j is None:
            skipped += 1
            continue
        separators, _ = response_context(rec, len(responses))
        text = prompts[0] if prompt == "constitution" else query_prompt(template, rec, tokenizer)
        chosen, rejected = (_completion(text, responses[k], separators[k] if separators else None) for k in (0, j))
        out.append({"id": str(rec["id"]), "prompt": text, "chosen": chosen, "rejected": rejected, "rejected_index": j})
    if skipped:
        log.warning("%s: %d record(s) without a flipped constitution have no preference pair", samples_path, skipped)
    if not out:
        raise SamiInputError(f"{samples_path}: no preference pairs (no record has a constitution flipped against 0)")
    return out


def load_dpo_dataset(samples_path: str | os.PathLike, **kwargs):
    """`dpo_records` as a `datasets.Dataset` (what `DPOTrainer` takes)."""
    return datasets.Dataset.from_list(dpo_records(samples_path, **kwargs))


# ---- settings --------------------------------------------------------------------------------------------
def dpo_config(output_dir: str | os.PathLike, **fields: Any):
    """A TRL `DPOConfig` with SAMI training's defaults where TRL's differ (`sami.comparisons.trl_args.trl_config`)."""
    return trl_config(trl_class("DPOConfig"), DPO, output_dir, **fields)


def dpo_arguments(config: RunConfig, *, output_dir: str | os.PathLike, max_steps: int):
    """The `DPOConfig` of one iteration's DPO stage: the run's training settings (batch, optimizer, schedule, seed,
    logging, resume checkpoints), DPO's own from `comparisons.dpo`."""
    dpo = config.comparisons.dpo if config.comparisons is not None else None
    dpo = dpo or DPOSettings()
    return dpo_config(
        output_dir,
        **shared_training_fields(config, DPO, dpo),
        beta=dpo.beta,
        max_steps=max_steps,
        **dpo.trainer_args,
    )


# ---- training --------------------------------------------------------------------------------------------
def train_dpo(
    model_ref,
    samples_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config,
    *,
    prompt: str = "constitution",
    template: PromptTemplate | None = None,
    lora=None,
    tokenizer_ref: str | os.PathLike | None = None,
    resume: bool = False,
) -> Path:
    """Train `model_ref` with TRL's DPO on the pairs of `samples.jsonl`; return the checkpoint folder (`output_dir`).

    `config` is a `DPOConfig` (`dpo_config`, `dpo_arguments`); the reference model is a frozen copy of the starting
    model (under `lora`, the model with its adapter off). Files and resume as `sami.trainer.train_sami`.
    """
    return train_with_trl(
        "DPO",
        model_ref,
        output_dir,
        config,
        dataset_of=lambda tokenizer: load_dpo_dataset(
            samples_path, prompt=prompt, template=template, tokenizer=tokenizer
        ),
        lora=lora,
        tokenizer_ref=tokenizer_ref,
        resume=resume,
        reference_copy=True,
    )


def train_dpo_from_config(
    config: RunConfig, *, model_ref: str, samples_path: Path, output_dir: Path, max_steps: int
) -> Path:
    """One iteration's DPO model as the run config says, resuming from a checkpoint an earlier attempt left."""
    dpo = (config.comparisons.dpo if config.comparisons is not None else None) or DPOSettings()
    args = dpo_arguments(config, output_dir=output_dir, max_steps=dpo.max_steps or max_steps)
    return train_dpo(
        model_ref,
        samples_path,
        output_dir,
        args,
        prompt=dpo.prompt,
        template=config.prompts.build(),
        lora=config.model.lora,
        resume=True,
    )


# ---- `sami train --method dpo` ---------------------------------------------------------------------------
# SAMIConfig fields of `sami train` that `--method dpo` uses (the rest are SAMI's and refused); `--beta` is DPO's β.
DPO_FLAGS = method_flags(DPO, own=set(DPOSettings.model_fields) - {"trainer_args"})


def train_dpo_command(args, overrides: dict[str, Any]) -> Path:
    """`sami train --method dpo`: `overrides` are the SAMIConfig fields set on the command line; the shared ones
    override the --config's training settings (and `--beta` is DPO's β), SAMI-only ones are an error."""
    return train_command(
        args,
        overrides,
        method="dpo",
        shared=DPO_FLAGS,
        unused="SAMI-only option(s), not used by --method dpo",
        arguments=dpo_arguments,
        config_of=dpo_config,
        default_prompt="constitution",
        train=train_dpo,
    )
