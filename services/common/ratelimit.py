"""In-process token buckets: per API key, per event source (the collector) and per client IP.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a second. A request costing
``n`` (one request on the query API, its number of events on the collector) goes through when the
bucket holds ``min(n, burst)`` tokens, and then takes all ``n``: the bucket may go below zero, so a
batch larger than the burst is never refused forever, while the sustained rate still holds (the
debt is paid back before the next request goes through).

Buckets live in the memory of one process: with N collector or API processes behind a load
balancer, a client gets up to N times the limit. They are bounded (``max_buckets``); the least
recently used is dropped first, which at worst gives its owner a full bucket again.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens = self.burst
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` could go through (0: now)."""
        self.refill(now)
        needed = min(cost, self.burst)
        return 0.0 if self.tokens >= needed else (needed - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self.tokens -= cost


@dataclass(frozen=True)
class Want:
    """What one request takes from one bucket."""

    kind: str  # "key", "source", "ip": which limit, as said in the 429
    name: str  # the key's id, the source, the IP
    rate: float
    burst: float
    cost: float = 1.0
    unit: str = "requests"  # what a token is, as said in the 429


@dataclass(frozen=True)
class Refusal:
    """A request refused by a limit, and when to try again."""

    want: Want
    wait_s: float

    @property
    def retry_after(self) -> int:
        """Whole seconds for the Retry-After header (at least 1)."""
        return max(1, math.ceil(self.wait_s))


class Limiter:
    """Buckets by (kind, name); ``take`` checks several at once and charges them only if all allow."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000):
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, want: Want, now: float) -> TokenBucket:
        ident = (want.kind, want.name)
        bucket = self._buckets.get(ident)
        if bucket is None:
            bucket = self._buckets[ident] = TokenBucket(want.rate, want.burst, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ident)
            if (bucket.rate, bucket.burst) != (want.rate, want.burst):  # the limit was changed
                bucket.refill(now)
                bucket.rate, bucket.burst = float(want.rate), float(want.burst)
                bucket.tokens = min(bucket.tokens, bucket.burst)
        return bucket

    def peek(self, wants: Iterable[Want]) -> Refusal | None:
        """Whether ``take`` would refuse now, charging nothing."""
        wants = [w for w in wants if w.cost > 0]
        with self._lock:
            now = self.clock()
            waits = [(self._bucket(w, now).wait_s(w.cost, now), w) for w in wants]
            worst = max(waits, key=lambda x: x[0], default=(0.0, None))
            return Refusal(worst[1], worst[0]) if worst[0] > 0 else None

    def take(self, wants: Iterable[Want]) -> Refusal | None:
        """Charge every bucket, or none: None when all allow, else the refusal waiting longest."""
        wants = [w for w in wants if w.cost > 0]
        with self._lock:
            now = self.clock()
            buckets = [(w, self._bucket(w, now)) for w in wants]
            waits = [(b.wait_s(w.cost, now), w) for w, b in buckets]
            worst = max(waits, key=lambda x: x[0], default=(0.0, None))
            if worst[0] > 0:
                return Refusal(worst[1], worst[0])
            for w, b in buckets:
                b.take(w.cost)
            return None
