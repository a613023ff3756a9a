"""``/v1/indicators``: satisfaction indicators over live windows, per-minute series, and the live stream.

A *slice* is everything (``dimension=all``) or one member of one dimension (``channel=phone``,
``queue=aftersales``, ``agent=agent-li``, ``segment=repeat``). ``dimension=agent`` without a member
breaks the indicators down by every agent.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, AsyncIterator

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from projections import alerts as alert_rules
from projections import indicators as ind
from services.api.deps import DatabaseDep, SettingsDep, WriterDep, refuse_time_out_of_range
from services.api.schemas import (AlertBound, FiringAlert, FiringAlerts, IndicatorDefinition, IndicatorSeries,
                                  IndicatorSlice, IndicatorsOut, Problem, SeriesPoint)
from services.api.security import IndicatorsReader
from services.common import audit, indicator_store
from services.common.apikeys import INDICATORS_READ
from services.common.auth import require

router = APIRouter(tags=["indicators"])
READ = [Depends(require(INDICATORS_READ))]
STREAM = [Depends(require(INDICATORS_READ, query_token=True))]  # EventSource cannot send headers: ?access_token=

Dimension = Annotated[str, Query(pattern="^(all|channel|queue|agent|segment)$",
                                 description="break down by this dimension (default: overall)")]
Member = Annotated[str | None, Query(max_length=200)]
IndicatorNames = Annotated[list[str] | None, Query(description=f"indicators to include: {', '.join(ind.INDICATORS)}")]
Windows = Annotated[list[str] | None, Query(description=f"windows to include: {', '.join(ind.WINDOWS)}")]
MAX_SERIES = timedelta(days=7)


class Selection:
    """What a request asks for: indicators, windows, and a slice or a breakdown."""

    def __init__(self, indicator: list[str] | None, window: list[str] | None, dimension: str | None,
                 members: dict[str, str | None]):
        self.indicators = self._known(indicator, ind.INDICATORS, "indicator")
        self.windows = self._known(window, ind.WINDOWS, "window")
        given = {d: m for d, m in members.items() if m is not None}
        if len(given) > 1:
            raise HTTPException(400, f"one dimension at a time: got {', '.join(sorted(given))}")
        if given:
            (dim, member), = given.items()
            if dimension not in (None, "all", dim):
                raise HTTPException(400, f"dimension={dimension} contradicts {dim}={member}")
            self.dimension, self.member = dim, member
        else:
            self.dimension, self.member = dimension or "all", ("" if dimension in (None, "all") else None)

    @staticmethod
    def _known(asked: list[str] | None, known, what: str) -> list[str]:
        names = [n for a in asked or [] for n in a.split(",") if n] or list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise HTTPException(400, f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
        return list(dict.fromkeys(names))

    def matches(self, update: dict[str, Any]) -> bool:
        return (update.get("indicator") in self.indicators and update.get("window") in self.windows
                and update.get("dimension") == self.dimension
                and (self.member is None or update.get("member") == self.member))

    def query(self) -> dict[str, Any]:
        if self.member is not None:
            return {"slices": [(self.dimension, self.member)]}
        return {"dims": [self.dimension]}


def _selection(indicator, window, dimension, channel, queue, agent, segment) -> Selection:
    return Selection(indicator, window, dimension,
                     {"channel": channel, "queue": queue, "agent": agent, "segment": segment})


def _snapshot(db, sel: Selection, end: datetime) -> IndicatorsOut:
    with db.cursor() as cur:
        sums = indicator_store.window_sums(cur, end, sel.windows, **sel.query())
    slices = sorted(sums) if sel.member is None else [(sel.dimension, sel.member)]
    items = [IndicatorSlice(dimension=dim, member=member, window=w,
                            indicators=ind.values(sums.get((dim, member), {}).get(w, {}), sel.indicators))
             for dim, member in slices for w in sel.windows]
    return IndicatorsOut(end=end, items=items)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@router.get("/v1/indicators", response_model=IndicatorsOut, responses={400: {"model": Problem}}, dependencies=READ)
def get_indicators(
    db: DatabaseDep, indicator: IndicatorNames = None, window: Windows = None, dimension: Dimension | None = None,
    channel: Member = None, queue: Member = None, agent: Member = None, segment: Member = None,
    at: Annotated[datetime | None, Query(description="end of the windows (default: now)")] = None,
) -> IndicatorsOut:
    """Indicator values over the live windows (5m, 1h, 24h, 7d, 30d) ending now (or ``at``): overall,
    for one member of a dimension, or broken down by a dimension. Each value comes with its sample
    size (``count``, the denominator); ``value`` is null when there is no sample."""
    sel = _selection(indicator, window, dimension, channel, queue, agent, segment)
    refuse_time_out_of_range("at", at)
    end = at.astimezone(timezone.utc) if at and at.tzinfo else at.replace(tzinfo=timezone.utc) if at else _now()
    return _snapshot(db, sel, end)


@router.get("/v1/indicators/definitions", response_model=list[IndicatorDefinition], dependencies=READ)
def get_definitions(settings: SettingsDep) -> list[IndicatorDefinition]:
    """What each indicator measures, its unit, which way is better, its names in English and Chinese,
    the sample size below which a value is a small sample, and the threshold rules on it (so that a
    page can mark a breached value without waiting for an alert)."""
    rules = alert_rules.rules(settings.indicator_alerts)
    return [IndicatorDefinition(name=i.name, unit=i.unit, better=i.better, en=i.en, zh=i.zh,
                                numerator=list(i.numerator), denominator=i.denominator,
                                min_sample=settings.indicator_min_sample,
                                alerts=[AlertBound(rule=r.name, window=r.window, dimension=r.dimension, member=r.member,
                                                   below=r.below, above=r.above, min_count=r.min_count)
                                        for r in rules if r.indicator == i.name])
            for i in ind.INDICATORS.values()]


@router.get("/v1/indicators/alerts", response_model=FiringAlerts)
def get_alerts(db: DatabaseDep, settings: SettingsDep, caller: IndicatorsReader, writer: WriterDep) -> FiringAlerts:
    """The threshold alerts firing now, newest first: the stream announces only changes, so a page
    that opens after an alert started firing asks here. Each names its rule, slice and bound, since
    when it fires, the value that made it fire and the value and sample size over its window now.
    Rules no longer configured (``CRM_INDICATOR_ALERTS``) are left out."""
    rules = {r.name: r for r in alert_rules.rules(settings.indicator_alerts)}
    now = _now()
    with db.cursor() as cur:
        cur.execute("SELECT rule, dim, member, since, value FROM indicator_alert WHERE firing "
                    "ORDER BY since DESC, rule, dim, member")
        firing = [row for row in cur.fetchall() if row[0] in rules]
        slices = {(dim, member) for _, dim, member, _, _ in firing}
        windows = {rules[name].window for name, *_ in firing}
        sums = indicator_store.window_sums(cur, now, sorted(windows), slices=sorted(slices)) if firing else {}
    items = []
    for name, dim, member, since, started in firing:
        rule = rules[name]
        current = ind.values(sums.get((dim, member), {}).get(rule.window, {}), [rule.indicator])[rule.indicator]
        items.append(FiringAlert(rule=name, indicator=rule.indicator, window=rule.window, dimension=dim, member=member,
                                 bound="below" if rule.below is not None else "above",
                                 threshold=rule.below if rule.below is not None else rule.above,
                                 min_count=rule.min_count, description=rule.describe(), since=since,
                                 value_at_start=started, value=current["value"], count=current["count"]))
    audit.record(writer, caller, "indicators.alerts", "", {"firing": len(items)})
    return FiringAlerts(at=now, items=items)


@router.get("/v1/indicators/series", response_model=IndicatorSeries, responses={400: {"model": Problem}},
            dependencies=READ)
def get_series(
    db: DatabaseDep, indicator: IndicatorNames = None, dimension: Dimension | None = None,
    channel: Member = None, queue: Member = None, agent: Member = None, segment: Member = None,
    start: Annotated[datetime | None, Query(description="first minute (default: an hour before end)")] = None,
    end: Annotated[datetime | None, Query(description="end, exclusive (default: now)")] = None,
) -> IndicatorSeries:
    """A per-minute series of one slice for charts, from the stored history (late events included:
    ``late`` says how many of a minute's samples arrived after the allowed lateness). Every minute of
    the range is present; ``value`` is null where there was no sample. At most 7 days."""
    sel = _selection(indicator, None, dimension, channel, queue, agent, segment)
    if sel.member is None:
        raise HTTPException(400, "a series is of one slice: give channel, queue, agent or segment, or no dimension")
    refuse_time_out_of_range("start", start)
    refuse_time_out_of_range("end", end)
    stop = ind.minute_of((end or _now()).astimezone(timezone.utc)) + (timedelta(0) if end else timedelta(minutes=1))
    first = ind.minute_of((start.astimezone(timezone.utc)) if start else stop - timedelta(hours=1))
    if first >= stop:
        raise HTTPException(400, "start must be before end")
    if stop - first > MAX_SERIES:
        raise HTTPException(400, "a series spans at most 7 days; ask for a shorter range")
    with db.cursor() as cur:
        rows = {m: (live, late) for m, live, late in indicator_store.series(cur, sel.dimension, sel.member, first, stop)}
    points = []
    minute = first
    while minute < stop:
        live, late = rows.get(minute, ({}, {}))
        both = {m: live.get(m, 0.0) + late.get(m, 0.0) for m in set(live) | set(late)}
        values = ind.values(both, sel.indicators)
        late_values = ind.values(late, sel.indicators)
        points.append(SeriesPoint(minute=minute, values={n: v["value"] for n, v in values.items()},
                                  counts={n: v["count"] for n, v in values.items()},
                                  late={n: v["count"] for n, v in late_values.items() if v["count"]}))
        minute += timedelta(minutes=1)
    return IndicatorSeries(dimension=sel.dimension, member=sel.member, start=first, end=stop,
                           indicators=sel.indicators, points=points)


@router.get("/v1/stream/indicators", responses={400: {"model": Problem}}, dependencies=STREAM,
            response_description="text/event-stream of `snapshot`, `indicator` and `alert` events")
async def stream_indicators(
    request: Request, db: DatabaseDep, settings: SettingsDep, indicator: IndicatorNames = None,
    window: Windows = None, dimension: Dimension | None = None, channel: Member = None, queue: Member = None,
    agent: Member = None, segment: Member = None,
) -> EventSourceResponse:
    """Server-Sent Events: a ``snapshot`` (same shape as ``GET /v1/indicators``) at once and again every
    ``CRM_INDICATOR_REFRESH_S`` seconds (windows move with time), an ``indicator`` event for each value
    a touchpoint changes, as it happens, and an ``alert`` event whenever a threshold rule starts or
    stops firing (on any slice)."""
    sel = _selection(indicator, window, dimension, channel, queue, agent, segment)
    hub = request.app.state.hub

    async def events() -> AsyncIterator[dict[str, Any]]:
        queue_ = hub.subscribe()  # before the snapshot, so nothing falls between the two
        try:
            snap = await run_in_threadpool(_snapshot, db, sel, _now())
            yield {"event": "snapshot", "data": snap.model_dump_json()}
            next_refresh = asyncio.get_running_loop().time() + settings.indicator_refresh_s
            while True:
                timeout = max(0.0, next_refresh - asyncio.get_running_loop().time())
                try:
                    message = await asyncio.wait_for(queue_.get(), timeout)
                except asyncio.TimeoutError:
                    snap = await run_in_threadpool(_snapshot, db, sel, _now())
                    yield {"event": "snapshot", "data": snap.model_dump_json()}
                    next_refresh = asyncio.get_running_loop().time() + settings.indicator_refresh_s
                    continue
                if message.get("type") == "indicator.alert":
                    yield {"event": "alert", "id": message.get("id"), "data": orjson.dumps(message).decode()}
                elif sel.matches(message):
                    yield {"event": "indicator", "data": orjson.dumps(message).decode()}
        finally:
            hub.unsubscribe(queue_)

    return EventSourceResponse(events(), ping=15)
