"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for tests (no network beyond loopback).

    with ChatCompletionsServer(chat) as server:      # chat(body) -> llm_writer.Reply
        HttpChat(server.base_url, ...)               # base_url = http://127.0.0.1:<port>/v1

It serves POST /v1/chat/completions in OpenAI's response shape. `chat` gets the parsed request
body, so a test can answer from a real model (LocalChat built from the body's max_tokens and
temperature) or from a script. `canned` = (status, body bytes) answers every request with that
instead, to test error handling. Every request's headers and body are kept in `requests`.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/v1/chat/completions"


class ChatCompletionsServer:
    def __init__(self, chat=None, canned=None, model_name="stub"):
        self.chat, self.canned, self.model_name = chat, canned, model_name
        self.requests = []  # (headers as a dict, parsed JSON body) per request
        self._lock = threading.Lock()  # one generation at a time: the model is not shared safely
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self):
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler_class(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != PATH:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                try:
                    request = json.loads(body)
                except ValueError:
                    return self._send(400, {"error": {"message": "body is not JSON"}})
                stub.requests.append((dict(self.headers), request))
                if stub.canned is not None:
                    status, raw = stub.canned
                    return self._send_raw(status, raw)
                with stub._lock:
                    reply = stub.chat(request)
                self._send(200, {
                    "id": f"chatcmpl-{len(stub.requests)}",
                    "object": "chat.completion",
                    "model": stub.model_name,
                    "choices": [{"index": 0,
                                 "message": {"role": "assistant", "content": reply.text},
                                 "finish_reason": "length" if reply.cut_off else "stop"}],
                })

            def _send(self, status, payload):
                self._send_raw(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"))

            def _send_raw(self, status, raw):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler
