"""A real OpenAI-compatible completions and chat server on 127.0.0.1 for tests.

Completions answer from a table (document word -> completion), or echo the
document's first words as a query; any prompt that contains FAIL gets HTTP 500,
and a delay makes a run killable. Chat completions (plain or `stream: true`
server-sent events) answer with the first words of the first context passage
and cite it as [1], as a grounded RAG model would. Every request body and its
arrival time are kept, so a test can check what a client sent and how fast."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ABSTAIN = "The context does not contain the answer."


class QuietServer(ThreadingHTTPServer):
    """A client killed mid-request (what the resume tests do) is no error worth a traceback."""

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLM:
    def __init__(self, answers: dict[str, str] | None = None, delay: float = 0.0, default: str = " a generated query about it",
                 echo_words: int = 0):
        self.answers, self.delay, self.default, self.echo_words = answers or {}, delay, default, echo_words
        self.requests = 0
        self.bodies: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, data: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def chat(self, body: dict) -> None:
                passage = re.search(r"^\[1\] (.*)$", body["messages"][-1]["content"], re.MULTILINE)
                text = f"{' '.join(passage.group(1).split()[:6])} [1]." if passage else ABSTAIN
                if not body.get("stream"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    usage = {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                             "completion_tokens": len(text.split())}
                    return self.send(200, json.dumps({"choices": [choice], "usage": usage}).encode())
                deltas = [{"role": "assistant"}] + [{"content": w} for w in re.findall(r"\S+\s*", text)]
                events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
                events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self.send(200, sse.encode(), "text/event-stream")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests += 1
                fake.bodies.append(body)
                fake.arrivals.append(time.monotonic())
                time.sleep(fake.delay)
                if self.path == "/v1/chat/completions":
                    return self.chat(body)
                doc = str(body.get("prompt")).rsplit("Document:", 1)[-1]
                if "FAIL" in doc or self.path != "/v1/completions":
                    return self.send(500, b'{"error": "boom"}')
                text = next((a for k, a in fake.answers.items() if k in doc), None)
                if text is None:
                    words = doc.split("\nQuery:")[0].split()
                    text = " " + " ".join(words[: fake.echo_words]) if fake.echo_words else fake.default
                out = json.dumps({"choices": [{"text": text, "index": 0}], "usage": {"completion_tokens": len(text.split())}})
                self.send(200, out.encode())

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
