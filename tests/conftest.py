"""Shared fixtures: paths to the real data, the real default model, a tiny random model, a real llama.cpp server."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# As the CLI does: idle OpenMP threads sleep, so tests sharing the cores with a server or a subprocess do not stall.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMI_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` of the checkout: real HH-RLHF / TL;DR queries and the paper's constitutions."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct, converted to safetensors (cached after the first run)."""
    from sami.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_path):
    from sami.models import load_tokenizer

    return load_tokenizer(default_model_path)


@pytest.fixture(scope="session")
def default_model(default_model_path):
    """The real default model in float32, eval mode. Session-scoped: do not train it in place."""
    from sami.models import load_model

    return load_model(default_model_path).eval()


def make_tiny_model(vocab_size: int, seed: int = 0, **overrides):
    """A randomly initialised 2-layer llama built from a config (no hub), float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=overrides.pop("hidden_size", 32),
        intermediate_size=overrides.pop("intermediate_size", 64),
        num_hidden_layers=overrides.pop("num_hidden_layers", 2),
        num_attention_heads=overrides.pop("num_attention_heads", 4),
        num_key_value_heads=overrides.pop("num_key_value_heads", 2),
        max_position_embeddings=overrides.pop("max_position_embeddings", 1024),
        tie_word_embeddings=overrides.pop("tie_word_embeddings", True),
        attn_implementation="sdpa",
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_model(default_tokenizer):
    """A tiny random llama sharing the default model's tokenizer (function-scoped: safe to train)."""
    return make_tiny_model(len(default_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer) -> Path:
    """A tiny random llama saved as a model folder with the default tokenizer, for stages that load from disk."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(len(default_tokenizer)).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


@contextmanager
def loopback_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free loopback port in a thread; yields the base URL `http://127.0.0.1:PORT/v1`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def send_json(
    handler: http.server.BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None
) -> None:
    """Answer `handler`'s request with `status` and the body `data` (JSON unless `headers` sets a Content-Type)."""
    handler.send_response(status)
    for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def counting_post_server(state: dict, answer: Callable[[http.server.BaseHTTPRequestHandler], None]):
    """`loopback_server` whose every POST is read, counted in `state["requests"]` and answered by `answer(handler)`
    (a scripted OpenAI-compatible server for the fault tests)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state["requests"] += 1
            answer(self)

    return loopback_server(Handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_gguf(model_path: Path, alias: str = "smollm2") -> Iterator[str]:
    """A real OpenAI-compatible llama.cpp server on loopback serving `model_path`; yields its base URL."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make test installs it)")
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"sami-llama-server-{port}.log"
    log = log_path.open("w")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--model_alias", alias]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited early; see {log_path}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start in 120 s; see {log_path}") from None
                time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def llama_server():
    """A real OpenAI-compatible server (llama.cpp) on loopback serving the bundled GGUF; yields its base URL."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make test installs it)")
    from sami.models import default_gguf_path

    with serve_gguf(default_gguf_path()) as base_url:
        yield base_url
