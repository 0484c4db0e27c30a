"""The generator protocol shared by every backend and its settings (`make_generator`: `sami.generation.factory`)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from sami.cli_settings import refuse_foreign_fields, settings_union
from sami.endpoint import EndpointSettings
from sami.errors import SamiInputError

Prompt = str | list[dict]
FINISH_REASONS = ("stop", "length", "error")


@dataclass
class Completion:
    """One generated text. `finish_reason` is "stop" (end of sequence or a stop string), "length" (the
    token budget ran out) or "error" (the request failed; `error` says why and `text` is empty).

    `ended_with_eos` tells the two kinds of "stop" apart: True when the model ended the text with its
    end-of-sequence token, False when a stop string cut it (or the budget ran out, or it failed), None when the
    backend cannot tell (a server that cuts stop strings itself and does not say why it stopped). `text` keeps
    the whitespace the model wrote first (e.g. the space of `ĠSure`). The hf backend also gives `token_ids`, the
    generated ids (EOS left out, stop-string tokens kept), and with `logprobs` on, `logprob`: the model's summed
    log-probability (temperature 1) of those ids plus the EOS when `ended_with_eos`."""

    text: str
    num_tokens: int
    finish_reason: str
    error: str | None = None
    ended_with_eos: bool | None = None
    token_ids: list[int] | None = None
    logprob: float | None = None


@runtime_checkable
class TextGenerator(Protocol):
    """Turns prompts into completions. A `str` prompt is a plain completion; a `list[dict]` is chat messages
    (the hf backend applies the tokenizer's chat template, the openai backend uses the chat endpoint).

    `temperature=0` is greedy decoding. `stop` strings end a sequence; the returned text is cut before the
    first one. `seed` makes sampling reproducible. The result has one `Completion` per prompt, in order.
    """

    def generate(
        self,
        prompts: list[Prompt],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[Completion]: ...


class _Generation(BaseModel):
    """What every backend reads: the default budget and sampling of a call."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(350, ge=1, description="default token budget per response")
    temperature: float = Field(0.0, ge=0, description="default sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="default nucleus sampling mass")
    seed: int | None = Field(0, description="seed that makes sampling reproducible (None: a fresh one per call)")

    @model_validator(mode="before")
    @classmethod
    def _only_own_fields(cls, data: Any) -> Any:
        return refuse_foreign_fields(cls, data, "backend", BACKENDS)


class _LocalModel(BaseModel):
    """The model a local backend (hf, vllm) loads."""

    model: str = Field(
        "default", description="hf/vllm: the model ('default', a local folder, a GGUF file or a cached hub id)"
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="hf/vllm: weights dtype for generation (None: float32 for hf, 'auto' for vllm)"
    )
    trust_remote_code: bool = Field(False, description="hf/vllm: allow custom model code from the model folder")


class HFGeneration(_Generation, _LocalModel):
    """`backend: hf`: transformers in this process."""

    backend: Literal["hf"] = Field(
        "hf", description="hf: transformers in this process; openai: an OpenAI-compatible server; vllm: vLLM offline"
    )
    device: str | None = Field(
        None, description="hf: torch device for a model it loads (None: cuda if available, else cpu)"
    )
    batch_size: int = Field(8, ge=1, description="hf: prompts per forward batch (batches are sorted by length)")
    prefill_batch_size: int | None = Field(
        None,
        ge=1,
        description="hf: prompts per prefill forward within a batch (None: 8 on CPU, where smaller prefill GEMMs "
        "run faster, the whole batch elsewhere)",
    )
    share_prefix: bool = Field(
        True, description="hf: compute the token prefix all prompts of a batch share (template instructions) once"
    )
    num_threads: int | None = Field(None, ge=1, description="hf: torch CPU threads (None: torch's default)")


class VLLMGeneration(_Generation, _LocalModel):
    """`backend: vllm`: vLLM's offline engine."""

    backend: Literal["vllm"] = "vllm"
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs to shard the model over")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm: fraction of GPU memory to use")
    max_model_len: int | None = Field(None, ge=1, description="vllm: context length (None: the model's)")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: extra keyword arguments for vllm.LLM(...)"
    )


class OpenAIGeneration(_Generation, EndpointSettings):
    """`backend: openai`: an OpenAI-compatible server (the endpoint fields are `EndpointSettings`')."""

    backend: Literal["openai"] = "openai"
    server: str | None = Field(
        None,
        description="openai: a command the run starts on the policy for each self-generation stage and stops after "
        "it, with {model} and {port} filled in, e.g. 'vllm serve {model} --port {port}' (None: a server you run; "
        "for a trained checkpoint it must list that checkpoint's path in /v1/models, or the stage stops)",
    )
    server_port: int = Field(8000, ge=1, le=65535, description="openai: the port {port} of generation.server")
    server_timeout: float = Field(
        900.0, gt=0, description="openai: seconds generation.server may take to answer /v1/models"
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="openai: extra JSON fields sent with every request (e.g. {top_k: 1})"
    )


BACKENDS: dict[str, type[_Generation]] = {"hf": HFGeneration, "vllm": VLLMGeneration, "openai": OpenAIGeneration}

# Which backend generates text, and how: one settings class per backend, chosen by `backend` (default hf); a field
# of another backend is refused in one line naming it.
GenerationSettings = settings_union("backend", "hf", BACKENDS)
_ADAPTER: TypeAdapter = TypeAdapter(GenerationSettings)


def parse_generation(**fields: Any) -> HFGeneration | VLLMGeneration | OpenAIGeneration:
    """The settings of the backend `fields["backend"]` names (default hf), validated."""
    return _ADAPTER.validate_python(fields)


@contextmanager
def closing(generator: Any) -> Iterator[Any]:
    """Yield `generator`; afterwards (success or error) call its `close()` if it has one: a vLLM engine or a
    server client does not outlive the stage that built it."""
    try:
        yield generator
    finally:
        close = getattr(generator, "close", None)
        if callable(close):
            close()


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    cut = len(text)
    for s in stop or ():
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


def prompt_seed(seed: int, prompt_text: str, occurrence: int = 0) -> int:
    """The sampling seed of one prompt: a hash of the run seed, the prompt text and which repeat it is."""
    digest = hashlib.sha256(f"{seed}\x00{occurrence}\x00{prompt_text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def prompt_seeds(seed: int, keys: list[str]) -> list[int]:
    """One sampling seed per prompt (`keys`: its text): a prompt's draw does not depend on which other prompts
    share its request, and repeats of one prompt get different seeds."""
    seen: Counter[str] = Counter()
    seeds = []
    for key in keys:
        seeds.append(prompt_seed(seed, key, seen[key]))
        seen[key] += 1
    return seeds


def check_request(prompts: list, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """Raise `SamiInputError` on arguments no backend can honour."""
    if not isinstance(prompts, list):
        raise SamiInputError(f"prompts: expected a list of prompts, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) and not (isinstance(p, list) and all(isinstance(m, dict) for m in p)):
            raise SamiInputError(f"prompts[{i}]: expected a string or a list of chat messages")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SamiInputError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise SamiInputError(f"temperature: must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise SamiInputError(f"top_p: must be in (0, 1], got {top_p}")
