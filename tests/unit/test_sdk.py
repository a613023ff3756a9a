"""The Python SDK's HTTP client without a network: retries, backoff, splitting and batching."""
from __future__ import annotations

import threading

import httpx
import orjson
import pytest

from crm_sdk import Batcher, Client, event
from crm_sdk.http import MAX_EVENT_BYTES


class Collector:
    """Answers from a script of statuses (then 202), recording each request's events."""

    def __init__(self, *statuses: int, retry_after: str | None = None, limit: int | None = None):
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.limit = limit
        self.requests: list[list[dict]] = []
        self.headers: list[httpx.Headers] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = orjson.loads(request.content)
        with self.lock:
            self.requests.append(events)
            self.headers.append(request.headers)
            status = self.statuses.pop(0) if self.statuses else 202
        if self.limit is not None and len(request.content) > self.limit and len(events) > 1:
            return httpx.Response(413, json={"error": "too big"})
        if status == 202:
            return httpx.Response(202, json={"accepted": [e["id"] for e in events], "rejected": []})
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return httpx.Response(status, json={"error": f"status {status}"}, headers=headers)


def _events(n: int, size: int = 0) -> list[dict]:
    return [event("call.ended", {"call_id": f"c-{i}", "phone_number": "+8613912345678", "talk_seconds": 60,
                                 "notes": "x" * size}, source="urn:test", id=f"e-{i}") for i in range(n)]


def _client(collector: Collector, waits: list[float], **kw) -> Client:
    return Client("http://collector.test", api_key="crm_sk_test", transport=httpx.MockTransport(collector),
                  wait=lambda s: waits.append(s) or False, **kw)


def test_an_event_has_an_id_a_source_and_a_time_with_a_zone():
    e = event("web.page_viewed", {"anonymous_id": "a", "url": "https://x"}, source="urn:web")
    assert e["specversion"] == "1.0" and e["id"] and e["time"].endswith("+00:00")
    with pytest.raises(ValueError, match="time zone"):
        from datetime import datetime
        event("web.page_viewed", {}, source="urn:web", time=datetime(2026, 1, 1))


def test_429_and_503_are_retried_after_retry_after_and_the_key_is_sent():
    collector, waits = Collector(429, 503, retry_after="2"), []
    with _client(collector, waits) as crm:
        result = crm.send(_events(3))
    assert result.ok and result.accepted == ["e-0", "e-1", "e-2"] and result.retries == 2
    assert waits == [2.0, 2.0]
    assert collector.headers[0]["authorization"] == "Bearer crm_sk_test"


def test_without_retry_after_the_backoff_doubles_up_to_its_ceiling_then_gives_up():
    collector, waits = Collector(503, 503, 503, 503, 503), []
    with _client(collector, waits, max_retries=4, backoff=1.0, max_backoff=5.0) as crm:
        result = crm.send(_events(2))
    assert waits == [1.0, 2.0, 4.0, 5.0]
    assert result.failed == 2 and not result.accepted and "gave up after 5 attempts: HTTP 503" in result.error


def test_connection_errors_are_retried():
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        return httpx.Response(202, json={"accepted": ["e-0"], "rejected": []})

    waits: list[float] = []
    crm = Client("http://collector.test", transport=httpx.MockTransport(flaky), wait=lambda s: waits.append(s) or False)
    assert crm.send(_events(1)).accepted == ["e-0"] and len(waits) == 1


def test_a_401_is_not_retried_and_says_what_the_key_needs():
    collector, waits = Collector(401), []
    result = _client(collector, waits).send(_events(1))
    assert result.failed == 1 and "events:write" in result.error and waits == []


def test_a_batch_too_big_for_the_collector_is_split_and_indices_stay_those_of_the_input():
    collector, waits = Collector(limit=3000), []
    result = _client(collector, waits).send(_events(8, size=500))
    assert sorted(result.accepted) == sorted(f"e-{i}" for i in range(8)) and result.ok
    assert max(len(r) for r in collector.requests[1:]) < 8


def test_an_event_over_the_limit_is_rejected_without_being_sent():
    collector, waits = Collector(), []
    events = _events(3)
    events[1]["data"]["notes"] = "x" * (MAX_EVENT_BYTES + 10)
    result = _client(collector, waits).send(events)
    assert result.accepted == ["e-0", "e-2"]
    assert [(r["index"], r["reason"]) for r in result.rejected] == [(1, "oversize")]


def test_the_batcher_sends_by_count_and_flushes_the_rest():
    collector, waits = Collector(), []
    seen = []
    with Batcher(_client(collector, waits), max_events=4, linger_s=60,
                 on_result=lambda evs, res: seen.append((len(evs), len(res.accepted)))) as batcher:
        for e in _events(10):
            batcher.add(e)
        assert batcher.flush(timeout=10)
        assert batcher.sent.accepted == [f"e-{i}" for i in range(10)]
    assert [n for n, _ in seen] == [4, 4, 2]


def test_the_batcher_sends_a_lingering_batch_on_time():
    collector, waits = Collector(), []
    batcher = Batcher(_client(collector, waits), max_events=100, linger_s=0.05)
    batcher.add(_events(1)[0])
    from tests.processes import wait_for
    wait_for(lambda: collector.requests, 5, "the lingering event sent")
    batcher.close()
    assert [len(r) for r in collector.requests] == [1]
