"""Fault injection, the OpenAI-compatible path: a server answering 200 with a body that is not a completion (bad
JSON, a body cut short, no choices) is retried like a 5xx, and fails in one line once the retries are spent."""

from __future__ import annotations

import http.server
import json

import pytest
from conftest import counting_post_server, send_json

from sami.openai_client import ApiError, OpenAIClient

GOOD = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "A"}}],
}


def bad_answer(handler: http.server.BaseHTTPRequestHandler, kind: str) -> None:
    if kind == "json":
        send_json(handler, 200, b'{"id": "x", "choices": [')
    elif kind == "truncated":  # says 400 bytes, sends 20, closes
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "400")
        handler.end_headers()
        handler.wfile.write(json.dumps(GOOD).encode()[:20])
        handler.close_connection = True
    elif kind == "no-choices":
        send_json(handler, 200, json.dumps({**GOOD, "choices": []}).encode())
    elif kind == "html":
        send_json(handler, 200, b"<html>gateway</html>", {"Content-Type": "text/html"})


def server(kinds: list[str]):
    """Answers the scripted bad `kinds` in order, then good completions; counts requests."""
    state = {"requests": 0}

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        if kinds:
            bad_answer(handler, kinds.pop(0))
        else:
            send_json(handler, 200, json.dumps(GOOD).encode())

    return counting_post_server(state, answer), state


def chat(url: str, retries: int) -> str:
    client = OpenAIClient(url, max_retries=retries, retry_backoff=0.01, retry_max_backoff=0.05, timeout=5)
    try:
        return client.chat([{"role": "user", "content": "x"}], model="m", max_tokens=1).text
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["json", "truncated", "no-choices", "html"])
def test_a_malformed_200_is_retried(kind):
    ctx, state = server([kind, kind])
    with ctx as url:
        assert chat(url, retries=2) == "A"
    assert state["requests"] == 3


@pytest.mark.parametrize("kind", ["json", "truncated", "no-choices"])
def test_a_malformed_200_fails_in_one_line_after_the_retries(kind):
    ctx, state = server([kind] * 5)
    with ctx as url, pytest.raises(ApiError) as info:
        chat(url, retries=1)
    assert state["requests"] == 2
    message = str(info.value)
    assert "\n" not in message and "after 2 attempts" in message and url in message
