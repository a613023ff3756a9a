"""Sends due deliveries to the subscribers' endpoints, signed, with retries.

Every ``poll_s`` (and whenever a batch was enqueued or a send finished) the sender leases due
deliveries (see ``store.claim``) up to its free concurrency, at most ``per_subscription`` in flight
per subscription across all dispatchers, and sends each in a task of its own under a total
per-request timeout: a slow or failing endpoint holds only its own few slots, never the others'.
2xx is delivered; anything else, a timeout or a connection error is tried again after the retry
schedule (with jitter) until the last attempt, after which the delivery is ``failed``. 410 Gone
disables the subscription. Every attempt is recorded: its time, status and error, never the
receiver's answer (the log is no window onto what an endpoint says).

Before each attempt the URL's host is resolved and every address checked (``addresses.py``): the
request goes to the checked address only, so a webhook never reaches the platform's own network.
A subscription that may not carry personal data gets the change without it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import psycopg2
from prometheus_client import Counter, Gauge, Histogram

from events.feed import without_personal_data
from services.common.db import TransactionPool
from services.webhooks import addresses, store
from services.webhooks.retries import parse_retry_after, retry_delay
from services.webhooks.verify import sign

log = logging.getLogger(__name__)

ATTEMPTS = Counter("crm_webhooks_attempts_total", "delivery attempts", ["outcome"])
FINISHED = Counter("crm_webhooks_deliveries_total", "deliveries that reached a final status", ["status"])
ATTEMPT_SECONDS = Histogram("crm_webhooks_attempt_seconds", "time of one delivery attempt",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
IN_FLIGHT = Gauge("crm_webhooks_in_flight", "deliveries being sent by this dispatcher")
CLAIM_ERRORS = Counter("crm_webhooks_database_errors_total", "failed claims or records (PostgreSQL)")

CONTENT_TYPE = "application/cloudevents+json"


def signed_headers(claim: store.Claim, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (a signature for every valid secret)."""
    timestamp = int(now)
    return {
        "content-type": CONTENT_TYPE,
        "webhook-id": claim.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, claim.event_id, timestamp, claim.body) for s in claim.secrets),
    }


