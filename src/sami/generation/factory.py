"""Build a text generator: `make_generator` (the backend a `GenerationSettings` names) and `policy_generator` (the
generator of a run's self-generation). Above `base` and the backends, which it imports, so that none of them
imports another backend."""

from __future__ import annotations

from typing import Any

from sami.errors import SamiInputError
from sami.generation.base import GenerationSettings, HFGeneration, TextGenerator
from sami.generation.hf import HFGenerator
from sami.generation.openai_backend import OpenAIGenerator
from sami.generation.vllm_backend import VLLMGenerator
from sami.models import load_tokenizer
from sami.run_config import RunConfig


def make_generator(settings: GenerationSettings | None = None, *, model: Any = None, tokenizer: Any = None):
    """Build the backend `settings.backend` describes.

    hf: `model`/`tokenizer` are an already loaded model and tokenizer (used as they are), or `model` is a
    model reference that overrides `settings.model`. vllm: `model` may be a reference (a path) overriding
    `settings.model`. openai: `model`, if a string, overrides `settings.model_name`.
    """
    settings = settings or HFGeneration()
    if settings.backend == "hf":
        return HFGenerator.from_settings(settings, model=model, tokenizer=tokenizer)
    if settings.backend == "openai":
        if model is not None and not isinstance(model, str):
            raise SamiInputError("generation.backend 'openai' cannot use a model object; give its name on the server")
        return OpenAIGenerator.from_settings(settings, model_name=model)
    if settings.backend == "vllm":
        return VLLMGenerator.from_settings(settings, model=model)
    raise SamiInputError(f"generation.backend: expected hf, openai or vllm, got {settings.backend!r}")


def policy_generator(
    config: RunConfig, policy: str, *, model: Any = None, tokenizer: Any = None
) -> tuple[TextGenerator, Any]:
    """The generator a run's self-generation uses with `policy` (a model reference), and the tokenizer that
    renders its chat-style training prompts (None for base-style prompts when the backend has none).

    `model`/`tokenizer` may be an already loaded policy (hf backend)."""
    settings = config.generation
    if settings.backend != "openai":  # a local backend loads the policy (a server serves it: generation.server)
        settings = settings.model_copy(
            update={
                "model": str(policy),
                "dtype": settings.dtype or config.model.dtype,
                "trust_remote_code": settings.trust_remote_code or config.model.trust_remote_code,
            }
        )
    generator = make_generator(settings, model=model, tokenizer=tokenizer)
    tokenizer = tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)
    if config.prompts.style == "chat" and tokenizer is None:
        tokenizer = load_tokenizer(str(policy), trust_remote_code=config.model.trust_remote_code)
    return generator, tokenizer
