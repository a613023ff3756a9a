"""HTTP to the collector: ``Sender`` (one batch, retried), ``Client`` (keys, connection, batches) and
``Batcher`` (events collected in the background and sent by count, size or age).

What is retried: connection errors and 429, 500, 502, 503, 504, after the collector's
``Retry-After`` when it gives one, else after an exponential backoff (``backoff`` × 2^attempt, at
most ``max_backoff``), up to ``max_retries`` times. Re-sending is safe: the collector keeps one event
per ``source`` + ``id``. A 413 for a batch of several events splits it in halves. 400 and 413 for one
event are answers, not failures: the events come back in ``rejected`` with the collector's reasons.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable

import httpx
import orjson

log = logging.getLogger("crm_sdk")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 480 * 1024  # the collector refuses bodies over 500 KiB; brackets and commas never tip it over
USER_AGENT = "crm-sdk-python/1"

Wait = Callable[[float], bool]
"""Wait up to the given seconds; True means a stop was requested (give up now)."""


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


@dataclass
class SendResult:
    """What became of one batch, after retries: ``accepted`` ids are durable in the platform's log;
    ``rejected`` are {index, id, reason, errors} the collector refused (fix them, do not resend as
    they are); ``failed`` events could not be delivered (``error`` says why: resend them later)."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0
    retries: int = 0
    error: str | None = None
    status: int | None = None

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.failed

    def __iadd__(self, other: "SendResult") -> "SendResult":
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.failed += other.failed
        self.retries += other.retries
        self.error = self.error or other.error
        self.status = other.status if self.status is None else self.status
        return self


def events_url(collector: str) -> str:
    """The collector's batch endpoint for a collector base URL (http or https only)."""
    url = httpx.URL(collector)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"the collector URL must be http(s)://host[:port], not {collector!r}")
    base = str(url).rstrip("/")
    return base if base.endswith("/v1/events") else f"{base}/v1/events"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), or None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


class Sender:
    """Posts batches of events to the collector through ``client`` (an ``httpx.Client`` carrying the
    key), retrying transient failures a bounded number of times (see the module)."""

    def __init__(self, client: httpx.Client, collector: str, *, max_retries: int = 8, backoff: float = 0.5,
                 max_backoff: float = 30.0, max_retry_after: float = 60.0, wait: Wait | None = None,
                 on_retry: Callable[[str, float], None] | None = None):
        self.client = client
        self.url = events_url(collector)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.wait: Wait = wait or _sleep
        self.on_retry = on_retry or (lambda problem, delay: None)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return min(self.backoff * 2 ** attempt, self.max_backoff)

    def send(self, events: list[dict[str, Any]], encoded: list[bytes] | None = None) -> SendResult:
        """Post one batch; returns the accepted ids, the rejected entries and how many events were given up."""
        if not events:
            return SendResult()
        encoded = encoded if encoded is not None else [orjson.dumps(e) for e in events]
        body = b"[" + b",".join(encoded) + b"]"
        result = SendResult()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self.client.post(self.url, content=body, headers={"Content-Type": "application/json"})
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                status = result.status = response.status_code
                if status in (200, 202):
                    payload = _json(response)
                    result.accepted = list(payload.get("accepted", []))
                    result.rejected = list(payload.get("rejected", []))
                    return result
                if status == 413 and len(events) > 1:
                    return self._split(events, encoded, result)
                if status in (400, 413):
                    payload = _json(response)
                    result.rejected = list(payload.get("rejected") or [
                        {"index": i, "id": e.get("id"), "reason": f"http_{status}",
                         "errors": [{"field": "", "message": str(payload.get("error", response.text[:200]))}]}
                        for i, e in enumerate(events)])
                    return result
                if status not in RETRYABLE_STATUS:
                    result.failed = len(events)
                    result.error = f"HTTP {status}: {response.text[:300]}" + (
                        " (the API key needs the scope events:write)" if status in (401, 403) else "")
                    return result
                problem = f"HTTP {status}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt >= self.max_retries:
                result.failed = len(events)
                result.error = f"gave up after {attempt + 1} attempts: {problem}"
                return result
            result.retries += 1
            delay = self._delay(attempt, retry_after)
            self.on_retry(problem, delay)
            if self.wait(delay):
                result.failed = len(events)
                result.error = f"stopped while retrying: {problem}"
                return result
            attempt += 1

    def _split(self, events: list[dict[str, Any]], encoded: list[bytes], result: SendResult) -> SendResult:
        # 413 for a multi-event batch means the body was too big: halve it rather than lose it
        mid = len(events) // 2
        for lo, hi in ((0, mid), (mid, len(events))):
            part = self.send(events[lo:hi], encoded[lo:hi])
            part.rejected = [{**r, "index": r.get("index", 0) + lo} if isinstance(r.get("index"), int) else r
                             for r in part.rejected]
            result += part
        return result


