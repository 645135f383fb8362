"""A real OpenAI-compatible completions server on 127.0.0.1 for tests.

It answers from a table (document word -> completion), or echoes the document's
first words as a query, fails any prompt that contains FAIL with HTTP 500, and can
be slowed down to make a run killable."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    def __init__(self, answers: dict[str, str] | None = None, delay: float = 0.0, default: str = " a generated query about it",
                 echo_words: int = 0):
        self.answers, self.delay, self.default, self.echo_words = answers or {}, delay, default, echo_words
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests += 1
                time.sleep(fake.delay)
                doc = body["prompt"].rsplit("Document:", 1)[-1]
                if "FAIL" in doc or self.path != "/v1/completions":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                text = next((a for k, a in fake.answers.items() if k in doc), None)
                if text is None:
                    words = doc.split("\nQuery:")[0].split()
                    text = " " + " ".join(words[: fake.echo_words]) if fake.echo_words else fake.default
                out = json.dumps({"choices": [{"text": text, "index": 0}], "usage": {"completion_tokens": len(text.split())}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(out.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
