"""A small OpenAI-compatible chat-completions server around a local model, for judges and tests:
``python -m afprobe.experiments._serve --model PATH_OR_NAME [--host 127.0.0.1] [--port 0]``.

It speaks the real HTTP protocol of the spec (``GET /v1/models``, ``POST /v1/chat/completions`` with ``model``,
``messages``, ``temperature``, ``max_tokens``, ``seed``, ``n``) on the standard library's threaded HTTP server, and
prints ``serving http://HOST:PORT/v1`` once it listens (``--port 0``: a free port). ``--replies FILE`` answers
from a JSON list of canned replies instead of a model (in turn, cycling), and ``--fail-first N`` answers the first
``N`` completion requests with HTTP 503: both for testing a client's parsing and retries over a real socket.
vLLM, ``transformers serve`` or a llama.cpp server are the choice for real judging at scale.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _State:
    def __init__(self, model_id: str, chat: Any, replies: list[str] | None, fail_first: int):
        self.model_id = model_id
        self.chat = chat
        self.replies = replies
        self.fail_left = fail_first
        self.served = 0
        self.lock = threading.Lock()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": state.model_id, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                messages = body["messages"]
            except (ValueError, KeyError):
                self._send(400, {"error": {"message": "expected a JSON body with messages"}})
                return
            if body.get("model") != state.model_id:
                self._send(404, {"error": {"message": f"model {body.get('model')!r} not served"}})
                return
            with state.lock:
                if state.fail_left > 0:
                    state.fail_left -= 1
                    self._send(503, {"error": {"message": "busy (--fail-first)"}})
                    return
                n = int(body.get("n") or 1)
                if state.replies is not None:
                    texts = [state.replies[(state.served + i) % len(state.replies)] for i in range(n)]
                else:
                    seed = int(body.get("seed") or 0)
                    texts = state.chat.complete(
                        messages,
                        temperature=float(body.get("temperature", 1.0)),
                        max_tokens=int(body.get("max_tokens") or 64),
                        seeds=[seed + i for i in range(n)],
                    )
                state.served += n
            self._send(
                200,
                {
                    "id": f"chatcmpl-{state.served}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": state.model_id,
                    "choices": [
                        {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                        for i, t in enumerate(texts)
                    ],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                },
            )

    return Handler


def make_server(
    model: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    replies: list[str] | None = None,
    fail_first: int = 0,
    model_id: str | None = None,
) -> ThreadingHTTPServer:
    """The server, bound but not yet serving (call ``serve_forever``)."""
    chat = None
    if replies is None:
        from afprobe.experiments._endpoint import LocalChat
        from afprobe.models import ModelConfig, load_model

        chat = LocalChat(load_model(ModelConfig(name=model) if model else ModelConfig()))
    state = _State(model_id or model or "afprobe-local", chat, replies, fail_first)
    return ThreadingHTTPServer((host, port), _handler(state))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m afprobe.experiments._serve", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--model", default=None, help="a model name or local path (default: the embedded model)")
    ap.add_argument("--model-id", default=None, help="the id clients ask for (default: --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--replies", type=Path, default=None, help="a JSON list of canned replies (no model)")
    ap.add_argument("--fail-first", type=int, default=0)
    a = ap.parse_args(argv)
    replies = json.loads(a.replies.read_text(encoding="utf-8")) if a.replies else None
    server = make_server(
        a.model, host=a.host, port=a.port, replies=replies, fail_first=a.fail_first, model_id=a.model_id
    )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"serving http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
