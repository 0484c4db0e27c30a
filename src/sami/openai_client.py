"""The one client for OpenAI-compatible servers (vLLM, TGI, SGLang, llama.cpp, hosted APIs).

Used by the `openai` generation backend (`sami.generation.openai_backend`), the `api` judge and the principle
writer, each built from its `sami.endpoint.EndpointSettings` (`OpenAIClient.from_endpoint`).
`OpenAIClient` wraps the `openai` SDK (built with `max_retries=0`: the retries are ours) and adds:

- retries: 408/409/429/5xx, connection errors, timeouts and malformed 200 answers (a body that is not JSON, cut
  short, or holds no choices) are retried with exponential backoff and jitter,
  waiting at least what a server's `Retry-After` asks (capped at `retry_max_backoff`); other errors fail at once;
- the API key only from the environment variable named by `api_key_env`; it is never logged, shown in a repr
  or put in an error message. A loopback `base_url` (localhost, 127.0.0.1, ::1) needs no key;
- bounded concurrency: at most `max_concurrency` requests in flight over all threads using the client, and
  `map` to run many requests in that many threads;
- a timeout per request.

Failures raise `ApiError` (a `SamiInputError`: one line naming the endpoint, never the key).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import openai

from sami.cli_settings import ENV_VAR_NAME
from sami.endpoint import DEFAULT_MAX_RETRIES, EndpointSettings
from sami.errors import SamiInputError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRY_STATUS = {408, 409, 429}
LOCAL_HOSTS = {"localhost", "0.0.0.0"}
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_NO_KEY = "sami-no-key"  # local servers usually need no key, but the SDK wants one


class ApiError(SamiInputError):
    """A request failed for good (after the retries, or at once for a non-retryable error)."""


class Aborted(Exception):
    """Another request of the same `map` failed; this one stops before its next attempt."""


class MalformedReply(ValueError):
    """A 200 answer that is no completion (no choices); retried like a transient error."""


# What a 200 with a bad body raises inside the SDK (JSON that does not parse, a body cut short, a shape the SDK's
# models refuse) or our own check: all retried, then an `ApiError` naming the endpoint.
MALFORMED: tuple[type[Exception], ...] = (json.JSONDecodeError, MalformedReply, UnicodeDecodeError)


def is_local(url: str) -> bool:
    """Whether `url` points at this machine (a loopback address or localhost): such servers need no key."""
    host = urlparse(url).hostname or ""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Reply:
    """One answer: its text, why it ended (`finish_reason`: "stop", "length", ... as the server says), the
    completion tokens the server counted (None when it reports no usage) and the server's extra choice fields
    (`model_extra`, e.g. llama.cpp's `stop_type`, vLLM's `stop_reason`). The names are the SDK choice's.
    Unpacks as `text, finish_reason = reply`."""

    text: str
    finish_reason: str | None
    num_tokens: int | None = None
    model_extra: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.text, self.finish_reason))


class OpenAIClient:
    """An OpenAI-compatible endpoint with our retries, key handling and concurrency bound.

    `field` names the settings section in error messages (`generation`, `judge`)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff: float = 1.0,
        retry_max_backoff: float = 30.0,
        max_concurrency: int = 8,
        extra_body: dict[str, Any] | None = None,
        field: str = "generation",
    ):

        url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if api_key_env and not re.fullmatch(ENV_VAR_NAME, api_key_env):
            raise SamiInputError(
                f"{field}.api_key_env: expected the name of an environment variable (value not shown)"
            )
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            if not is_local(url):
                raise SamiInputError(
                    f"{field}.api_key_env: the environment variable {api_key_env or '(none)'} is not set; "
                    f"it must hold the API key for {url}"
                )
            key = _NO_KEY
        self._secret = key if key != _NO_KEY else None  # only to scrub it from error text
        self.base_url = url
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_max_backoff = retry_max_backoff
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)

    @classmethod
    def from_endpoint(
        cls, settings: EndpointSettings, *, field: str, extra_body: dict[str, Any] | None = None
    ) -> OpenAIClient:
        """The client of an `EndpointSettings` (`field`: its settings section, for error messages)."""
        return cls(
            settings.base_url,
            api_key_env=settings.api_key_env,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            retry_backoff=settings.retry_backoff,
            retry_max_backoff=settings.retry_max_backoff,
            max_concurrency=settings.max_concurrency,
            extra_body=extra_body,
            field=field,
        )

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self.base_url!r})"

    # ---- requests ----------------------------------------------------------------------------------
    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        abort: threading.Event | None = None,
    ) -> Reply:
        """A chat completion (instruction-tuned models)."""
        kwargs = self._request(model, max_tokens, temperature, top_p, seed, stop)
        resp = self._with_retries(
            lambda: self._checked(self._client.chat.completions.create(messages=messages, **kwargs)), abort
        )
        choice = self._first_choice(resp)
        message = getattr(choice, "message", None)
        return self._reply(resp, choice, (message.content if message is not None else None) or "")

    def complete(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        abort: threading.Event | None = None,
    ) -> Reply:
        """A plain-text completion (base models)."""
        kwargs = self._request(model, max_tokens, temperature, top_p, seed, stop)
        resp = self._with_retries(
            lambda: self._checked(self._client.completions.create(prompt=prompt, **kwargs)), abort
        )
        choice = self._first_choice(resp)
        return self._reply(resp, choice, choice.text or "")

    def models(self) -> list[str]:
        """The model ids the server lists."""
        return [m["id"] for m in self.model_entries()]

    def model_entries(self) -> list[dict[str, Any]]:
        """The server's `/v1/models` entries: `id` and any extra fields (vLLM's `root`: the path it loaded)."""
        listing = self._with_retries(lambda: self._client.models.list(), None, what="list models")
        return [{**(getattr(m, "model_extra", None) or {}), "id": m.id} for m in getattr(listing, "data", []) or []]

    def map(self, fn: Callable[[T, threading.Event], R], items: list[T]) -> list[R]:
        """`[fn(item, abort) for item in items]` in up to `max_concurrency` threads, results in item order.

        When one call raises, `abort` is set so the others stop before their next attempt (raising `Aborted`,
        which is skipped), and the first real error is raised."""
        if not items:
            return []
        abort = threading.Event()

        def one(item: T) -> R:
            try:
                return fn(item, abort)
            except Aborted:
                raise
            except BaseException:
                abort.set()
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)), thread_name_prefix="sami-api")
        try:
            futures = [pool.submit(one, item) for item in items]
            results = []
            for f in futures:
                try:
                    results.append(f.result())
                except Aborted:
                    continue  # only after another call failed; that error is raised when its turn comes
            return results
        except BaseException:
            abort.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    # ---- internals ---------------------------------------------------------------------------------
    def _request(self, model, max_tokens, temperature, top_p, seed, stop) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
        if top_p < 1.0:
            kwargs["top_p"] = top_p
        stop = [s for s in (stop or []) if s]
        if stop:
            kwargs["stop"] = stop
        if seed is not None:
            kwargs["seed"] = seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    @staticmethod
    def _checked(resp: Any) -> Any:
        """`resp` when it is an answer with choices; raises `MalformedReply` (retried) otherwise."""
        if not getattr(resp, "choices", None):
            raise MalformedReply("the server answered 200 without choices")
        return resp

    def _first_choice(self, resp: Any) -> Any:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise ApiError(f"{self.base_url}: the server returned no choices")
        return choices[0]

    @staticmethod
    def _reply(resp: Any, choice: Any, text: str) -> Reply:
        usage = getattr(resp, "usage", None)
        tokens = getattr(usage, "completion_tokens", None)
        extra = dict(getattr(choice, "model_extra", None) or {})
        return Reply(text, choice.finish_reason, int(tokens) if tokens is not None else None, extra)

    def _with_retries(self, call: Callable[[], R], abort: threading.Event | None, what: str = "request") -> R:

        abort = abort or threading.Event()
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if abort.is_set():
                raise Aborted()
            try:
                with self._slots:
                    return call()
            except (
                openai.APIConnectionError,
                openai.APIStatusError,
                openai.APIResponseValidationError,
                *MALFORMED,
            ) as e:
                malformed = isinstance(e, (openai.APIResponseValidationError, *MALFORMED))
                status = None if malformed else getattr(e, "status_code", None)
                retryable = malformed or status is None or status in RETRY_STATUS or status >= 500
                message = self._describe(e, status)
                if not retryable:
                    raise ApiError(f"{what} to {self.base_url} failed: {message}") from None
                if attempt + 1 == attempts:
                    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
                    raise ApiError(f"{what} to {self.base_url} failed after {tries}: {message}") from None
                delay = self.delay(attempt, e)
                log.debug("%s to %s failed (%s); retry %d in %.2fs", what, self.base_url, message, attempt + 1, delay)
                if abort.wait(delay):
                    raise Aborted() from None
        raise AssertionError("unreachable")

    def delay(self, attempt: int, error: Exception | None = None) -> float:
        """Seconds before retry `attempt + 1`: exponential backoff with jitter; a server's `Retry-After`
        (seconds) wins when it asks for longer, up to `retry_max_backoff`."""
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
        if isinstance(error, openai.APITimeoutError):
            text = f"timed out after {self.timeout:g}s"
        elif isinstance(error, (openai.APIResponseValidationError, *MALFORMED)):
            detail = " ".join(str(error).split())
            text = f"malformed answer ({type(error).__name__}: {detail[:200]})"
        elif status is None:
            text = "connection failed (is the server running?)"
        else:
            detail = " ".join(str(getattr(error, "message", "") or error).split())
            text = f"HTTP {status}: {detail[:300]}"
        if self._secret:
            text = text.replace(self._secret, "***")
        return text
