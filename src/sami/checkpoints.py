"""Resume checkpoints and the final export of a training run (SAMI's and the TRL comparison methods'): find the
newest complete `checkpoint-N`, skip the Trainer's last one, write the model folder with `train_info.json` and
`log_history.json` (last), then delete the checkpoints.

Under FSDP the resume checkpoints are whatever the accelerate config's `fsdp_state_dict_type` says (the shipped
`fsdp.yaml`: `SHARDED_STATE_DICT`, each rank writes its own shards through `torch.distributed.checkpoint`, by the
Trainer's `save_fsdp_model` / `save_fsdp_optimizer`); the final export is always one full safetensors folder in
the training dtype, gathered once (`full_state_dict`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sami.errors import SamiInputError
from sami.export_dtype import cast_export, drop_tied_copies
from sami.io import atomic_write_json, umask_modes

TRAIN_INFO = "train_info.json"  # the optimizer that stepped, the distributed type, the number of processes
TRAINER_STATE = "trainer_state.json"


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class _NoFinalCheckpoint(TrainerCallback):
    """Skip the Trainer's resume checkpoint after the last step: `train_sami` exports the model right after."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = False
        return control


def unwrap_data_parallel(model):
    """The model inside DDP/DataParallel wrappers; a peft wrapper is kept (`sami.logprobs.unwrap_model` strips
    that too)."""
    while isinstance(model, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return model


def export_checkpoint(model, tokenizer, output_dir: str | os.PathLike, *, merge_lora: bool = True) -> Path:
    """Save `model` and `tokenizer` as a safetensors folder that `sami.models.load_model` loads.

    Under LoRA with `merge_lora`, the adapter is merged into the base weights first (in place: the peft wrapper
    is consumed; call this after training). Without `merge_lora`, only the adapter and tokenizer are saved.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap_data_parallel(model)
    if _is_peft(model) and merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir`, or None.

    Complete: its `trainer_state.json`, which the Trainer writes after the weights, optimizer, scheduler and RNG
    states, parses. A folder cut short by a kill during its save is passed over (the previous one is still there:
    the Trainer deletes older checkpoints only after the new one is written).
    """
    found = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if not step.isdigit() or not (path / TRAINER_STATE).is_file():
            continue
        try:
            json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append((int(step), path))
    return max(found)[1] if found else None


def remove_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete every `checkpoint-N` folder in `output_dir` (after the final export: it must not ship them)."""
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def resolve_tokenizer_ref(model_ref: Any, tokenizer_ref: str | os.PathLike | None) -> str | os.PathLike:
    """The tokenizer to load: `tokenizer_ref`, else the model's own reference (required for a loaded model)."""
    if tokenizer_ref is not None:
        return tokenizer_ref
    if not isinstance(model_ref, str | os.PathLike):
        raise SamiInputError("tokenizer_ref is needed when model_ref is a loaded model")
    return model_ref


@contextmanager
def full_state_dict(trainer) -> Iterator[None]:
    """Inside: the Trainer's `save_model` gathers the full state dict, also under FSDP with sharded checkpoints.

    With `SHARDED_STATE_DICT` the Trainer's `save_model` writes no model at all; transformers' FSDP guide switches
    the plugin to `FULL_STATE_DICT` for the final save, as this does (restored on exit). Under FSDP2 the gather is
    accelerate's `get_state_dict` (full tensors offloaded to rank 0's CPU memory).
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        yield
        return
    before = plugin.state_dict_type
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        yield
    finally:
        plugin.state_dict_type = before


def training_dtype(trainer) -> torch.dtype | None:
    """The dtype mixed precision trains in (`--bf16`/`--fp16`, or accelerate's `mixed_precision`, which a launch
    config such as the shipped `fsdp.yaml` sets without the Trainer's flags), or None (float32)."""
    precision = str(getattr(trainer.accelerator, "mixed_precision", "no"))
    if trainer.args.bf16 or precision == "bf16":
        return torch.bfloat16
    if trainer.args.fp16 or precision == "fp16":
        return torch.float16
    return None


def train_and_export(trainer, tokenizer, output_dir: Path, checkpoint: Path | None, *, merge_lora: bool) -> Path:
    """Train (from `checkpoint` when resuming), write the model, tokenizer and `log_history.json` (last) into
    `output_dir`, then delete the resume checkpoints. Shared by SAMI and the TRL comparison methods (DPO, SFT)."""
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # A collective on every rank: gathers the full state dict (FSDP, also after sharded checkpoints; ZeRO-3
        # 16-bit save) and rank 0 writes safetensors. LoRA adapters are saved unmerged on this path.
        with full_state_dict(trainer):
            trainer.save_model(str(output_dir))
        if trainer.args.should_save:
            tokenizer.save_pretrained(output_dir)
            drop_tied_copies(
                output_dir, getattr(unwrap_data_parallel(trainer.model), "all_tied_weights_keys", None) or {}
            )
    elif trainer.args.should_save:
        export_checkpoint(trainer.model, tokenizer, output_dir, merge_lora=merge_lora)
    dtype = training_dtype(trainer)
    if trainer.args.should_save and dtype is not None:  # the training dtype, not the fp32 master weights
        cast_export(output_dir, dtype)
    if trainer.args.should_save:
        check = getattr(trainer, "optimizer_check", None)
        info = {"optimizer": check.name if check is not None else None}
        info["distributed_type"] = str(trainer.accelerator.distributed_type)
        info["num_processes"] = trainer.args.world_size
        info["head_chunk_sizes"] = sorted(getattr(trainer, "head_chunk_sizes", ()))  # rank 0's batches
        atomic_write_json(output_dir / TRAIN_INFO, info)
        atomic_write_json(output_dir / "log_history.json", trainer.state.log_history)
        umask_modes(output_dir)  # safetensors' model file is 0600 otherwise
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        remove_checkpoints(output_dir)
    return output_dir
