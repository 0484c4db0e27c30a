"""A llama-family checkpoint as a GGUF file (f16 or f32) for llama.cpp, Ollama and LM Studio, written offline with
the `gguf` package's `GGUFWriter` (the writer llama.cpp's own converter uses).

Why not llama.cpp's `convert_hf_to_gguf.py`: it ships in llama.cpp's source tree, not in any installed package
(neither `gguf` nor `llama-cpp-python` installs it), so it cannot be called from here. What this module does is
that converter's path for LLaMA-architecture models, on the `gguf` package's pieces:

- hyperparameters under `llama.*` from the model's config (default RoPE only; a model with RoPE scaling, biases or
  another architecture is refused, naming what it has);
- tensors renamed with `gguf.get_tensor_name_map`, the Q and K projections permuted from Hugging Face's half-split
  RoPE layout to GGML's interleaved one (the same permutation llama.cpp's converter applies), 2-D weights in the
  chosen type and 1-D norms in f32, a tied LM head left out (llama.cpp reuses `token_embd`);
- the tokenizer: copied field by field from a reference GGUF when the model descends from one (the bundled default
  is SmolLM2-135M-Instruct's GGUF; a run whose π₀ is a `.gguf` file), so llama.cpp tokenizes exactly as before;
  otherwise built from the Hugging Face tokenizer (byte-level BPE only: tokens, types, merges and special ids with
  `gguf.SpecialVocab`) with the pre-tokenizer `default`, which llama.cpp may split differently from the original
  for some texts (logged). The chat template is the checkpoint's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np

from sami.errors import SamiInputError
from sami.models import load_tokenizer

log = logging.getLogger(__name__)

ARCHITECTURES = {"llama", "mistral"}  # both are llama.cpp's LLAMA architecture


def permute_rope(weight, n_head: int):
    """A q/k projection's rows reordered from Hugging Face's rotate-half RoPE layout to GGML's interleaved pairs."""
    out_features = weight.shape[0]
    return (
        weight.reshape(n_head, 2, out_features // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    scaling = getattr(config, "rope_scaling", None)
    if rope_type not in (None, "default") or (
        isinstance(scaling, dict) and scaling.get("rope_type", "default") != "default"
    ):
        raise SamiInputError(f"GGUF export: RoPE type {rope_type or scaling!r} is not supported (default RoPE only)")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or getattr(config, "rope_theta", None) or 10000.0)


def _check_architecture(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise SamiInputError(
            f"GGUF export supports llama-family models ({', '.join(sorted(ARCHITECTURES))}); this one is "
            f"{model_type!r}: convert the exported folder with llama.cpp's convert_hf_to_gguf.py"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise SamiInputError(f"GGUF export: {flag} is set; only bias-free llama models are supported")


def _hyperparameters(writer, config, name: str, ftype: str) -> None:

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32)


def _tensors(writer, state: dict, config, ftype: str) -> None:

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses token_embd for a tied output layer
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SamiInputError(f"GGUF export: no GGUF name for the tensor {hf_name!r}")
        data = tensor.float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rope(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rope(data, n_kv)
        data = data.astype(np.float16 if ftype == "f16" and data.ndim > 1 else np.float32)
        writer.add_tensor(name, np.ascontiguousarray(data))


def _tokenizer_from_gguf(writer, reference: Path) -> None:
    """Every `tokenizer.*` field of `reference` but its chat template, with its own types."""
    reader = gguf.GGUFReader(str(reference))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), vtype)


def _tokenizer_from_hf(writer, folder: Path, tokenizer, vocab_size: int) -> None:
    """Tokens, types, merges and special ids of a byte-level BPE Hugging Face tokenizer."""
    spec = (
        json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        if (folder / "tokenizer.json").is_file()
        else {}
    )
    model = spec.get("model") or {}
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or (spec.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise SamiInputError(
            f"{folder}: GGUF export builds byte-level BPE tokenizers only (this one is {model.get('type')!r}); "
            "convert the exported folder with llama.cpp's convert_hf_to_gguf.py"
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    log.warning("GGUF export: pre-tokenizer 'default' (no reference GGUF); llama.cpp may split some texts differently")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.chat_template = None  # added from the checkpoint's tokenizer below
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:  # llama.cpp's default for gpt2 vocabularies is to add none
        writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))


def write_gguf(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    ftype: Literal["f16", "f32"] = "f16",
    *,
    reference_gguf: str | os.PathLike | None = None,
    name: str | None = None,
) -> Path:
    """Write the llama-family model folder `checkpoint` as the GGUF file `out` (see the module docstring);
    `reference_gguf`: the GGUF the model descends from, whose tokenizer fields are copied."""
    # torch/transformers: `sami export` reads this module without converting
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    checkpoint, out = Path(checkpoint), Path(out)
    config = AutoConfig.from_pretrained(checkpoint)
    _check_architecture(config)
    tokenizer = load_tokenizer(checkpoint)
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise SamiInputError(f"{checkpoint}: no safetensors weights to convert")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(f))
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _hyperparameters(writer, config, name or checkpoint.name, ftype)
        if reference_gguf is not None:
            _tokenizer_from_gguf(writer, Path(reference_gguf))
        else:
            _tokenizer_from_hf(writer, checkpoint, tokenizer, config.vocab_size)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)
        with torch.no_grad():
            _tensors(writer, state, config, ftype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out
