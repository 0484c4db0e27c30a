"""The server behind `generation.backend: openai` serves the policy it is given, or the run stops.

Self-generation at iteration t >= 2 samples from π_{t-1}, a checkpoint this run trained. An OpenAI-compatible
server started by hand keeps serving what it was started on (π₀, unless someone restarted it), so a run that
just sent `generation.model_name` would generate with the wrong policy and say nothing. Two ways out:

- `generation.server` (a command template, e.g. `vllm serve {model} --port {port}`): the run starts it on the
  policy for the stage, waits until `/v1/models` answers (`generation.server_timeout`), generates, and stops it
  (SIGTERM to its process group, SIGKILL after 30 s). Its output goes to `server.log` beside the samples.
- otherwise, for a trained checkpoint, the server's `/v1/models` must list it (a model whose `id` or vLLM's
  `root` is the checkpoint's path); if none does the stage stops before writing a sample, with one line saying
  what to serve and that rerunning the same command resumes.

No library starts and supervises an arbitrary inference server for us, so this is a small `subprocess` wrapper.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from sami.errors import SamiInputError
from sami.generation.base import OpenAIGeneration
from sami.openai_client import ApiError, OpenAIClient

STOP_GRACE = 30.0  # seconds a managed server gets to exit after SIGTERM


def served_models(settings: OpenAIGeneration, *, timeout: float = 30.0, max_retries: int = 2) -> list[dict]:
    """The server's `/v1/models` entries (`id`, and vLLM's `root` where given)."""
    client = OpenAIClient(
        settings.base_url, api_key_env=settings.api_key_env, timeout=min(settings.timeout, timeout),
        max_retries=max_retries, retry_backoff=settings.retry_backoff, retry_max_backoff=settings.retry_max_backoff,
        field="generation",
    )  # fmt: skip
    try:
        return client.model_entries()
    finally:
        client.close()


def _same_path(name: object, policy: str) -> bool:
    if not isinstance(name, str) or not name:
        return False
    if name == policy:
        return True
    return os.path.realpath(os.path.expanduser(name)) == os.path.realpath(policy)


def matching_model(models: list[dict], policy: str) -> str | None:
    """The id of the listed model that is `policy` (its id or `root` is the policy's path), or None."""
    for m in models:
        if _same_path(m.get("id"), policy) or _same_path(m.get("root"), policy):
            return str(m["id"])
    return None


def check_served_policy(settings: OpenAIGeneration, policy: str, *, what: str) -> str:
    """The server's id for `policy`, or a `SamiInputError` saying what to serve and how to resume."""
    models = served_models(settings)
    found = matching_model(models, policy)
    if found is None:
        listed = [m.get("id") for m in models]
        raise SamiInputError(
            f"{what}: generation.backend openai: the server at {settings.base_url} serves {listed}, not the policy "
            f"{policy}; serve it (e.g. `vllm serve {policy}`) and rerun the same command to resume, or set "
            "generation.server (e.g. 'vllm serve {model} --port {port}') to let the run start it"
        )
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, n: int = 300) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-n:].split())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def managed_url(settings: OpenAIGeneration) -> str:
    """The base URL of the server `generation.server` starts: `base_url`, else loopback on `server_port`."""
    return settings.base_url or f"http://127.0.0.1:{settings.server_port}/v1"


@contextmanager
def managed_server(settings: OpenAIGeneration, policy: str, *, what: str, log_path: Path) -> Iterator[str]:
    """Start `settings.server` on `policy`, wait until it lists a model, yield that model's id; stop it after."""
    template = settings.server or ""
    base_url = managed_url(settings)
    port = urlparse(base_url).port or settings.server_port
    if _port_in_use(port):
        raise SamiInputError(
            f"{what}: generation.server: port {port} is already in use; stop what listens there or set "
            "generation.server_port"
        )
    try:
        argv = shlex.split(template.format(model=shlex.quote(str(policy)), port=port))
    except (KeyError, IndexError, ValueError) as e:
        hint = "use {model} and {port}"
        raise SamiInputError(f"generation.server: bad command template {template!r} ({e}); {hint}") from None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise SamiInputError(f"generation.server: cannot start {argv[0]!r}: {e}") from None
    try:
        probe = settings.model_copy(update={"base_url": base_url})
        deadline = time.monotonic() + settings.server_timeout
        while True:
            if proc.poll() is not None:
                raise SamiInputError(
                    f"{what}: generation.server exited with code {proc.returncode} before serving "
                    f"(log {log_path}: {_tail(log_path)})"
                )
            try:
                models = served_models(probe, timeout=5.0, max_retries=0)
            except ApiError:
                models = []
            if models:
                break
            if time.monotonic() > deadline:
                raise SamiInputError(
                    f"{what}: generation.server did not serve {base_url}/models within {settings.server_timeout:g} s "
                    f"(raise generation.server_timeout; log {log_path})"
                )
            time.sleep(0.5)
        found = matching_model(models, policy)
        yield found if found is not None else str(models[0]["id"])  # we started it on the policy
    finally:
        _stop(proc)


@contextmanager
def policy_endpoint(
    settings: OpenAIGeneration, policy: str, *, base_policy: str, what: str, log_path: Path
) -> Iterator[OpenAIGeneration]:
    """The generation settings that reach a server serving `policy` (other backends: `settings` as they are).

    With `generation.server` the run starts one for the stage; otherwise a trained checkpoint (`policy` other
    than `base_policy`) must be listed by the server, or this raises before anything is generated."""
    if settings.backend != "openai":
        yield settings
        return
    if settings.server:
        base_url = managed_url(settings)
        with managed_server(settings, policy, what=what, log_path=log_path) as name:
            yield settings.model_copy(update={"base_url": base_url, "model_name": name})
        return
    if str(policy) == str(base_policy):
        yield settings  # π₀: the server's model_name (or first model), as configured
        return
    yield settings.model_copy(update={"model_name": check_served_policy(settings, str(policy), what=what)})
