"""sami.openai_client against a tiny scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from contextlib import contextmanager

import pytest
from conftest import loopback_server, send_json

from sami.errors import SamiInputError
from sami.openai_client import ApiError, OpenAIClient, Reply, is_local

SECRET = "sk-very-secret-456"


@contextmanager
def scripted_server(script: list[tuple[int, dict]] | None = None, *, hold: float = 0.0):
    """Answers POSTs from `script` (status, extra headers) in order, then 200s; records each request's arrival
    time and the most requests in flight at once. An error body echoes the Authorization header back."""
    script = list(script or [])
    state = {"times": [], "in_flight": 0, "most": 0, "paths": []}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with lock:
                state["times"].append(time.monotonic())
                state["paths"].append(self.path)
                state["in_flight"] += 1
                state["most"] = max(state["most"], state["in_flight"])
                status, headers = script.pop(0) if script else (200, {})
            try:
                time.sleep(hold)
                if status == 200:
                    text = f"echo {body.get('max_tokens')}"
                    choice = {"index": 0, "finish_reason": "stop", "stop_type": "eos"}
                    if self.path.endswith("/chat/completions"):
                        choice["message"] = {"role": "assistant", "content": text}
                    else:
                        choice["text"] = text
                    payload = {"id": "x", "object": "text_completion", "created": 0, "model": body.get("model")}
                    payload |= {"choices": [choice], "usage": {"completion_tokens": 2, "prompt_tokens": 1}}
                else:
                    payload = {"error": {"message": f"no: {self.headers.get('Authorization')}", "type": "e"}}
                send_json(self, status, json.dumps(payload).encode(), headers)
            finally:
                with lock:
                    state["in_flight"] -= 1

    with loopback_server(Handler) as url:
        yield url, state


def _client(url, monkeypatch=None, **kwargs) -> OpenAIClient:
    return OpenAIClient(url, **{"retry_backoff": 0.01, "retry_max_backoff": 5.0, **kwargs})


def test_chat_and_complete_return_text_and_finish():
    with scripted_server() as (url, state):
        client = _client(url)
        text, finish = client.chat([{"role": "user", "content": "hi"}], model="m", max_tokens=7, seed=1)
        assert (text, finish) == ("echo 7", "stop")
        reply = client.complete("hi", model="m", max_tokens=3, stop=["\n"])
        assert isinstance(reply, Reply) and reply.text == "echo 3" and reply.num_tokens == 2
        assert reply.model_extra.get("stop_type") == "eos"
        client.close()
    assert state["paths"] == ["/v1/chat/completions", "/v1/completions"]


def test_429_waits_for_retry_after_then_succeeds():
    with scripted_server([(429, {"Retry-After": "0.4"})]) as (url, state):
        reply = _client(url, max_retries=2).chat([{"role": "user", "content": "x"}], model="m", max_tokens=1)
    assert reply.text == "echo 1" and len(state["times"]) == 2
    assert state["times"][1] - state["times"][0] >= 0.4  # the backoff alone would be ~0.01 s


def test_5xx_is_retried_and_4xx_is_not():
    with scripted_server([(500, {}), (503, {})]) as (url, state):
        assert _client(url, max_retries=2).complete("x", model="m", max_tokens=1).text == "echo 1"
    assert len(state["times"]) == 3
    with scripted_server([(500, {})] * 5) as (url, state):
        with pytest.raises(ApiError, match="after 2 attempts: HTTP 500"):
            _client(url, max_retries=1).complete("x", model="m", max_tokens=1)
    assert len(state["times"]) == 2
    with scripted_server([(400, {})] * 5) as (url, state):
        with pytest.raises(ApiError, match="HTTP 400"):
            _client(url, max_retries=4).complete("x", model="m", max_tokens=1)
    assert len(state["times"]) == 1


def test_the_key_is_never_in_errors_logs_or_repr(monkeypatch, caplog):
    monkeypatch.setenv("SAMI_CLIENT_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with scripted_server([(500, {}), (401, {})]) as (url, state):
        client = _client(url, api_key_env="SAMI_CLIENT_KEY", max_retries=3)
        with pytest.raises(ApiError) as info:
            client.chat([{"role": "user", "content": "x"}], model="m", max_tokens=1)
    message = str(info.value)
    assert "HTTP 401" in message and url in message and "\n" not in message
    assert SECRET not in message and SECRET not in repr(client)
    assert "retry 1" in caplog.text and SECRET not in caplog.text
    assert "***" in message  # the server echoed the key back; it was scrubbed


def test_requests_in_flight_are_bounded():
    with scripted_server(hold=0.15) as (url, state):
        client = _client(url, max_concurrency=2)
        texts = client.map(lambda n, abort: client.complete("x", model="m", max_tokens=n, abort=abort).text, [1, 2, 3])
        assert texts == ["echo 1", "echo 2", "echo 3"]
        assert state["most"] == 2
        # the bound holds across threads that do not go through map
        threads = [
            threading.Thread(target=client.complete, args=("x",), kwargs={"model": "m", "max_tokens": 1})
            for _ in range(5)
        ]
        state["most"] = 0
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert state["most"] == 2


def test_one_failure_in_map_stops_the_rest():
    calls = []

    def fn(item, abort):
        calls.append(item)
        if item == 0:
            raise ApiError("boom")
        if abort.wait(2):
            from sami.openai_client import Aborted

            raise Aborted()
        return item

    with pytest.raises(ApiError, match="boom"):
        OpenAIClient("http://127.0.0.1:9/v1", max_concurrency=2).map(fn, [0, 1, 2, 3])


def test_local_servers_need_no_key(monkeypatch):
    monkeypatch.delenv("SAMI_MISSING_KEY", raising=False)
    for url in ["http://localhost:8000/v1", "http://127.0.0.1:1/v1", "http://127.5.0.1/v1", "http://[::1]:80/v1"]:
        assert is_local(url)
        OpenAIClient(url, api_key_env="SAMI_MISSING_KEY")
    assert not is_local("https://api.openai.com/v1") and not is_local("http://10.0.0.2/v1")
    with pytest.raises(SamiInputError, match="judge.api_key_env: the environment variable SAMI_MISSING_KEY"):
        OpenAIClient("https://api.example.com/v1", api_key_env="SAMI_MISSING_KEY", field="judge")
