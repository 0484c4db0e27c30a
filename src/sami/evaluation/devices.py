"""Where the evaluation's models run: the device of a setting, and freeing accelerator memory after a model."""

from __future__ import annotations

import gc

import torch

from sami.evaluation.settings import EvaluationSettings


def device_for(settings: EvaluationSettings) -> str:
    """`settings.device`, else cuda when available, else cpu."""
    if settings.device:
        return settings.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def free_memory() -> None:
    """Collect garbage and release cached GPU memory (after dropping the last reference to a model)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
