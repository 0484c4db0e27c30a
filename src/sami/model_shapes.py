"""A model's shape (layers, widths, vocabulary, experts) without its weights, for `sami.plan`.

`model_shape(ref)` reads, in order: the `config.json` of a local model folder, the `config.json` in the local
Hugging Face hub cache (`huggingface_hub.try_to_load_from_cache`: offline, downloads nothing), or the bundled
table below of the models the shipped recipes name. Nothing is downloaded and no weights are read.

The table's values are the published `config.json` fields of each model (Hugging Face hub, cross-checked against
third-party copies of those files: mistralai/Mistral-7B-v0.1 and -Instruct-v0.1, mistralai/Mixtral-8x7B-v0.1,
meta-llama/Meta-Llama-3-8B and -70B, HuggingFaceTB/SmolLM2-135M-Instruct, the bundled default model). The
parameter counts they give (`ModelShape.n_params`) are the published ones: 7.24 B, 46.7 B, 8.03 B, 70.6 B, 134.5 M.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from sami.errors import SamiInputError


@dataclass(frozen=True)
class ModelShape:
    """What the memory and FLOP formulas need from a decoder-only transformer (llama/mistral/mixtral layout)."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    num_experts: int = 1  # MoE: experts per layer (num_local_experts)
    experts_per_token: int = 1  # MoE: experts each token goes through (num_experts_per_tok)
    source: str = "bundled table"

    @property
    def attention_params(self) -> int:
        """q, k, v, o projections of one layer (no biases)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h

    @property
    def expert_params(self) -> int:
        """One gated MLP (gate, up, down)."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def layer_params(self) -> int:
        """One decoder layer: attention, every expert, the router (MoE) and two norms."""
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        return self.attention_params + self.num_experts * self.expert_params + router + 2 * self.hidden_size

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the LM head when it is not tied."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def n_params(self) -> int:
        return self.num_layers * self.layer_params + self.embedding_params + self.hidden_size

    @property
    def active_params(self) -> int:
        """Parameters one token goes through (MoE: `experts_per_token` experts), for FLOPs."""
        idle = (self.num_experts - self.experts_per_token) * self.expert_params
        return self.n_params - self.num_layers * idle

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        """KV cache per token: 2 (K and V) · layers · kv_heads · head_dim · bytes (e.g. vLLM's and HF's cache)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


def _shape(name, vocab, hidden, inter, layers, heads, kv, tied, experts=1, per_token=1) -> ModelShape:
    return ModelShape(name, vocab, hidden, inter, layers, heads, kv, hidden // heads, tied, experts, per_token)


_MISTRAL_7B = dict(vocab=32000, hidden=4096, inter=14336, layers=32, heads=32, kv=8, tied=False)
_LLAMA3_8B = dict(vocab=128256, hidden=4096, inter=14336, layers=32, heads=32, kv=8, tied=False)
_LLAMA3_70B = dict(vocab=128256, hidden=8192, inter=28672, layers=80, heads=64, kv=8, tied=False)
_SMOLLM2_135M = dict(vocab=49152, hidden=576, inter=1536, layers=30, heads=9, kv=3, tied=True)

# Published config.json values of the models the shipped recipes (configs/*.yaml) name, by hub id.
BUNDLED: dict[str, ModelShape] = {
    "default": _shape("default", **_SMOLLM2_135M),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _shape("HuggingFaceTB/SmolLM2-135M-Instruct", **_SMOLLM2_135M),
    "HuggingFaceTB/SmolLM2-135M": _shape("HuggingFaceTB/SmolLM2-135M", **_SMOLLM2_135M),
    "mistralai/Mistral-7B-v0.1": _shape("mistralai/Mistral-7B-v0.1", **_MISTRAL_7B),
    "mistralai/Mistral-7B-Instruct-v0.1": _shape("mistralai/Mistral-7B-Instruct-v0.1", **_MISTRAL_7B),
    "mistralai/Mixtral-8x7B-v0.1": _shape("mistralai/Mixtral-8x7B-v0.1", **_MISTRAL_7B, experts=8, per_token=2),
    "meta-llama/Meta-Llama-3-8B": _shape("meta-llama/Meta-Llama-3-8B", **_LLAMA3_8B),
    "meta-llama/Meta-Llama-3-8B-Instruct": _shape("meta-llama/Meta-Llama-3-8B-Instruct", **_LLAMA3_8B),
    "meta-llama/Meta-Llama-3-70B": _shape("meta-llama/Meta-Llama-3-70B", **_LLAMA3_70B),
    "meta-llama/Meta-Llama-3-70B-Instruct": _shape("meta-llama/Meta-Llama-3-70B-Instruct", **_LLAMA3_70B),
}


def shape_from_config(config: dict, name: str, source: str) -> ModelShape:
    """A `ModelShape` from a transformers `config.json` mapping (llama-like field names)."""
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return ModelShape(
            name=name,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            num_experts=int(config.get("num_local_experts") or config.get("num_experts") or 1),
            experts_per_token=int(config.get("num_experts_per_tok") or 1),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SamiInputError(f"{source}: not a llama-like model config (missing or bad field {e})") from None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SamiInputError(f"{path}: cannot read the model config ({e})") from None


def _hub_cache_config(repo_id: str) -> Path | None:
    found = try_to_load_from_cache(repo_id, "config.json")
    return Path(found) if isinstance(found, str) else None


def model_shape(ref: str) -> ModelShape:
    """The shape of a model reference (`default`, a local folder, a hub id), from its config.json only."""
    path = Path(ref).expanduser()
    if ref != "default" and (path / "config.json").is_file():
        return shape_from_config(_read(path / "config.json"), ref, str(path / "config.json"))
    if ref != "default" and path.suffix != ".gguf" and ref.count("/") == 1 and not path.exists():
        cached = _hub_cache_config(ref)
        if cached is not None:
            return shape_from_config(_read(cached), ref, f"hub cache {cached}")
    if ref in BUNDLED:
        return BUNDLED[ref]
    raise SamiInputError(
        f"model '{ref}': no config.json found (not a local folder, not in the hub cache, not in the bundled table "
        f"of {', '.join(k for k in BUNDLED if k != 'default')}); point it at a folder holding the model's config.json"
    )
