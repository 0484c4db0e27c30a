"""The exported checkpoint in the training dtype: bf16 (or fp16) mixed-precision training keeps float32 master
weights, and every save path (`save_pretrained`, FSDP's full state dict) writes them as float32, twice the size a
bf16 model needs (29 GB instead of 14.5 GB for 7B). `cast_export` rewrites a saved folder's floating-point
tensors in the training dtype and records it in `config.json`. safetensors has no in-place cast, hence this."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
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
        cast = {k: (t.to(dtype) if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(cast, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
        done.append(path)
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        name = str(dtype).removeprefix("torch.")
        data.update({k: name for k in ("dtype", "torch_dtype") if k in data} or {"dtype": name})
        atomic_write_json(config, data)
    return done
