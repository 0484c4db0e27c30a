"""A scripted OpenAI-compatible server for the tests: lists the models it is given, answers every completion and
chat request with one fixed sentence, and records the model each request asked for.

`python tests/fake_openai_server.py --model M --port P [--record FILE]` serves it as a process (the run's
`generation.server` tests); `make_handler` gives the handler for `conftest.loopback_server`."""

from __future__ import annotations

import argparse
import http.server
import json
from pathlib import Path

REPLY = "Sure, here is a short answer."


def make_handler(models: list[dict], requested: list[str], record: Path | None = None):
    """A handler listing `models` (dicts with `id`, maybe `root`); appends each request's model to `requested`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, data: dict) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._send({"object": "list", "data": [{"object": "model", "owned_by": "test", **m} for m in models]})

        def do_POST(self):  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            requested.append(request.get("model"))
            if record is not None:
                with record.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"path": self.path, "model": request.get("model")}) + "\n")
            usage = {"prompt_tokens": 1, "completion_tokens": 7, "total_tokens": 8}
            if self.path.endswith("/chat/completions"):
                choice = {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "text": REPLY, "finish_reason": "stop"}
                kind = "text_completion"
            model = request.get("model")
            self._send({"id": "x", "object": kind, "created": 0, "model": model, "choices": [choice], "usage": usage})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    if args.record is not None:
        with args.record.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"started": args.model}) + "\n")
    handler = make_handler([{"id": args.model}], [], args.record)
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
