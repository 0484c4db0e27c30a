"""The openai backend against a real llama.cpp server on loopback, with a small proxy that injects failures."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import free_port, loopback_server, send_json

from sami.errors import SamiInputError
from sami.generation import parse_generation
from sami.generation.factory import make_generator
from sami.generation.openai_backend import GenerationError, OpenAIGenerator

QUESTION = "What is 2+2?"  # the bundled model answers "... is 4." and stops
PROMPT = f"Human: {QUESTION}\n\nAssistant:"
FAST = dict(retry_backoff=0.01, retry_max_backoff=0.05)


@contextmanager
def failing_proxy(upstream: str, *, fail: int = 0, status: int = 500, delay_first: float = 0.0):
    """A loopback HTTP proxy to `upstream` (http://host:port/v1) that answers the first `fail` requests with
    `status`, or holds the first request `delay_first` seconds and drops it, and forwards everything else."""
    origin = upstream.rsplit("/v1", 1)[0]
    state = {"requests": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _handle(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                state["requests"] += 1
                n = state["requests"]
            if n <= fail:
                send_json(self, status, b'{"error": {"message": "injected failure", "type": "server_error"}}')
                return
            if n == 1 and delay_first:
                time.sleep(delay_first)  # longer than the client waits: it gives up and retries
                return
            req = urllib.request.Request(origin + self.path, data=body or None, method=self.command)
            req.add_header("Content-Type", self.headers.get("Content-Type") or "application/json")
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    code, data, ctype = resp.status, resp.read(), resp.headers.get("Content-Type")
            except urllib.error.HTTPError as e:
                code, data, ctype = e.code, e.read(), e.headers.get("Content-Type")
            try:
                send_json(self, code, data, {"Content-Type": ctype or "application/json"})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on this request (a timeout test)

        do_GET = do_POST = _handle

    with loopback_server(Handler) as url:
        yield url, state


@pytest.mark.slow
def test_completions_and_chat_on_a_real_server(llama_server):
    gen = make_generator(parse_generation(backend="openai", base_url=llama_server, max_concurrency=2))
    assert isinstance(gen, OpenAIGenerator)
    prompts = [PROMPT, [{"role": "user", "content": QUESTION}]]
    text, chat = gen.generate(prompts, max_new_tokens=24, stop=["Human:"])
    assert gen.model_name == "smollm2"  # asked the server which model it serves
    assert text.text.strip() and 0 < text.num_tokens <= 24 and "Human:" not in text.text
    assert "4" in chat.text and chat.finish_reason == "stop" and 0 < chat.num_tokens < 24
    short = gen.generate(prompts[:1], max_new_tokens=2)[0]
    assert short.finish_reason == "length" and short.num_tokens == 2


@pytest.mark.slow
def test_concurrent_results_keep_prompt_order(llama_server):
    gen = OpenAIGenerator(llama_server, model_name="smollm2", max_concurrency=3)
    questions = ["What is the capital of France?", "What is 2+2?", "Name a color.", "What is the capital of Italy?"]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    together = gen.generate(prompts, max_new_tokens=12)
    alone = [gen.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert [c.text for c in together] == [c.text for c in alone]
    assert len({c.text for c in together}) == len(prompts)


@pytest.mark.slow
def test_server_errors_are_retried(llama_server):
    with failing_proxy(llama_server, fail=2, status=500) as (url, state):
        gen = OpenAIGenerator(url, model_name="smollm2", max_retries=3, **FAST)
        out = gen.generate([[{"role": "user", "content": QUESTION}]], max_new_tokens=16)
    assert "4" in out[0].text and out[0].finish_reason == "stop"
    assert state["requests"] == 3  # two injected 500s, then the real answer


@pytest.mark.slow
def test_timeouts_and_rate_limits_are_retried(llama_server):
    with failing_proxy(llama_server, delay_first=4.0) as (url, state):
        gen = OpenAIGenerator(url, model_name="smollm2", timeout=3.0, max_retries=2, **FAST)
        assert gen.generate([PROMPT], max_new_tokens=2)[0].finish_reason == "length"
        assert state["requests"] == 2
    with failing_proxy(llama_server, fail=1, status=429) as (url, state):
        gen = OpenAIGenerator(url, model_name="smollm2", max_retries=1, **FAST)
        assert gen.generate([PROMPT], max_new_tokens=2)[0].finish_reason == "length"
        assert state["requests"] == 2


@pytest.mark.slow
def test_client_errors_fail_at_once(llama_server):
    with failing_proxy(llama_server, fail=5, status=400) as (url, state):
        gen = OpenAIGenerator(url, model_name="smollm2", max_retries=4, **FAST)
        with pytest.raises(GenerationError, match="HTTP 400") as info:
            gen.generate([PROMPT], max_new_tokens=2)
    assert state["requests"] == 1
    assert "\n" not in str(info.value) and url in str(info.value)


def test_dead_endpoint_fails_with_one_clear_line(monkeypatch):
    monkeypatch.setenv("SAMI_TEST_KEY", "sk-very-secret-123")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    settings = parse_generation(backend="openai", base_url=url, api_key_env="SAMI_TEST_KEY", max_retries=2, **FAST)
    gen = make_generator(settings)
    with pytest.raises(SamiInputError) as info:
        gen.generate(["a", "b", "c"], max_new_tokens=4)
    message = str(info.value)
    assert isinstance(info.value, GenerationError)
    assert url in message and "after 3 attempts" in message and "connection failed" in message
    assert "\n" not in message and "sk-very-secret" not in message and "sk-very-secret" not in repr(gen)

    records = OpenAIGenerator(url, model_name="m", max_retries=1, **FAST).generate(
        ["a", [{"role": "user", "content": "b"}]], max_new_tokens=4, raise_on_error=False
    )
    assert [r.finish_reason for r in records] == ["error", "error"]
    assert all(url in r.error and r.text == "" for r in records)


def test_api_key_is_required_for_remote_servers(monkeypatch):
    monkeypatch.delenv("SAMI_MISSING_KEY", raising=False)
    with pytest.raises(SamiInputError, match="SAMI_MISSING_KEY"):
        OpenAIGenerator("https://api.example.com/v1", api_key_env="SAMI_MISSING_KEY")
    OpenAIGenerator("http://localhost:9/v1", api_key_env="SAMI_MISSING_KEY")  # local: a dummy key is fine


def test_cli_dead_endpoint_prints_one_line(tmp_path, capsys):
    from sami.cli import main

    url = f"http://127.0.0.1:{free_port()}/v1"
    rc = main(
        ["generate", "--queries", "hh_helpful_train", "--limit", "2", "--constitutions", "hh_opus"]
        + ["--out", str(tmp_path / "samples.jsonl"), "--backend", "openai", "--base-url", url]
        + ["--model-name", "m", "--max-retries", "1", "--no-progress"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and url in err and err.startswith("sami generate: error:")
