"""`sami export`: one checkpoint of a run as a clean model folder for the Hub, `transformers` and local runtimes.

```
OUT/
  model.safetensors (or shards)  config.json  generation_config.json     weights in the chosen dtype
  tokenizer files, chat template                                          as the checkpoint's tokenizer saves them
  README.md                                                               the model card (sami.model_card)
  constitutions.json  sami_config.yaml  sami_export.json                 the run's constitution and config (no secrets)
  OUT-NAME-f16.gguf                                                       with `gguf: f16|f32` (sami.gguf_export)
```
The folder is written beside OUT and renamed into place, so OUT is either complete or absent; an existing OUT is
refused unless `overwrite`. The card's numbers are the run's own (`sami.report.summary.build_summary`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from sami.errors import SamiInputError
from sami.gguf_export import write_gguf
from sami.io import atomic_write_text
from sami.layout import RunLayout
from sami.model_card import card_text
from sami.models import DEFAULT_MODEL, default_gguf_path, load_model, load_tokenizer
from sami.report.summary import build_summary, is_run_dir

log = logging.getLogger(__name__)


class ExportSettings(BaseModel):
    """What `sami export RUN OUT` writes (the flags of `sami export`)."""

    model_config = ConfigDict(extra="forbid")

    iteration: int | None = Field(None, ge=1, description="the iteration to export (None: the last trained one)")
    method: Literal["sami", "dpo", "sft"] = Field(
        "sami", description="sami: π_T; dpo / sft: that iteration's comparison model"
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="weights dtype of the exported folder (None: the run's model.dtype; 'auto' -> float32)"
    )
    gguf: Literal["f16", "f32"] | None = Field(
        None, description="also write a GGUF file (llama-family models) for llama.cpp, Ollama, LM Studio"
    )
    repo_id: str | None = Field(
        None, description="the Hub repository the printed upload command names (default: YOUR-NAME/<folder name>)"
    )
    license: str | None = Field(None, description="the card's licence (default: the base model's, where known)")
    overwrite: bool = Field(False, description="replace an existing output folder")


def exported_checkpoint(layout: RunLayout, settings: ExportSettings) -> tuple[int, Path]:
    """`(iteration, checkpoint folder)` to export; refuses an iteration that has not finished training."""

    def folder(t: int) -> Path:
        return layout.train(t) if settings.method == "sami" else layout.comparison_train(t, settings.method)

    trained = [t for t, _ in layout.iterations() if t > 0 and (folder(t) / "config.json").is_file()]
    what = "" if settings.method == "sami" else f" {settings.method}"
    if settings.iteration is None:
        if not trained:
            raise SamiInputError(f"{layout.root}: no finished{what} training stage to export (no iter-T/train)")
        return trained[-1], folder(trained[-1])
    if settings.iteration not in trained:
        raise SamiInputError(
            f"{layout.root}: iteration {settings.iteration} has no finished{what} checkpoint "
            f"(trained: {', '.join(map(str, trained)) or 'none'})"
        )
    return settings.iteration, folder(settings.iteration)


def reference_gguf(config: dict) -> Path | None:
    """The GGUF file the run's π₀ was converted from (the bundled default, or a `.gguf` policy), if any."""
    policy = str((config.get("model") or {}).get("policy") or DEFAULT_MODEL)
    if policy == DEFAULT_MODEL:
        return default_gguf_path()
    path = Path(policy).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def upload_command(out: Path, repo_id: str) -> str:
    """The `hf` CLI command (huggingface_hub) that uploads the folder as a model repository."""
    return f"hf upload {repo_id} {out} . --repo-type model"


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, settings: ExportSettings | None = None) -> Path:
    """Write iteration T's checkpoint of `run_dir` as a clean model folder `out` (see the module docstring)."""
    settings = settings or ExportSettings()
    run_dir, out = Path(run_dir), Path(out)
    if not is_run_dir(run_dir):
        raise SamiInputError(f"{run_dir}: not a run folder (no config.yaml, manifest.json or iter-N folders)")
    if out.exists() and any(out.iterdir()) and not settings.overwrite:
        raise SamiInputError(f"{out}: exists and is not empty (use --overwrite to replace it)")
    layout = RunLayout(run_dir)
    t, checkpoint = exported_checkpoint(layout, settings)
    summary = build_summary(run_dir)
    config = summary.get("config") or {}
    dtype = settings.dtype or (config.get("model") or {}).get("dtype") or "float32"
    dtype = "float32" if dtype == "auto" else dtype

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp.chmod(0o755)
    try:
        model = load_model(checkpoint, dtype=dtype)
        tokenizer = load_tokenizer(checkpoint)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        if layout.constitutions.is_file():
            shutil.copy2(layout.constitutions, tmp / "constitutions.json")
        atomic_write_text(tmp / "sami_config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        (tmp / "sami_export.json").write_text(
            json.dumps({"run": run_dir.resolve().name, "iteration": t, "method": settings.method, "dtype": dtype})
            + "\n"
        )
        atomic_write_text(
            tmp / "README.md",
            card_text(summary, t, method=settings.method, license=settings.license, model_name=out.name),
        )
        if settings.gguf:
            gguf_out = tmp / f"{out.name}-{settings.gguf}.gguf"
            write_gguf(checkpoint, gguf_out, settings.gguf, reference_gguf=reference_gguf(config), name=out.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
