"""Generation through any OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, hosted APIs).

A plain-text prompt goes to the completions endpoint (base models), chat messages to the chat endpoint
(instruction-tuned models). The transport is `sami.openai_client.OpenAIClient`: requests run in up to
`max_concurrency` threads, retryable failures (408/409/429/5xx, connection errors, timeouts) are retried with
exponential backoff and jitter (honouring `Retry-After`), and the API key is read from the environment variable
named by `api_key_env` and never logged, shown or put in an error.
"""

from __future__ import annotations

import threading
from typing import Any

from sami.endpoint import DEFAULT_MAX_RETRIES
from sami.generation.base import Completion, OpenAIGeneration, Prompt, check_request, cut_at_stop
from sami.openai_client import ApiError, OpenAIClient, Reply

GenerationError = ApiError  # the name this backend's callers catch


class OpenAIGenerator:
    """A `TextGenerator` over an OpenAI-compatible HTTP server."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        model_name: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = 1.0,
        retry_max_backoff: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ):
        client = OpenAIClient(
            base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_max_backoff=retry_max_backoff,
            max_concurrency=max_concurrency,
            extra_body=extra_body,
            field="generation",
        )
        self._start(client, model_name)

    def _start(self, client: OpenAIClient, model_name: str | None) -> None:
        self.client = client
        self.base_url = client.base_url
        self.model_name = model_name
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIGenerator(base_url={self.base_url!r}, model_name={self.model_name!r})"

    @classmethod
    def from_settings(cls, settings: OpenAIGeneration, *, model_name: str | None = None) -> OpenAIGenerator:
        generator = cls.__new__(cls)
        generator._start(
            OpenAIClient.from_endpoint(settings, field="generation", extra_body=settings.extra_body),
            model_name or settings.model_name,
        )
        return generator

    # ---- public ----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[Prompt],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        raise_on_error: bool = True,
    ) -> list[Completion]:
        """One completion per prompt. With `raise_on_error=False` a request that fails for good gives a
        `Completion` with finish_reason "error" and the reason in `error`, instead of raising `GenerationError`."""
        check_request(prompts, max_new_tokens, temperature, top_p)
        if not prompts:
            return []
        model = self.resolve_model_name()
        stop = [s for s in (stop or []) if s]

        def one(prompt: Prompt, abort: threading.Event) -> Completion:
            try:
                return self._complete(prompt, model, max_new_tokens, temperature, top_p, stop, seed, abort)
            except GenerationError as e:
                if raise_on_error:
                    raise
                return Completion(text="", num_tokens=0, finish_reason="error", error=str(e))

        return self.client.map(one, prompts)

    def resolve_model_name(self) -> str:
        """The model to request: `model_name`, else the first model the server lists (asked once)."""
        with self._lock:
            if self.model_name is None:
                ids = self.client.models()
                if not ids:
                    raise GenerationError(f"{self.base_url}: the server lists no models; set generation.model_name")
                self.model_name = ids[0]
            return self.model_name

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    # ---- internals -------------------------------------------------------------------------------
    def _complete(self, prompt, model, max_new_tokens, temperature, top_p, stop, seed, abort) -> Completion:
        request = dict(model=model, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        if isinstance(prompt, str):
            reply = self.client.complete(prompt, stop=stop, abort=abort, **request)
        else:
            reply = self.client.chat(prompt, stop=stop, abort=abort, **request)
        text, found = cut_at_stop(reply.text, stop)
        num_tokens = reply.num_tokens if reply.num_tokens is not None else len(text.split())  # no usage: rough
        reason = "length" if reply.finish_reason == "length" and not found else "stop"
        return Completion(
            text=text,
            num_tokens=int(num_tokens),
            finish_reason=reason,
            ended_with_eos=_ended_with_eos(reply, found, stop),
        )


def _ended_with_eos(choice: Reply | Any, found: bool, stop: list[str]) -> bool | None:
    """Whether the server's "stop" was the model's EOS: yes without stop strings; with them, only a server that
    says why it stopped can tell (vLLM's `stop_reason`: None for EOS; llama.cpp's `stop_type`: "eos").
    `choice`: a `Reply` or an SDK choice (both have `finish_reason` and `model_extra`)."""
    if found or choice.finish_reason != "stop":
        return False
    if not stop:
        return True
    extra = getattr(choice, "model_extra", None) or {}
    if extra.get("stop_type") is not None:
        return extra["stop_type"] == "eos"
    if "stop_reason" in extra:
        return extra["stop_reason"] is None
    return None
