"""``crm-simulator``: post simulated customer journeys to the collector at a steady rate.

The events come from ``services.simulator.journeys`` (deterministic for a seed); this module only
paces, batches and sends them with the Python SDK (``crm_sdk``): ``POST {collector}/v1/events``
through ``crm_sdk.Sender``, which retries what the collector asks to retry (429 and 503 with
Retry-After, connection errors), or with ``--kafka`` straight to ``crm.touchpoints`` through
``crm_sdk.KafkaSink`` (validated and sealed with the key vault). It reports what happened.
"""
from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator

import httpx
import orjson
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from crm_sdk.http import RETRYABLE_STATUS, Sender, SendResult as BatchResult, events_url, retry_after_seconds
from services.simulator.journeys import JourneyGenerator

DEFAULT_COLLECTOR = "http://127.0.0.1:8080"
MAX_EVENT_BYTES = 32 * 1024
# The collector refuses bodies over 500 KiB; stay a little under so brackets and commas never tip it over.
MAX_BATCH_BYTES = 480 * 1024
USER_AGENT = "crm-simulator/0.1"

Wait = Callable[[float], bool]
"""Wait up to the given seconds; True means a stop was requested."""


class Stopper:
    """A stop request set from a signal handler, and a wait that ends early when it is set.

    A plain flag and short sleeps rather than ``threading.Event``: setting an Event takes a lock,
    which a signal handler could try to take while the interrupted code already holds it.
    """

    def __init__(self, tick: float = 0.1):
        self.requested = False
        self.tick = tick

    def set(self) -> None:
        """Ask the run to stop (safe to call from a signal handler)."""
        self.requested = True

    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self.requested

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was requested."""
        end = time.monotonic() + seconds
        while not self.requested:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(self.tick, left))
        return self.requested


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


# --- results -------------------------------------------------------------------------------------

@dataclass
class Stats:
    """Running totals of one simulator run."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    batches: int = 0
    discarded: int = 0
    started: float = 0.0
    window: deque = field(default_factory=lambda: deque(maxlen=64))

    def record(self, now: float) -> None:
        """Remember (time, events sent) so the current rate can be shown."""
        self.window.append((now, self.sent))

    def rate(self, now: float, over: float = 5.0) -> float:
        """Events sent per second over roughly the last ``over`` seconds."""
        recent = [(t, n) for t, n in self.window if now - t <= over]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            elapsed = now - self.started
            return self.sent / elapsed if elapsed > 0 else 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / (t1 - t0)

    @property
    def ok(self) -> bool:
        """True when every event that was sent was accepted."""
        return self.rejected == 0 and self.failed == 0


# --- posting -------------------------------------------------------------------------------------

class KafkaSender:
    """``--kafka``: the SDK's direct producer behind the ``Sender`` interface (sealed with the vault)."""

    def __init__(self, sink):
        self.sink = sink

    def send(self, events: list[dict[str, Any]], encoded: list[bytes] | None = None) -> BatchResult:
        return self.sink.send(events)


# --- pacing and batching ---------------------------------------------------------------------------