class Client:
    """The collector at ``url``, with an API key (scope ``events:write``).

    ``send(events)`` posts them in as few requests as the size limits allow and returns one
    ``SendResult``; ``batcher()`` collects events in the background. Use it as a context manager, or
    ``close()`` it. ``transport`` replaces the network (tests: ``httpx.MockTransport``).
    """

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0, max_retries: int = 8,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_retry_after: float = 60.0,
                 user_agent: str = USER_AGENT, wait: Wait | None = None,
                 on_retry: Callable[[str, float], None] | None = None,
                 transport: httpx.BaseTransport | None = None):
        headers = {"User-Agent": user_agent}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # trust_env=False: no proxy from the environment, so requests only ever go to the given collector
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)), trust_env=False,
                                 follow_redirects=False, headers=headers, transport=transport)
        self.sender = Sender(self.http, url, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                             max_retry_after=max_retry_after, wait=wait, on_retry=on_retry)

    def send(self, events: Iterable[dict[str, Any]]) -> SendResult:
        """Send the events (any number: posted in batches under the collector's size limit).
        An event over the per-event limit is rejected here, with the reason, without being sent."""
        result = SendResult()
        batch: list[dict[str, Any]] = []
        encoded: list[bytes] = []
        size = offset = 0
        index = 0

        def post() -> None:
            nonlocal batch, encoded, size, offset
            if batch:
                part = self.sender.send(batch, encoded)
                part.rejected = [{**r, "index": r["index"] + offset} if isinstance(r.get("index"), int) else r
                                 for r in part.rejected]
                result.__iadd__(part)
                offset += len(batch)
            batch, encoded, size = [], [], 0

        for index, item in enumerate(events):
            body = orjson.dumps(item)
            if len(body) > MAX_EVENT_BYTES:
                post()
                offset += 1
                result.rejected.append({"index": index, "id": item.get("id"), "reason": "oversize", "errors": [
                    {"field": "", "message": f"event is {len(body)} bytes; the limit is {MAX_EVENT_BYTES}"}]})
                continue
            if batch and size + len(body) + 1 > MAX_BATCH_BYTES:
                post()
            batch.append(item)
            encoded.append(body)
            size += len(body) + 1
        post()
        return result

    def batcher(self, *, max_events: int = 100, linger_s: float = 1.0,
                on_result: Callable[[list[dict[str, Any]], SendResult], None] | None = None) -> "Batcher":
        return Batcher(self, max_events=max_events, linger_s=linger_s, on_result=on_result)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Batcher:
    """Collects events and sends them from a background thread: a batch goes when it holds
    ``max_events`` events, or its oldest event has waited ``linger_s`` seconds. ``add`` never blocks
    on the network (it blocks only when ``max_pending`` events are waiting: back-pressure).
    ``on_result(events, result)`` hears about each batch (log or store what failed);
    ``flush()`` waits until everything added so far was sent; ``close()`` flushes and stops."""

    def __init__(self, client: Client, *, max_events: int = 100, linger_s: float = 1.0,
                 max_pending: int = 100_000,
                 on_result: Callable[[list[dict[str, Any]], SendResult], None] | None = None):
        if max_events < 1 or linger_s < 0:
            raise ValueError("max_events must be >= 1 and linger_s >= 0")
        self.client, self.max_events, self.linger_s, self.max_pending = client, max_events, linger_s, max_pending
        self.on_result = on_result or self._log
        self._pending: list[dict[str, Any]] = []
        self._oldest = 0.0
        self._in_flight = 0
        self._urgent = False  # a flush is waiting: send what is pending without lingering
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="crm-sdk-batcher", daemon=True)
        self._thread.start()
        self.sent = SendResult()

    @staticmethod
    def _log(events: list[dict[str, Any]], result: SendResult) -> None:
        if result.rejected or result.failed:
            log.warning("crm batch not fully accepted", extra={"events": len(events), "rejected": len(result.rejected),
                                                               "failed": result.failed, "error": result.error})

    def add(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            while len(self._pending) >= self.max_pending:
                self._cond.wait()
            first = not self._pending
            if first:
                self._oldest = time.monotonic()
            self._pending.append(event)
            if first or len(self._pending) >= self.max_events:  # the sender starts its linger clock, or sends
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event added so far was sent (or given up); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._pending or self._in_flight:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._pending and (len(self._pending) >= self.max_events or self._urgent
                                          or time.monotonic() - self._oldest >= self.linger_s):
                        break
                    wait = None if not self._pending else max(0.0, self.linger_s - (time.monotonic() - self._oldest))
                    self._cond.wait(wait)
                if not self._pending:
                    self._urgent = False
                    if self._closed:
                        return
                    continue
                batch, self._pending = self._pending[:self.max_events], self._pending[self.max_events:]
                self._oldest = time.monotonic()
                self._in_flight += len(batch)
                self._cond.notify_all()
            try:
                result = self.client.send(batch)
            except Exception as exc:  # never let the thread die: the events are reported as failed
                result = SendResult(failed=len(batch), error=f"{type(exc).__name__}: {exc}")
            self.sent += result
            try:
                self.on_result(batch, result)
            except Exception:
                log.exception("on_result raised")
            with self._cond:
                self._in_flight -= len(batch)
                if not self._pending:
                    self._urgent = False
                self._cond.notify_all()

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
