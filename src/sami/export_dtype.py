"""The exported checkpoint in the training dtype: bf16 (or fp16) mixed-precision training keeps float32 master
weights, and every save path (`save_pretrained`, FSDP's full state dict) writes them as float32, twice the size a
bf16 model needs (29 GB instead of 14.5 GB for 7B). `cast_export` rewrites a saved folder's floating-point
tensors in the training dtype and records it in `config.json`. safetensors has no in-place cast, hence this.

`drop_tied_copies` removes the second copy of tied weights (a tied `lm_head.weight`) that FSDP's gathered state dict
carries: its full tensors are separate copies, so `save_pretrained`'s dedup (by storage) keeps both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sami.io import atomic_write_json


def cast_export(folder: str | os.PathLike, dtype: torch.dtype) -> list[Path]:
    """Cast every floating-point tensor of `folder/*.safetensors` to `dtype` (files rewritten atomically); set
    `config.json`'s dtype. Returns the files rewritten."""
    folder = Path(folder)
    done = []
    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(path)
        if all(not t.is_floating_point() or t.dtype == dtype for t in tensors.values()):
            continue
        _rewrite(path, {k: (t.to(dtype) if t.is_floating_point() else t).contiguous() for k, t in tensors.items()})
        done.append(path)
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        name = str(dtype).removeprefix("torch.")
        data.update({k: name for k in ("dtype", "torch_dtype") if k in data} or {"dtype": name})
        atomic_write_json(config, data)
    return done


def _rewrite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)


def drop_tied_copies(folder: str | os.PathLike, tied: dict[str, str]) -> list[str]:
    """Delete from `folder/*.safetensors` (and the shard index) each key of `tied` (the model's
    `all_tied_weights_keys`: tied key -> the key it is tied to) whose source is saved as well; the loader ties it
    again. Returns the keys removed."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    saved = set()
    for path in files:
        with safe_open(path, "pt") as f:
            saved.update(f.keys())
    drop = {k for k, source in tied.items() if k in saved and source in saved}
    if not drop:
        return []
    for path in files:
        tensors = load_file(path)
        if drop & tensors.keys():
            _rewrite(path, {k: t for k, t in tensors.items() if k not in drop})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {k: v for k, v in data.get("weight_map", {}).items() if k not in drop}
        atomic_write_json(index, data)
    return sorted(drop)
