"""The test doubles behave as claimed: the fake server answers, the proxy injects faults."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.fakes import FakeOpenAIServer, FaultProxy


def _post(url: str, body: dict, timeout: float = 5.0):
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read())


def test_fake_server_answers_deterministically_and_counts():
    server = FakeOpenAIServer()
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "seed": 5}
        status, a = _post(server.url, body)
        _, b = _post(server.url, body)
        assert status == 200 and a == b
        assert a["choices"][0]["message"]["content"] == "reply to hi #5"
        assert server.hits[("hi", 5)] == 2
    finally:
        server.close()


def test_proxy_injects_every_fault_kind_and_forwards_the_rest():
    server = FakeOpenAIServer()
    proxy = FaultProxy(server.port, fault_rate=0.5, stall_s=0.05, seed=3)
    try:
        ok = failed = 0
        for i in range(40):
            try:
                _post(proxy.url, {"messages": [{"role": "user", "content": f"q{i}"}], "seed": i})
                ok += 1
            except (urllib.error.HTTPError, urllib.error.URLError, ConnectionError, OSError):
                failed += 1
        assert ok > 5 and failed > 5
        assert sum(proxy.faults.values()) == failed
        assert sum(len(v) for v in proxy.requests.values()) == 40
        assert sum(server.hits.values()) == ok
    finally:
        proxy.close()
        server.close()


def test_fault_rate_zero_forwards_everything():
    server = FakeOpenAIServer()
    proxy = FaultProxy(server.port, fault_rate=0.0, stall_s=0.0)
    try:
        for i in range(5):
            assert _post(proxy.url, {"prompt": f"p{i}", "seed": i})[0] == 200
        assert not proxy.faults
    finally:
        proxy.close()
        server.close()