class Pump:
    """Takes events from an iterator at ``rate`` per second and posts them in batches.

    A batch is posted when it holds ``batch_size`` events, would pass the byte limit, or its first
    event has waited ``linger`` seconds, so low rates still deliver promptly. Clock and wait are
    injected so the pacing can be tested without sleeping.
    """

    def __init__(self, sender: Sender, *, rate: float, batch_size: int, linger: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wait: Wait | None = None,
                 on_progress: Callable[[Stats], None] | None = None,
                 on_problem: Callable[[str], None] | None = None):
        if rate <= 0 or batch_size < 1:
            raise ValueError("rate must be > 0 and batch_size >= 1")
        self.sender = sender
        self.interval = 1.0 / rate
        self.batch_size = batch_size
        self.linger = linger
        self.clock = clock
        self.wait: Wait = wait or _sleep
        self.on_progress = on_progress or (lambda stats: None)
        self.on_problem = on_problem or (lambda message: None)
        self.stats = Stats()

    def run(self, events: Iterable[dict[str, Any]], *, max_events: int | None = None,
            duration: float | None = None, stopped: Callable[[], bool] = lambda: False) -> Stats:
        """Send events until the iterator ends, ``max_events`` were taken, ``duration`` passed or a stop."""
        stats = self.stats
        stats.started = start = self.clock()
        deadline = start + duration if duration is not None else None
        # event k is due at base + k / rate; computed, not accumulated, so float error cannot drift
        base, due = start, 0
        batch: list[dict[str, Any]] = []
        encoded: list[bytes] = []
        size = 0
        batch_since = 0.0
        taken = 0
        interrupted = False
        source = iter(events)
        while max_events is None or taken < max_events:
            now = self.clock()
            if stopped():
                interrupted = True
                break
            if deadline is not None and now >= deadline:
                break
            # Never try to catch up more than a second of backlog (after a slow post or a retry),
            # otherwise the collector would get a burst far above the chosen rate.
            next_at = base + due * self.interval
            if next_at < now - 1.0:
                base, due, next_at = now - 1.0, 0, now - 1.0
            if batch and next_at - batch_since >= self.linger:
                self._flush(batch, encoded)
                batch, encoded, size = [], [], 0
                continue
            if next_at > now:
                until = next_at if deadline is None else min(next_at, deadline)
                if self.wait(until - now):
                    interrupted = True
                    break
                continue
            event = next(source, None)
            if event is None:
                break
            taken += 1
            due += 1
            raw = orjson.dumps(event)
            if len(raw) > MAX_EVENT_BYTES:
                stats.sent += 1
                stats.rejected += 1
                self.on_problem(f"not sent: event {event.get('id')} ({event.get('type')}) is {len(raw)} bytes, "
                                f"over the {MAX_EVENT_BYTES}-byte limit")
                continue
            if batch and size + len(raw) + 1 > MAX_BATCH_BYTES:
                self._flush(batch, encoded)
                batch, encoded, size = [], [], 0
            if not batch:
                batch_since = self.clock()
            batch.append(event)
            encoded.append(raw)
            size += len(raw) + 1
            if len(batch) >= self.batch_size:
                self._flush(batch, encoded)
                batch, encoded, size = [], [], 0
        if batch:
            if interrupted:
                stats.discarded += len(batch)  # taken from the generator but never posted
            else:
                self._flush(batch, encoded)
        return stats

    def _flush(self, batch: list[dict[str, Any]], encoded: list[bytes]) -> None:
        stats = self.stats
        result = self.sender.send(batch, encoded)
        stats.batches += 1
        stats.sent += len(batch)
        stats.accepted += len(result.accepted)
        stats.rejected += len(result.rejected)
        stats.failed += result.failed
        stats.retries += result.retries
        for rejection in result.rejected:
            index = rejection.get("index")
            event = batch[index] if isinstance(index, int) and 0 <= index < len(batch) else {}
            errors = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in rejection.get("errors") or [])
            self.on_problem(f"rejected {rejection.get('id')} ({event.get('type', '?')}): "
                            f"{rejection.get('reason')}: {errors}")
        if result.error:
            self.on_problem(f"batch of {len(batch)} events not delivered: {result.error}")
        stats.record(self.clock())
        self.on_progress(stats)


# --- progress display ---------------------------------------------------------------------------------

class Reporter:
    """Shows progress: a live table on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, *, target_rate: float, collector: str, quiet: bool, live: bool, every: float = 5.0):
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.target_rate = target_rate
        self.collector = collector
        self.quiet = quiet
        self.every = every
        self.stats = Stats()
        self._last_line = 0.0
        self._live = Live(get_renderable=self._table, console=self.out, refresh_per_second=4,
                          transient=False) if live and not quiet else None

    def __enter__(self) -> "Reporter":
        """Start the live display (on a terminal)."""
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def _table(self) -> Table:
        now = time.monotonic()
        s = self.stats
        table = Table(title=f"crm-simulator → {self.collector}", show_header=False, min_width=44)
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_row("events sent", f"{s.sent:,}")
        table.add_row("accepted", f"[green]{s.accepted:,}[/]")
        table.add_row("rejected", f"[red]{s.rejected:,}[/]" if s.rejected else "0")
        table.add_row("failed (gave up)", f"[red]{s.failed:,}[/]" if s.failed else "0")
        table.add_row("retries", f"{s.retries:,}")
        table.add_row("batches", f"{s.batches:,}")
        table.add_row("rate", f"{s.rate(now):.1f}/s (target {self.target_rate:g}/s)")
        table.add_row("elapsed", f"{now - s.started:.0f} s" if s.started else "-")
        return table

    def progress(self, stats: Stats) -> None:
        """Called after every batch."""
        self.stats = stats
        if self.quiet or self._live is not None:
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self.out.print(self.line(stats, now), soft_wrap=True)

    @staticmethod
    def line(stats: Stats, now: float) -> str:
        """One plain progress line."""
        return (f"[{now - stats.started:7.1f}s] sent {stats.sent} accepted {stats.accepted} "
                f"rejected {stats.rejected} failed {stats.failed} retries {stats.retries} "
                f"rate {stats.rate(now):.1f}/s")

    def problem(self, message: str) -> None:
        """Rejections and undelivered batches are always shown, even with --quiet."""
        self.err.print(f"[red]crm-simulator:[/] {escape(message)}", soft_wrap=True, highlight=False)

    def retrying(self, problem: str, delay: float) -> None:
        """The collector could not take a batch now; it is posted again after ``delay`` seconds."""
        if not self.quiet:
            self.err.print(f"crm-simulator: collector not ready ({problem}); retrying in {delay:.1f} s",
                           soft_wrap=True, markup=False)

    def summary(self, stats: Stats, *, reason: str) -> None:
        """The closing line: why the run ended and the totals."""
        elapsed = max(time.monotonic() - stats.started, 1e-9)
        self.out.print(
            f"crm-simulator: {reason}; sent {stats.sent} events in {stats.batches} "
            f"batch{'' if stats.batches == 1 else 'es'} in {elapsed:.1f} s "
            f"({stats.sent / elapsed:.1f}/s): accepted {stats.accepted}, rejected {stats.rejected}, "
            f"failed {stats.failed}, retries {stats.retries}"
            + (f", {stats.discarded} generated but not sent" if stats.discarded else ""),
            soft_wrap=True, markup=False)


# --- command line ------------------------------------------------------------------------------------

def parse_time(value: str) -> datetime:
    """An RFC 3339 time with an offset (``Z`` allowed)."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r} (e.g. 2026-01-01T08:00:00Z)") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} needs a time zone offset, e.g. Z or +08:00")
    return parsed


