"""Generation through any OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, hosted APIs).

A plain-text prompt goes to the completions endpoint (base models), chat messages to the chat endpoint
(instruction-tuned models). Requests run in a pool of `max_concurrency` threads. Retries are ours, not
the client's (it is built with `max_retries=0`): 408/409/429/5xx, connection errors and timeouts are retried
with exponential backoff and jitter (honouring `Retry-After`); other errors fail at once. The API key is read
from the environment variable named by `api_key_env` and is never logged, shown or put in an error.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from sami.errors import SamiInputError
from sami.generation.base import Completion, GenerationSettings, Prompt, check_request, cut_at_stop

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429}
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_DUMMY_KEY = "sami-no-key"


class GenerationError(SamiInputError):
    """A generation request failed for good (after the retries, or at once for a non-retryable error)."""


class _Aborted(Exception):
    """Another request of the same call failed; this one stops early."""


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
        max_retries: int = 5,
        retry_backoff: float = 1.0,
        retry_max_backoff: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ):
        import openai

        url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            if urlparse(url).hostname not in LOCAL_HOSTS:
                raise SamiInputError(
                    f"generation.api_key_env: the environment variable {api_key_env or '(none)'} is not set; "
                    f"it must hold the API key for {url}"
                )
            key = _DUMMY_KEY  # local servers usually need no key, but the client wants one
        self._secret = key if key != _DUMMY_KEY else None  # only to scrub it from error text
        self.base_url = url.rstrip("/")
        self.model_name = model_name
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_max_backoff = retry_max_backoff
        self.extra_body = dict(extra_body or {})
        self._client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIGenerator(base_url={self.base_url!r}, model_name={self.model_name!r})"

    @classmethod
    def from_settings(cls, settings: GenerationSettings, *, model_name: str | None = None) -> OpenAIGenerator:
        return cls(
            settings.base_url,
            model_name=model_name or settings.model_name,
            api_key_env=settings.api_key_env,
            max_concurrency=settings.max_concurrency,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            retry_backoff=settings.retry_backoff,
            retry_max_backoff=settings.retry_max_backoff,
            extra_body=settings.extra_body,
        )

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
        abort = threading.Event()

        def one(prompt: Prompt) -> Completion:
            try:
                return self._complete(prompt, model, max_new_tokens, temperature, top_p, stop, seed, abort)
            except GenerationError as e:
                if raise_on_error:
                    abort.set()
                    raise
                return Completion(text="", num_tokens=0, finish_reason="error", error=str(e))

        workers = min(self.max_concurrency, len(prompts))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sami-openai")
        try:
            futures = [pool.submit(one, p) for p in prompts]
            results = []
            for f in futures:
                try:
                    results.append(f.result())
                except _Aborted:
                    continue  # only happens after another request failed; that error is raised below
            return results
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def resolve_model_name(self) -> str:
        """The model to request: `model_name`, else the first model the server lists (asked once)."""
        with self._lock:
            if self.model_name is None:
                listing = self._with_retries(lambda: self._client.models.list(), threading.Event(), what="list models")
                ids = [m.id for m in getattr(listing, "data", []) or []]
                if not ids:
                    raise GenerationError(f"{self.base_url}: the server lists no models; set generation.model_name")
                self.model_name = ids[0]
            return self.model_name

    # ---- internals -------------------------------------------------------------------------------
    def _complete(self, prompt, model, max_new_tokens, temperature, top_p, stop, seed, abort) -> Completion:
        kwargs: dict[str, Any] = {"model": model, "max_tokens": max_new_tokens, "temperature": temperature}
        if top_p < 1.0:
            kwargs["top_p"] = top_p
        if stop:
            kwargs["stop"] = stop
        if seed is not None:
            kwargs["seed"] = seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        if isinstance(prompt, str):
            resp = self._with_retries(lambda: self._client.completions.create(prompt=prompt, **kwargs), abort)
            choice = _first_choice(resp, self.base_url)
            text = choice.text or ""
        else:
            resp = self._with_retries(lambda: self._client.chat.completions.create(messages=prompt, **kwargs), abort)
            choice = _first_choice(resp, self.base_url)
            text = (choice.message.content if choice.message is not None else None) or ""
        text, found = cut_at_stop(text, stop)
        usage = getattr(resp, "usage", None)
        num_tokens = getattr(usage, "completion_tokens", None)
        if num_tokens is None:
            num_tokens = len(text.split())  # the server reported no usage: a rough count
        reason = "length" if choice.finish_reason == "length" and not found else "stop"
        return Completion(
            text=text,
            num_tokens=int(num_tokens),
            finish_reason=reason,
            ended_with_eos=_ended_with_eos(choice, found, stop),
        )

    def _with_retries(self, call, abort: threading.Event, what: str = "request"):
        import openai

        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if abort.is_set():
                raise _Aborted()
            try:
                return call()
            except (openai.APIConnectionError, openai.APIStatusError) as e:
                status = getattr(e, "status_code", None)
                retryable = status is None or status in RETRY_STATUS or status >= 500
                message = self._describe(e, status)
                if not retryable:
                    raise GenerationError(f"{what} to {self.base_url} failed: {message}") from None
                if attempt + 1 == attempts:
                    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
                    raise GenerationError(f"{what} to {self.base_url} failed after {tries}: {message}") from None
                delay = self._delay(attempt, e)
                log.debug("%s to %s failed (%s); retry %d in %.2fs", what, self.base_url, message, attempt + 1, delay)
                if abort.wait(delay):
                    raise _Aborted() from None
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, error: Exception) -> float:
        """Exponential backoff with jitter; a server's `Retry-After` (seconds) wins when it says longer."""
        delay = min(self.retry_max_backoff, self.retry_backoff * 2**attempt) * random.uniform(0.5, 1.0)
        response = getattr(error, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                delay = max(delay, min(self.retry_max_backoff, float(header)))
            except ValueError:
                pass
        return delay

    def _describe(self, error: Exception, status: int | None) -> str:
        """A one-line, key-free description of a failed request."""
        import openai

        if isinstance(error, openai.APITimeoutError):
            text = f"timed out after {self.timeout:g}s"
        elif status is None:
            text = "connection failed (is the server running?)"
        else:
            detail = " ".join(str(getattr(error, "message", "") or error).split())
            text = f"HTTP {status}: {detail[:300]}"
        if self._secret:
            text = text.replace(self._secret, "***")
        return text


def _ended_with_eos(choice: Any, found: bool, stop: list[str]) -> bool | None:
    """Whether the server's "stop" was the model's EOS: yes without stop strings; with them, only a server that
    says why it stopped can tell (vLLM's `stop_reason`: None for EOS; llama.cpp's `stop_type`: "eos")."""
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


def _first_choice(resp: Any, url: str):
    choices = getattr(resp, "choices", None)
    if not choices:
        raise GenerationError(f"{url}: the server returned no choices")
    return choices[0]
