"""Checks of a run's inputs before any work starts, each failure one line naming the file, line or field.

`check_run(config)` runs before `sami run` writes anything:

- every training stage's `TrainingArguments` are built once, and the comparisons' DPO / SFT configs (learning
  rates, schedulers, optimizers and the other knobs fail here, not at `iter-1/train` after generation ran);
- each model reference (policy, judge, baselines, writer): a `.gguf` must start with the GGUF magic, a folder must
  hold a `config.json`;
- the constitutions load, and hold at least `sampling.n_constitutions` of them when a query draws that many;
- every query, written into the generation prompt with the longest constitution, plus `sampling.max_new_tokens`,
  fits the policy's context (`max_position_embeddings`): a 100k-character query is refused instead of allocating
  tens of GB.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from sami.comparisons.dpo import dpo_arguments
from sami.comparisons.sft import sft_arguments
from sami.constitutions import Constitution, load_constitutions, max_constitutions
from sami.data import load_queries
from sami.errors import SamiInputError
from sami.io import read_text
from sami.models import DEFAULT_MODEL, converted_folder, default_model_folder
from sami.stage_settings import training_arguments

GGUF_MAGIC = b"GGUF"


def check_model_ref(ref: str, field: str) -> None:
    """A local model reference that cannot be a model: refused naming `field`."""
    path = Path(ref).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise SamiInputError(f"{field}: {path} is not a GGUF file (it does not start with 'GGUF')")
    elif path.is_file():
        raise SamiInputError(f"{field}: {path} is a file, not a model folder or a .gguf file")
    elif path.is_dir() and not (path / "config.json").is_file():
        raise SamiInputError(f"{field}: {path} is not a model folder (no config.json)")


def check_models(config) -> None:
    check_model_ref(config.model.policy, "model.policy")
    judge = config.evaluation.judge
    if judge.kind == "local":
        check_model_ref(judge.model, "evaluation.judge.model")
    for name, spec in config.evaluation.baselines.items():
        check_model_ref(getattr(spec, "model", spec), f"evaluation.baselines.{name}")
    if config.writer is not None and config.writer.base_url is None:
        check_model_ref(config.writer.model, "writer.model")


def check_training(config) -> None:
    """Build the TrainingArguments of every iteration once, and the DPO / SFT configs of the comparisons (TRL is
    imported then): a bad knob fails now, naming the field, not after generation ran."""
    if {"deepspeed", "fsdp", "fsdp_config"} & set(config.training.trainer_args):
        return  # these set up the launch's own state when built: checked where the stage runs
    methods = {"dpo": dpo_arguments, "sft": sft_arguments}
    comparisons = config.comparisons
    methods = {m: f for m, f in methods.items() if comparisons is not None and getattr(comparisons, m) is not None}
    with tempfile.TemporaryDirectory(prefix="sami-preflight-") as tmp:
        for steps in sorted(set(config.iterations.steps[: config.iterations.count])):
            training_arguments(config, output_dir=Path(tmp) / "train", max_steps=steps)
            for method, arguments in methods.items():
                try:
                    arguments(config, output_dir=Path(tmp) / method, max_steps=steps)
                except ValueError as e:  # TrainingArguments' own checks, as SAMIConfig reports them
                    raise SamiInputError(f"comparisons.{method}: {' '.join(str(e).split())}") from None


def check_constitutions(config) -> None:
    """Enough distinct constitutions for `sampling.n_constitutions` (C) per query under the sampling scheme."""
    if config.writer is not None:
        return

    cset = load_constitutions(config.constitutions)
    limit = max_constitutions(cset, config.sampling.scheme)
    if config.sampling.n_constitutions > limit:
        raise SamiInputError(
            f"sampling.n_constitutions: {config.sampling.n_constitutions} is more than the {limit} distinct "
            f"constitutions scheme {config.sampling.scheme!r} forms from {config.constitutions}"
        )


def longest_constitution(cset) -> str:
    """The longer rendering of the all-principles and the all-antitheses constitution."""
    pool = cset.pool("train")
    texts = [Constitution(tuple((p, sign) for p in pool)).render() for sign in (True, False)]
    return max(texts, key=len)


def local_model_folder(ref: str) -> str | None:
    """The folder a model reference loads from, when it is on disk already (a GGUF or the default model not yet
    converted: None, so a check never converts one)."""
    path = Path(ref).expanduser()
    if ref == DEFAULT_MODEL:
        path = default_model_folder()
    elif path.suffix == ".gguf" and path.is_file():
        path = converted_folder(path)
    return str(path) if (path / "config.json").is_file() else None


def model_context(ref: str) -> int | None:
    """The context length a local model folder declares (None when it says none or is not a local folder)."""
    path = Path(ref).expanduser()
    if not (path / "config.json").is_file():
        return None
    try:
        cfg = json.loads(read_text(path / "config.json"))
    except ValueError:
        return None
    value = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def check_query_lengths(config) -> None:
    """Every training and evaluation query, in the generation prompt with the longest principle text, plus the
    new tokens, fits the policy's context; refused naming the source and the query id otherwise."""
    path = local_model_folder(config.model.policy)
    context = model_context(path) if path is not None else None
    if context is None or config.writer is not None:
        return

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.model.trust_remote_code)
    template = config.prompts.build()
    longest = longest_constitution(load_constitutions(config.constitutions))
    overhead = len(tokenizer(str(template.generation_prompt(longest, "")))["input_ids"])
    budget = context - overhead - max(config.sampling.max_new_tokens, config.evaluation.max_new_tokens)
    for section in ("train", "eval"):
        for i, src in enumerate(getattr(config.data, section)):
            queries = load_queries(src)
            for q in queries:
                if len(q.query.encode()) <= budget:  # a token covers at least one byte: no need to count
                    continue
                n = len(tokenizer(q.query)["input_ids"])
                if n > budget:
                    raise SamiInputError(
                        f"data.{section}.{i}: query {q.id!r} is {n} tokens; with the prompt ({overhead}) and the new "
                        f"tokens it exceeds the model's context of {context} (shorten it, or set a `limit`)"
                    )


def check_run(config) -> None:
    """Every check above, in order of cost."""
    check_models(config)
    check_constitutions(config)
    check_training(config)
    check_query_lengths(config)
