"""An OpenAI-compatible chat server on 127.0.0.1 that answers deterministically, for reliability tests.

The pipeline under test talks to it through its real `vllm-server` engine (the `openai` client, retries,
timeouts), so what is tested is the pipeline's behaviour around a server: resume after a kill, 5xx and hung
requests, a server that dies, a server that returns garbage. The rewrites themselves do not matter here; the real
model is exercised in test_engines.py and test_pipeline.py.

A rewrite is the document's sentences in reverse order, a pure function of (document, temperature, candidate
index), so an interrupted and an uninterrupted run must produce the same dataset. Documents whose hash is 0 mod 4
get a too-short first round ("OK.") and a real rewrite once resampled at a higher temperature, so resampling is
exercised too. Every request is recorded (document key, temperature, n) so a test can tell which generations
were asked for twice, and the Authorization header of every request (models and chat) so a test can tell which
credentials the client sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-rewriter"
# What its rewrites (reordered sentences of the source) can pass: the shape checks, not similarity to the source.
VALIDATORS = [{"use": "not_truncated"}, {"use": "not_empty"}, {"use": "length_ratio"}, {"use": "no_meta_text"}]


def run_updates(url: str, **more: object) -> dict:
    """load_config updates that send a run's rewriting to a FakeLLM at `url` through the real vllm-server engine."""
    return {
        "rephrase.llm.engine": "vllm-server",
        "rephrase.llm.server_url": url,
        "rephrase.validators": VALIDATORS,
        "input.extract_html": False,
        **more,
    }


def document_of(messages: list[dict]) -> str:
    """The document slot of the shipped prompts: everything after the last 'Text:' line of the user message."""
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return user.rsplit("Text:\n", 1)[-1].strip()


def doc_key(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()[:16]


def rewrite(document: str, temperature: float, index: int) -> str:
    if int(doc_key(document), 16) % 4 == 0 and temperature < 0.75:
        return "OK."
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", document.replace("\n", " ")) if s.strip()]
    rotated = sentences[index % len(sentences) :] + sentences[: index % len(sentences)] if sentences else []
    return " ".join(reversed(rotated)) or document


@dataclass
class Request:
    key: str
    temperature: float
    n: int
    status: int
    at: float


@dataclass
class FakeLLM:
    """`with FakeLLM() as llm: llm.url`. `fail(*statuses)`, `hang(count, seconds)`, `garbage` and `die_after`
    (answer that many chat requests, then drop every connection and stop listening) inject faults."""

    delay_s: float = 0.0
    garbage: bool = False
    die_after: int | None = None
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # document keys of the requests `hang` held, as they arrived
    authorizations: list[str | None] = field(default_factory=list)  # each request's Authorization header, or None
    _faults: list[tuple[str, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, *statuses: int) -> None:
        """Answer the next len(statuses) chat requests with these HTTP statuses."""
        with self._lock:
            self._faults += [("status", float(s)) for s in statuses]

    def hang(self, count: int, seconds: float) -> None:
        """Hold the next `count` chat requests for `seconds` before answering (a client timeout fires first)."""
        with self._lock:
            self._faults += [("hang", seconds)] * count

    def _next_fault(self) -> tuple[str, float] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def dying(self) -> bool:
        """True once `die_after` chat requests were answered; the first call past it stops the server."""
        with self._lock:
            answered = sum(r.status == 200 for r in self.requests)
            if self.die_after is None or answered < self.die_after:
                return False
            if not getattr(self, "_dead", False):
                self._dead = True
                threading.Thread(target=self.stop, daemon=True).start()
            return True

    def answer(self, body: dict) -> tuple[int, dict]:
        document = document_of(body["messages"])
        temperature, n = float(body.get("temperature", 1.0)), int(body.get("n", 1))
        status = 200
        fault = self._next_fault()
        if fault and fault[0] == "status":
            status = int(fault[1])
        with self._lock:  # recorded on arrival: a held request counts even if the test ends before it is answered
            self.requests.append(Request(doc_key(document), temperature, n, status, time.time()))
        if fault and fault[0] == "hang":
            with self._lock:
                self.held.append(doc_key(document))
            time.sleep(fault[1])
        if status != 200:
            return status, {"error": {"message": f"injected {status}", "type": "server_error", "code": status}}
        time.sleep(self.delay_s)
        choices = []
        for i in range(n):
            text = "<|im_start|>assistant\n@@@ " * 20 if self.garbage else rewrite(document, temperature, i)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "token_ids": list(range(len(text.split()))),
                }
            )
        return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": MODEL, "choices": choices}

    def __enter__(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.wfile.write(data)

            def do_GET(self) -> None:
                fake.authorizations.append(self.headers.get("Authorization"))
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                elif self.path == "/health":
                    self._send(200, {})
                else:
                    self._send(404, {"error": {"message": self.path}})

            def do_POST(self) -> None:
                fake.authorizations.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": self.path}})
                elif fake.dying():
                    self.close_connection = True  # no response: the connection drops, as when a server dies
                else:
                    self._send(*fake.answer(body))

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def stop(self) -> None:
        if not getattr(self, "_stopped", False):
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()

    def __exit__(self, *exc: object) -> None:
        self.stop()
