"""Test doubles: an OpenAI-compatible fake server and a fault-injecting proxy (loopback only).

The fake server answers deterministically from (prompt, seed), with per-token logprobs; the
proxy sits between client and server and, for a set fraction of requests, returns 500 or
429, stalls past the client's timeout, or drops the connection. Both count requests per
(prompt, seed) key with timestamps, so tests can prove exactly-once behaviour.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def request_key(body: dict) -> tuple[str, int]:
    text = body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")
    return text, int(body.get("seed", -1))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def send_json(handler: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _Served:
    """Starts ``handler`` on a free loopback port in a daemon thread."""

    def _start(self, handler) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeOpenAIServer(_Served):
    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.hits: dict[tuple[str, int], int] = defaultdict(int)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.api_key and self.headers.get("Authorization") != (
                    f"Bearer {outer.api_key}"
                ):
                    return self._send(401, {"error": "bad key"})
                key = request_key(body)
                outer.hits[key] += 1
                text = f"reply to {key[0]} #{key[1] % 997}"
                words = text.split()
                lps = [-0.1 * (1 + (hash(w) % 5)) for w in words]
                if self.path.endswith("/chat/completions"):
                    content = [
                        {
                            "token": w,
                            "logprob": lp,
                            "top_logprobs": [
                                {"token": w, "logprob": lp},
                                {"token": "x", "logprob": lp - 2},
                            ],
                        }
                        for w, lp in zip(words, lps, strict=True)
                    ]
                    choice = {
                        "message": {"role": "assistant", "content": text},
                        "logprobs": {"content": content},
                        "finish_reason": "stop",
                    }
                else:
                    choice = {
                        "text": text,
                        "finish_reason": "stop",
                        "logprobs": {
                            "tokens": words,
                            "token_logprobs": lps,
                            "top_logprobs": [{w: lp} for w, lp in zip(words, lps, strict=True)],
                        },
                    }
                self._send(
                    200,
                    {
                        "choices": [choice],
                        "usage": {
                            "prompt_tokens": len(key[0].split()),
                            "completion_tokens": len(words),
                        },
                    },
                )

            def _send(self, code, payload):
                send_json(self, code, json.dumps(payload).encode())

        self._start(Handler)


class FaultProxy(_Served):
    """Forwards to ``upstream_port``; injects faults for ``fault_rate`` of requests."""

    def __init__(self, upstream_port: int, fault_rate: float, stall_s: float, seed: int = 0):
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.faults = defaultdict(int)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                key = request_key(json.loads(raw))
                with outer.lock:
                    outer.requests[key].append(time.time())
                    roll = outer.rng.random()
                    kind = outer.rng.choice(["500", "429", "stall", "drop"])
                if roll < fault_rate:
                    with outer.lock:
                        outer.faults[kind] += 1
                    if kind == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if kind == "stall":
                        time.sleep(stall_s)
                        kind = "500"
                    data = b'{"error": "injected"}'
                    try:
                        self.send_response(int(kind))
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                    except OSError:
                        pass
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request("POST", self.path, body=raw, headers=headers)
                resp = conn.getresponse()
                send_json(self, resp.status, resp.read())

        self._start(Handler)


class FakeScoringServer(_Served):
    """``/v1/completions`` scoring with a real (tiny) model's top-k, in one of two layouts:

    ``vllm``: takes token ids; ``prompt_logprobs`` entry ``i`` (keyed by id) is the
    distribution that predicted token ``i``. ``llama_cpp``: refuses a token-id prompt with
    HTTP 500 (as llama-cpp-python 0.3.36 does), tokenises the text, and returns ``echo``
    entries where entry ``i`` is the distribution *at* position ``i`` keyed by token text,
    ``token_logprobs[i]`` read from that same row, entry 0 null. ``short``: returns entries
    for the generated token only (a server that cannot score prompts).
    """

    def __init__(self, model, tokenizer, layout: str):
        import torch

        self.requests = 0
        outer = self

        def logprobs(ids):
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids])).logits[0]
            return torch.log_softmax(out.float()[:, : len(tokenizer)], dim=-1)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                prompt, k = body["prompt"], int(body["logprobs"])
                if layout == "vllm":
                    ids = prompt if isinstance(prompt, list) else tokenizer(prompt)["input_ids"]
                    lp = logprobs(ids)
                    entries = [None]
                    for i in range(1, len(ids)):
                        top = torch.topk(lp[i - 1], k)
                        d = {str(int(j)): {"logprob": float(v)} for v, j in zip(*top)}
                        d[str(ids[i])] = {"logprob": float(lp[i - 1, ids[i]])}
                        entries.append(d)
                    return self._send(200, {"choices": [{"text": "", "prompt_logprobs": entries}]})
                if isinstance(prompt, list):
                    return self._send(500, {"error": {"message": "prompt must be a string"}})
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                lp = logprobs(ids)
                pieces = [tokenizer.decode([i]) for i in ids]
                tops, token_lps = [None], [None]
                for i in range(1, len(ids)):
                    top = torch.topk(lp[i], k)
                    d = {tokenizer.decode([int(j)]): float(v) for v, j in zip(*top)}
                    d[pieces[i]] = float(lp[i, ids[i]])  # the server's one-off read
                    tops.append(d)
                    token_lps.append(float(lp[i, ids[i]]))
                if layout == "short":
                    pieces, tops, token_lps = pieces[-1:], tops[-1:], token_lps[-1:]
                choice = {
                    "text": prompt,
                    "logprobs": {
                        "tokens": pieces,
                        "token_logprobs": token_lps,
                        "top_logprobs": tops,
                    },
                }
                self._send(200, {"choices": [choice]})

            def _send(self, code, payload):
                send_json(self, code, json.dumps(payload).encode())

        self._start(Handler)
