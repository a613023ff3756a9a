"""Satisfaction indicators, projected in the customer-view stage's transaction.

The view stage hands over, per batch, the events not seen before (the timeline's primary key
guarantees each is applied once), when each arrived, and the customers' views before and after
the batch. This part:

1. adds each event's own facts to the per-minute sums, tagged with the customer's segment at the
   event's time; an event that arrived more than ``max_lateness`` after its event time goes to the
   history only (``late`` rows), never to the live windows;
2. folds the messages into their threads (email conversations, tickets) and applies the change in
   the threads' facts (first response, resolution);
3. applies the change in the customers' repeat contacts (a late contact, a merge or a split can
   make another contact a repeat, or not);
4. recomputes the live windows of the slices that changed and returns them as updates for
   ``crm.indicators``, plus an alert for each threshold rule that starts or stops firing.

All of it is written in the batch's transaction, so sums change exactly once per event.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import orjson
from prometheus_client import Counter

from events.customer_events import CustomerEvent
from projections import customer_view, indicators
from projections.alerts import AlertRule
from projections.business_hours import Calendar
from services.common import indicator_store
from services.common.db import lock, execute_values
from services.common.topics import INDICATORS
from services.processors.records import Output

log = logging.getLogger(__name__)

LATE = Counter("crm_indicator_late_events_total", "events that arrived after the allowed lateness (history only)")
UPDATES = Counter("crm_indicator_updates_total", "indicator values published", ["kind"])

View = dict[str, Any]


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IndicatorProjection:
    def __init__(self, calendar: Calendar, max_lateness_s: float, rules: list[AlertRule],
                 clock: Callable[[], float] = time.time):
        self.calendar = calendar
        self.max_lateness = timedelta(seconds=max_lateness_s)
        self.rules = rules
        self.clock = clock

    def apply(self, cur, fresh: list[CustomerEvent], arrived: dict[str, datetime], owner: dict[str, str],
              before: dict[str, View | None], after: dict[str, View | None]) -> list[Output]:
        """``owner``: event key -> customer; ``before``/``after``: views of the customers the batch
        touched (None: no view)."""
        sums: dict[indicators.Key, dict[str, float]] = {}

        def segment_of(view: View | None):
            return lambda at: customer_view.segment(view, at) if view else customer_view.SEGMENTS[0]

        segments: dict[str, str] = {}
        for e in fresh:
            segments[e.key] = segment_of(after.get(owner[e.key]))(e.time)
            late = arrived.get(e.key, e.time) - e.time > self.max_lateness
            if late:
                LATE.inc()
            indicators.add(sums, indicators.event_facts(e, segments[e.key]), late=late)
        self._threads(cur, fresh, segments, sums)
        self._repeats(before, after, segment_of, sums)
        changed = indicator_store.write(cur, sums)
        return self._updates(cur, changed)

    def _threads(self, cur, fresh: list[CustomerEvent], segments: dict[str, str], sums) -> None:
        by_thread: dict[str, list[CustomerEvent]] = defaultdict(list)
        for e in fresh:
            key = indicators.thread_key(e)
            if key:
                by_thread[key].append(e)
        if not by_thread:
            return
        keys = sorted(by_thread)
        lock(cur, ("t:" + k for k in keys))
        cur.execute("SELECT key, state FROM indicator_thread WHERE key = ANY(%s)", (keys,))
        stored = dict(cur.fetchall())
        rows = []
        for key in keys:
            old = stored.get(key)
            state = old
            for e in by_thread[key]:
                state = indicators.thread_apply(state, e, segments[e.key])
            indicators.diff(indicators.thread_facts(old, self.calendar) if old else {},
                            indicators.thread_facts(state, self.calendar), sums)
            rows.append((key, orjson.dumps(state).decode()))
        execute_values(cur, """INSERT INTO indicator_thread (key, state) VALUES %s ON CONFLICT (key) DO UPDATE
                               SET state = EXCLUDED.state, updated_at = now()""",
                       rows, template="(%s, %s::jsonb)", page_size=500)

    @staticmethod
    def _repeats(before: dict[str, View | None], after: dict[str, View | None], segment_of, sums) -> None:
        old: dict[str, indicators.Fact] = {}
        new: dict[str, indicators.Fact] = {}
        known: set[str] = set()
        for view in before.values():
            if view:
                old.update(indicators.repeat_facts(view, segment_of(view)))
        for view in after.values():
            if view:
                new.update(indicators.repeat_facts(view, segment_of(view)))
                known |= indicators.known_repeats(view)
        indicators.diff(old, new, sums, keep=known)

    # -- live values and alerts ---------------------------------------------------------------------
    def _updates(self, cur, changed: dict[indicator_store.Slice, set[str]]) -> list[Output]:
        if not changed:
            return []
        end = datetime.fromtimestamp(self.clock(), timezone.utc)
        sums = indicator_store.window_sums(cur, end, slices=changed)
        stamp = _iso(end)
        outputs: list[Output] = []
        alerts_due: list[tuple[AlertRule, str, str, float | None, float]] = []
        for (dim, member), measures in sorted(changed.items()):
            names = [n for n, ind in indicators.INDICATORS.items() if ind.measures & measures]
            for window in indicators.WINDOWS:
                window_sums = sums.get((dim, member), {}).get(window, {})
                for name, v in indicators.values(window_sums, names).items():
                    update = {"type": "indicator.updated", "indicator": name, "window": window, "dimension": dim,
                              "member": member, "value": v["value"], "count": v["count"], "unit": v["unit"],
                              "end": stamp}
                    outputs.append(Output(INDICATORS, f"{name}|{window}|{dim}={member}".encode(), orjson.dumps(update),
                                          (("content-type", b"application/json"),)))
                    alerts_due += [(r, dim, member, v["value"], v["count"]) for r in self.rules
                                   if r.applies(name, window, dim, member)]
        UPDATES.labels("value").inc(len(outputs))
        outputs += self._alerts(cur, alerts_due, end)
        return outputs

    def _alerts(self, cur, due: list[tuple[AlertRule, str, str, float | None, float]], end: datetime) -> list[Output]:
        if not due:
            return []
        cur.execute("""SELECT rule, dim, member, firing, since FROM indicator_alert
                       WHERE (rule, dim, member) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))
                       ORDER BY rule, dim, member FOR UPDATE""",
                    ([r.name for r, *_ in due], [d for _, d, *_ in due], [m for _, _, m, *_ in due]))
        state = {(r, d, m): (f, s) for r, d, m, f, s in cur.fetchall()}
        outputs, rows = [], []
        for rule, dim, member, value, count in due:
            firing = rule.breached(value, count)
            was, since = state.get((rule.name, dim, member), (False, None))
            if firing == was:
                continue
            since = end
            rows.append((rule.name, dim, member, firing, since, value))
            alert = {"type": "indicator.alert", "state": "firing" if firing else "resolved", "rule": rule.name,
                     "description": rule.describe(), "indicator": rule.indicator, "window": rule.window,
                     "dimension": dim, "member": member, "value": value, "count": count,
                     "threshold": rule.below if rule.below is not None else rule.above,
                     "bound": "below" if rule.below is not None else "above", "since": _iso(since),
                     "id": f"{rule.name}:{dim}={member}:{_iso(since)}"}
            outputs.append(Output(INDICATORS, f"alert|{rule.name}|{dim}={member}".encode(), orjson.dumps(alert),
                                  (("content-type", b"application/json"),)))
            log.warning("indicator alert", extra={"rule": rule.name, "state": alert["state"], "dimension": dim,
                                                  "member": member, "value": value, "count": count})
        if rows:
            execute_values(cur, """INSERT INTO indicator_alert (rule, dim, member, firing, since, value) VALUES %s
                                   ON CONFLICT (rule, dim, member) DO UPDATE SET firing = EXCLUDED.firing,
                                   since = EXCLUDED.since, value = EXCLUDED.value""", sorted(rows))
        UPDATES.labels("alert").inc(len(outputs))
        return outputs