class Sender:
    def __init__(self, pool: TransactionPool, *, dispatcher: str, schedule: Sequence[float], jitter: float,
                 timeout_s: float, lease_s: float, concurrency: int, per_subscription: int, poll_s: float,
                 rng: random.Random | None = None, vault=None, allowed_hosts: Sequence[str] = ()):
        self.pool = pool
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)  # exempt from the address check
        self.vault = vault  # opens the personal data of a change just before it is sent (services.common.vault)
        self.dispatcher = dispatcher
        self.schedule = tuple(schedule)
        self.jitter = jitter
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.concurrency = concurrency
        self.per_subscription = per_subscription
        self.poll_s = poll_s
        self.rng = rng or random.Random()
        self.in_flight: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pg-webhooks")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"user-agent": "crm-webhooks/1"})

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def _claim(self, cur, free: int) -> list[store.Claim]:
        """Due deliveries, leased; their bodies opened (the stored change holds pseudonyms and
        tokens, the subscriber gets the values; one whose key is shredded reads ``[erased]``)."""
        claims = store.claim(cur, lease_s=self.lease_s, per_subscription=self.per_subscription, limit=free)
        return [self._open(cur, c) for c in claims]

    def _open(self, cur, claim: store.Claim) -> store.Claim:
        if not claim.personal_data:  # its creator may not read personal data: none is sent
            return dataclasses.replace(claim, body=orjson.dumps(without_personal_data(orjson.loads(claim.body))))
        if self.vault is None or (b"psn-" not in claim.body and b"enc1." not in claim.body):
            return claim
        return dataclasses.replace(claim, body=orjson.dumps(self.vault.reveal(cur, orjson.loads(claim.body))))

    async def _db(self, fn, *args, **kwargs):
        def run():
            with self.pool.transaction() as cur:
                return fn(cur, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def run(self) -> None:
        """Claim and send until stopped."""
        backoff = self.poll_s
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self.in_flight)
            claims: list[store.Claim] = []
            if free > 0:
                try:
                    claims = await self._db(self._claim, free)
                    backoff = self.poll_s
                except psycopg2.Error as exc:
                    CLAIM_ERRORS.inc()
                    log.warning("cannot claim deliveries, retrying", extra={"error": str(exc).strip(),
                                                                           "retry_in_s": backoff})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            for item in claims:
                task = asyncio.create_task(self._deliver(item), name=f"webhook-delivery-{item.id}")
                self.in_flight.add(task)
                task.add_done_callback(self._done)
            IN_FLIGHT.set(len(self.in_flight))
            if claims and len(claims) == free:
                continue  # there may be more due right now
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        IN_FLIGHT.set(len(self.in_flight))
        self._wake.set()

    async def _deliver(self, item: store.Claim) -> None:
        outcome = await self._attempt(item)
        label = ("delivered" if outcome.error is None else "gone" if outcome.gone
                 else "http_error" if outcome.status_code is not None
                 else "timeout" if outcome.error.startswith("timeout") else "connection_error")
        ATTEMPTS.labels(label).inc()
        ATTEMPT_SECONDS.observe(outcome.duration_ms / 1000)
        for tries in range(3):
            try:
                held = await self._db(store.finish, item, outcome, self.dispatcher)
                break
            except psycopg2.Error as exc:
                CLAIM_ERRORS.inc()
                log.warning("cannot record a delivery attempt", extra={"delivery": item.id, "error": str(exc).strip()})
                await asyncio.sleep(0.5 * 2 ** tries)
        else:
            return  # the lease runs out and the delivery is tried again
        if not held:
            log.warning("delivery lease lost before the attempt was recorded", extra={"delivery": item.id})
        elif outcome.error is None or outcome.retry_in_s is None:
            FINISHED.labels("delivered" if outcome.error is None else "failed").inc()
        extra = {"delivery": item.id, "subscription": item.subscription_id, "event_id": item.event_id,
                 "attempt": item.attempt, "status_code": outcome.status_code,
                 "duration_ms": round(outcome.duration_ms, 1)}
        if outcome.error is None:
            log.info("webhook delivered", extra=extra)
        else:
            log.info("webhook attempt failed", extra={**extra, "error": outcome.error,
                                                      "retry_in_s": outcome.retry_in_s})
            if outcome.gone:
                log.warning("endpoint gone: subscription disabled", extra={"subscription": item.subscription_id})

    async def _attempt(self, item: store.Claim) -> store.Outcome:
        """Send once; never raises."""
        started = time.time()
        clock = time.perf_counter()
        status: int | None = None
        retry_after: float | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                url, headers, extensions = item.url, signed_headers(item, started), {}
                if not addresses.allowed_host(item.url, self.allowed_hosts):
                    # connect to the address just checked, not to what the name resolves to next
                    url, headers, extensions = _pinned(item.url, await addresses.resolve(item.url), headers)
                async with self._client.stream("POST", url, content=item.body, headers=headers,
                                               extensions=extensions) as response:
                    status = response.status_code
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except addresses.AddressRefused as exc:
            error = f"refused: {exc}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timeout after {self.timeout_s:g} s"
        except Exception as exc:  # connection errors, and anything else: recorded and retried alike
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = (time.perf_counter() - clock) * 1000
        gone = status == 410
        retry_in = None if error is None or gone else retry_delay(item.tries + 1, self.schedule, self.jitter,
                                                                  self.rng, retry_after)
        return store.Outcome(started, duration_ms, status, error, None, retry_in, gone)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let the sends in flight finish (and be recorded) for up to ``grace_s``."""
        self._stopping = True
        self._wake.set()
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=grace_s)
        for task in set(self.in_flight):
            task.cancel()
        await self._client.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _pinned(url: str, address: str, headers: dict[str, str]) -> tuple[httpx.URL, dict[str, str], dict]:
    """The request to ``url`` sent to ``address``: the host name stays in ``Host`` and, over
    HTTPS, in SNI and the certificate check."""
    original = httpx.URL(url)
    host = original.host
    return (original.copy_with(host=address), {**headers, "host": original.netloc.decode("ascii")},
            {"sni_hostname": host} if original.scheme == "https" else {})
