"""SAMI training on top of the Hugging Face `Trainer` (in the spirit of TRL's DPO config and trainer).

An example is `{"id", "prompts": [C training prompts], "responses": [C responses]}`, where response j was
generated under prompt j (constitution j). Each step builds the `[B, C, C]` log-prob matrices with prefix sharing
(`sami.logprobs`) and minimises the symmetric InfoNCE loss (`sami.loss.sami_loss`), optionally plus
`beta * KL(π || π_ref)` on the same response positions.

Resume: the Trainer checkpoints every `save_steps` optimizer steps into `output_dir/checkpoint-N` (model,
optimizer, scheduler, RNG and trainer state; only the newest is kept) plus `sami_state.json` (the token counts).
`train_sami(..., resume=True)` continues from the newest complete one, and removes them all once the final model
is exported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sami import models  # models.load_model, looked up at call time (tests patch it)
from sami.checkpoints import (
    _is_peft,
    _NoFinalCheckpoint,
    export_checkpoint,
    last_checkpoint,
    resolve_tokenizer_ref,
    train_and_export,
    unwrap_data_parallel,
)
from sami.collator import SAMICollator, load_samples, validate_samples
from sami.io import atomic_write_json
from sami.lm_head import supports_chunked_head
from sami.logprobs import (
    head_chunk_size,
    packed_logprobs,
    reference_states,
    unwrap_model,
)
from sami.loss import sami_loss
from sami.models import accelerator_present, apply_lora, check_attention
from sami.optimizer_guard import OptimizerCheck, keep_torch_optimizer
from sami.sami_config import SAMIConfig

log = logging.getLogger(__name__)

SAMI_STATE = "sami_state.json"

# Names that moved to `sami.checkpoints` / `sami.collator` stay importable from here (the comparison methods look
# `_NoFinalCheckpoint` up on this module at call time, so a test can swap it).
__all__ = [
    "SAMICollator",
    "SAMIConfig",
    "SAMITrainer",
    "_NoFinalCheckpoint",
    "accelerator_present",
    "export_checkpoint",
    "last_checkpoint",
    "load_samples",
    "resolve_tokenizer_ref",
    "token_kl",
    "train_and_export",
    "train_sami",
    "validate_samples",
]


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p || p_ref), both from [K, V] logits, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - ref_logp)).sum(-1).mean()


class SAMITrainer(Trainer):
    """A `Trainer` for the SAMI objective. Overrides collation, `compute_loss`, evaluation steps and logging.

    Logged (averaged over the micro-batches of each logging interval, per process): `sami/loss`,
    `sami/loss_row`, `sami/loss_col`, `sami/mi_bound`, `sami/accuracy`, `logps/diag`, `logps/offdiag`, `kl`
    (when beta > 0), and `num_tokens` (cumulative count of non-padding tokens fed to the model, as in TRL).
    Checkpoints written by `save_model` are the Trainer's own (a safetensors model folder with the tokenizer; the
    adapter alone under LoRA); `export_checkpoint` writes the final, loadable folder.
    """

    # compute_loss returns the mean over its micro-batch; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        args: SAMIConfig,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        data_collator=None,
        ref_model=None,
        **kwargs,
    ):
        if processing_class is None:
            raise ValueError("SAMITrainer needs the tokenizer as processing_class")
        if not isinstance(args, SAMIConfig):
            raise TypeError("SAMITrainer needs a SAMIConfig")
        if data_collator is None:
            data_collator = SAMICollator.from_config(processing_class, args)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._stored_metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.num_tokens = 0
        self.num_truncated_prompts = 0
        self.ref_model = ref_model
        if args.beta > 0 and ref_model is None and not _is_peft(unwrap_data_parallel(self.model)):
            # Full fine-tuning: freeze a copy of the starting model (under LoRA, adapters are switched off instead).
            self.ref_model = copy.deepcopy(unwrap_data_parallel(self.model)).eval().requires_grad_(False)
        if self.ref_model is not None:
            self.ref_model.to(self.args.device)
        self.head_chunk_sizes: set[int] = set()
        given = (kwargs.get("optimizers") or (None, None))[0] is not None  # the caller's own optimizer: not checked
        self.optimizer_check = OptimizerCheck(self, enforce=not given)
        self.add_callback(self.optimizer_check)

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        keep_torch_optimizer(self)  # ZeRO optimizer offload: the named optimizer, not DeepSpeedCPUAdam

    def _ref_logits(self, model, inputs) -> torch.Tensor:
        """The reference's [K, V] logits (unchunked path)."""
        with torch.no_grad():
            if self.ref_model is not None:
                _, logits = packed_logprobs(self.ref_model, inputs, return_logits=True)
            else:
                peft_model = unwrap_data_parallel(model)
                with peft_model.disable_adapter():
                    _, logits = packed_logprobs(peft_model, inputs, return_logits=True)
        return logits

    def _ref_states(self, model, inputs):
        """The reference's hidden states at the predicting positions (chunked path); under peft with the adapter
        off, the head is the policy's own and is used inside the policy's forward."""
        if self.ref_model is not None:
            return reference_states(self.ref_model, inputs)
        peft_model = unwrap_data_parallel(model)
        with peft_model.disable_adapter():
            return reference_states(peft_model, inputs, shares_head=True)

    def _chunked(self, model, inputs) -> int:
        """Chunk size of the LM head for this model and batch (0 = unchunked)."""
        chunk = head_chunk_size(model, inputs, self.args.logprob_chunk_size)
        if self.ref_model is not None and not supports_chunked_head(unwrap_model(self.ref_model)):
            chunk = 0
        self.head_chunk_sizes.add(chunk)  # train_info.json: whether the chunked head ran (0: unchunked)
        return chunk

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: SAMIConfig = self.args
        mode = "train" if model.training else "eval"
        chunk = self._chunked(model, inputs)
        kl = None
        if args.beta > 0 and chunk:
            matrix, kl = packed_logprobs(
                model,
                inputs,
                normalize=args.logprob_normalize,
                chunk_size=chunk,
                reference=self._ref_states(model, inputs),
            )
        elif args.beta > 0:
            matrix, logits = packed_logprobs(model, inputs, normalize=args.logprob_normalize, return_logits=True)
            kl = token_kl(logits, self._ref_logits(model, inputs))
            del logits
        else:
            matrix = packed_logprobs(model, inputs, normalize=args.logprob_normalize, chunk_size=chunk)
        c = int(inputs["n_responses"])
        matrix = matrix.view(-1, c, c)
        out = sami_loss(matrix)
        loss = out.loss
        with torch.no_grad():
            diag = torch.diagonal(matrix, dim1=-2, dim2=-1)
            offdiag = (matrix.sum() - diag.sum()) / (matrix.numel() - diag.numel())
            metrics = {
                "sami/loss": out.loss.detach(),
                "sami/loss_row": out.loss_row,
                "sami/loss_col": out.loss_col,
                "sami/mi_bound": out.mi_bound,
                "sami/accuracy": out.accuracy,
                "logps/diag": diag.mean(),
                "logps/offdiag": offdiag,
            }
        if kl is not None:
            loss = loss + args.beta * kl
            metrics["kl"] = kl.detach()
        for key, value in metrics.items():
            self._stored_metrics[mode][key].append(float(value))
        if mode == "train":
            self.num_tokens += int(inputs["num_tokens"])
            truncated = int(inputs.get("num_truncated_prompts", 0))
            if truncated and not self.num_truncated_prompts:
                log.warning("prompts longer than max_prompt_length=%s are cut from the left", args.max_prompt_length)
            self.num_truncated_prompts += truncated
        return (loss, {"logps": matrix.detach()}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), outputs["logps"], None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        stored = self._stored_metrics.pop(mode, {})
        prefix = "eval_" if mode == "eval" else ""
        if stored:  # every rank logs at the same steps with the same keys, so these collectives line up
            keys = sorted(stored)
            means = torch.tensor([sum(stored[k]) / len(stored[k]) for k in keys], device=self.accelerator.device)
            means = self.accelerator.reduce(means, reduction="mean")
            for key, value in zip(keys, means.tolist(), strict=True):
                logs[prefix + key] = value
        if mode == "train" and stored:
            num_tokens, truncated = self._summed_counts()
            logs["num_tokens"] = num_tokens
            if truncated:
                logs["num_truncated_prompts"] = truncated
        super().log(logs, start_time)

    def _summed_counts(self) -> tuple[int, int]:
        """(tokens fed, prompts truncated) summed over ranks: a collective, every rank calls it."""
        counts = torch.tensor([self.num_tokens, self.num_truncated_prompts], device=self.accelerator.device)
        num_tokens, truncated = self.accelerator.reduce(counts, reduction="sum").tolist()
        return int(num_tokens), int(truncated)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, preceded by `sami_state.json` with the summed token counts (the Trainer
        writes `trainer_state.json` last, so a folder that has it is complete)."""
        num_tokens, truncated = self._summed_counts()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / SAMI_STATE, {"num_tokens": num_tokens, "num_truncated_prompts": truncated})
        super()._save_checkpoint(model, trial)

    def restore_counts(self, checkpoint: str | os.PathLike) -> None:
        """Continue the token counts of `checkpoint`: the sums go to rank 0, so the logged sums carry on."""
        path = Path(checkpoint) / SAMI_STATE
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        main = self.accelerator.is_main_process
        self.num_tokens = int(saved.get("num_tokens", 0)) if main else 0
        self.num_truncated_prompts = int(saved.get("num_truncated_prompts", 0)) if main else 0


def train_sami(
    model_ref,
    samples_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: SAMIConfig,
    *,
    lora=None,
    tokenizer_ref: str | os.PathLike | None = None,
    resume: bool = False,
) -> Path:
    """Train a model with SAMI on `samples.jsonl`; return the checkpoint folder (= `output_dir`).

    `model_ref` is anything `sami.models.load_model` takes (or an already loaded model, then `tokenizer_ref` is
    needed). `lora` (`LoraSettings` or dict) trains a LoRA adapter, merged on export if `merge_lora_on_save`.
    Writes the checkpoint (safetensors + tokenizer) and `log_history.json` (written last) into `output_dir`.
    With `resume`, training continues from the newest complete `checkpoint-N` in `output_dir` (see
    `last_checkpoint`), if any: same data order, optimizer, scheduler and RNG, so it ends with the weights of an
    uninterrupted run. The resume checkpoints are deleted once the final model is written.
    """
    check_attention(config.attn_implementation, field="attn_implementation", backward=True)
    output_dir = Path(output_dir)
    dataset = load_samples(samples_path)
    tokenizer = models.load_tokenizer(resolve_tokenizer_ref(model_ref, tokenizer_ref))
    validate_samples(dataset, tokenizer, config)
    args = dataclasses.replace(config, output_dir=str(output_dir))
    set_seed(args.seed)  # a LoRA adapter's random initialisation follows the seed (the Trainer seeds only later)
    if isinstance(model_ref, str | os.PathLike):
        model = models.load_model(model_ref, lora=lora, attn_implementation=config.attn_implementation)
    else:
        model = apply_lora(model_ref, lora) if lora is not None else model_ref
    model.train()
    trainer = SAMITrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.add_callback(_NoFinalCheckpoint())
    checkpoint = last_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        log.info("resuming training from %s", checkpoint)
        trainer.restore_counts(checkpoint)
    return train_and_export(trainer, tokenizer, output_dir, checkpoint, merge_lora=args.merge_lora_on_save)