def _positive(kind: type) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {value}")
        return number
    return convert


def build_parser() -> argparse.ArgumentParser:
    """The ``crm-simulator`` argument parser."""
    p = argparse.ArgumentParser(
        prog="crm-simulator",
        description="Post simulated multi-channel customer journeys (web, shop, calls, email, surveys, "
                    "tickets) to the CRM collector at a steady rate. Sends the API key in $CRM_API_KEY "
                    "(scope events:write) as Authorization: Bearer.")
    p.add_argument("--collector", default=os.environ.get("CRM_COLLECTOR_URL", DEFAULT_COLLECTOR),
                   help="collector base URL (default: $CRM_COLLECTOR_URL or %(default)s)")
    p.add_argument("--rate", type=_positive(float), default=50.0, metavar="EVENTS_PER_SECOND",
                   help="events posted per second (default: %(default)s)")
    p.add_argument("--customers", type=_positive(int), default=200, metavar="N",
                   help="customers simulated per round (default: %(default)s)")
    p.add_argument("--duration", type=_positive(float), metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--max-events", type=_positive(int), metavar="N", help="stop after sending N events")
    p.add_argument("--seed", type=int, default=1,
                   help="random seed; the same seed re-sends the same event ids (default: %(default)s)")
    p.add_argument("--batch", type=_positive(int), default=50, metavar="N",
                   help="events per POST (default: %(default)s)")
    p.add_argument("--start", type=parse_time, metavar="RFC3339",
                   help="time of the earliest simulated event (default: now minus 7 days); give it for "
                        "re-runs that repeat the same times too")
    p.add_argument("--loop", action="store_true",
                   help="after all customers, continue with new customers until --duration/--max-events/Ctrl-C")
    p.add_argument("--backfill", type=_positive(float), metavar="HOURS",
                   help="first send --backfill-customers journeys laid out over the last HOURS hours (at "
                        "--backfill-rate), so the 1 h and 24 h windows hold data from the start; then go live: "
                        "every later event carries the time it is sent")
    p.add_argument("--backfill-customers", type=_positive(int), default=1000, metavar="N",
                   help="customers of the backfill (default: %(default)s, about 19 events each)")
    p.add_argument("--backfill-rate", type=_positive(float), default=500.0, metavar="EVENTS_PER_SECOND",
                   help="pace of the backfill (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress display; only problems and the summary")
    p.add_argument("--kafka", metavar="BOOTSTRAP", nargs="?", const="settings",
                   help="write straight to crm.touchpoints with the SDK's Kafka producer instead of posting to the "
                        "collector (a trusted producer: needs CRM_PG_DSN and the master key to seal personal data; "
                        "default bootstrap: CRM_KAFKA_BOOTSTRAP)")
    return p


def api_key() -> str:
    """The collector key from ``CRM_API_KEY`` (a key with ``events:write``; empty: none sent)."""
    from services.common.settings import Settings

    return Settings().api_key.get_secret_value().strip()


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def journey_events(seed: int, customers: int, start: datetime | None, loop: bool,
                   now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                   first_index: int = 0) -> Iterator[dict[str, Any]]:
    """The events to send: one round of ``customers`` customers, or endless rounds of new ones with ``loop``."""
    rounds = itertools.count() if loop else range(1)
    for n in rounds:
        # each round keeps its journeys in the last week unless the user fixed the start
        round_start = start if start is not None else now() - timedelta(days=7)
        yield from JourneyGenerator(seed, round_start).stream(customers, first_index=first_index + n * customers)


def backfill_events(seed: int, customers: int, hours: float,
                    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Iterator[dict[str, Any]]:
    """Journeys of customers 0 .. ``customers`` - 1 squeezed into the last ``hours`` hours (in order),
    ending now: the history a shop that had been running would have. The live rounds take the
    customers after these, so no event id repeats (a repeat would be deduplicated away)."""
    span = timedelta(hours=hours)
    yield from JourneyGenerator(seed, now() - span, span=span).stream(customers)


def live_times(events: Iterable[dict[str, Any]],
               now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> Iterator[dict[str, Any]]:
    """Each event stamped with the time it is taken to be sent. The stream is in event-time order,
    so every customer's events keep their order; the live windows (5 min, 1 h) then fill as the
    events flow, rather than only when a round's week-long layout reaches its last hour."""
    for event in events:
        event["time"] = now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        yield event


def run(argv: list[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
    """Entry point of the ``crm-simulator`` console script; exits 0 when every sent event was accepted.

    ``transport`` replaces the network in tests (an ``httpx.MockTransport``).
    """
    args = build_parser().parse_args(argv)
    try:
        events_url(args.collector)
    except ValueError as exc:
        build_parser().error(str(exc))

    stop = Stopper()
    signals: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signal.Signals(signum).name)
        stop.set()
        # a second Ctrl-C means "now": fall back to the default handler
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}

    reporter = Reporter(target_rate=args.rate, collector=args.collector, quiet=args.quiet,
                        live=sys.stdout.isatty())
    # trust_env=False: no proxy from the environment, so requests only ever go to the given collector
    client = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0), trust_env=False, follow_redirects=False,
                          headers={"User-Agent": USER_AGENT, **auth_headers(api_key())}, transport=transport)
    sink = None
    if args.kafka:
        from crm_sdk.kafka import KafkaSink, VaultSealer
        from services.common import settings as settings_mod
        from services.common.kafka_security import KafkaSecurity

        settings = settings_mod.load()
        sink = KafkaSink(settings.kafka_bootstrap if args.kafka == "settings" else args.kafka,
                         sealer=VaultSealer.from_settings(settings), default_region=settings.default_region,
                         **KafkaSecurity.from_settings(settings).kafka_python())
        sender = KafkaSender(sink)
    else:
        sender = Sender(client, args.collector, wait=stop.wait, on_retry=reporter.retrying)
    pump = Pump(sender, rate=args.rate, batch_size=args.batch, wait=stop.wait,
                on_progress=reporter.progress, on_problem=reporter.problem)
    reason = "done"
    backfilled = None
    events = journey_events(args.seed, args.customers, args.start, args.loop)
    if args.backfill:
        events = live_times(journey_events(args.seed, args.customers, args.start, args.loop,
                                           first_index=args.backfill_customers))
    try:
        with reporter:
            if args.backfill:
                filler = Pump(sender, rate=args.backfill_rate, batch_size=max(args.batch, 200), wait=stop.wait,
                              on_progress=reporter.progress, on_problem=reporter.problem)
                backfilled = filler.run(backfill_events(args.seed, args.backfill_customers, args.backfill),
                                        stopped=stop.is_set)
                reporter.summary(backfilled, reason=f"backfilled the last {args.backfill:g} h; going live")
            stats = pump.run(events, max_events=args.max_events, duration=args.duration, stopped=stop.is_set)
        if signals:
            reason = f"stopped by {signals[0]}"
        elif args.max_events is not None and stats.sent + stats.discarded >= args.max_events:
            reason = "reached --max-events"
        elif args.duration is not None and time.monotonic() - stats.started >= args.duration:
            reason = "reached --duration"
    except KeyboardInterrupt:
        stats, reason = pump.stats, "interrupted"
    finally:
        client.close()
        if sink is not None:
            sink.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    reporter.summary(stats, reason=reason)
    sys.exit(0 if stats.ok and (backfilled is None or backfilled.ok) else 1)


if __name__ == "__main__":
    run()
