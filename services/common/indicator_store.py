"""The indicator sums in PostgreSQL: written by the processors, read by them and by the query API.

A window of length w ending at ``end`` covers the minutes (end - w, end], the current minute
included. Long windows read full hours from ``indicator_hour`` and the partial hours at their
edges from ``indicator_minute``, so a 7-day window adds up at most 168 + 120 rows per slice.
Late rows (see ``IndicatorProjection``) are history only: windows leave them out, series show them.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Iterable


from projections.indicators import MEASURES, WINDOWS, Key, minute_of
from services.common.db import execute_values

Slice = tuple[str, str]
_COLS = ", ".join(MEASURES)
_SUMS = ", ".join(f"sum({m})" for m in MEASURES)
_ADD = ", ".join(f"{m} = {{table}}.{m} + EXCLUDED.{m}" for m in MEASURES)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def write(cur, sums: dict[Key, dict[str, float]]) -> dict[Slice, set[str]]:
    """Add these deltas to the stored sums; returns the live slices changed and their measures."""
    minute_rows, hour_sums = [], defaultdict(lambda: defaultdict(float))
    changed: dict[Slice, set[str]] = defaultdict(set)
    for (minute, late, dim, member), measures in sorted(sums.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][0], kv[0][1])):
        measures = {m: v for m, v in measures.items() if abs(v) > 1e-9}
        if not measures:
            continue
        minute_rows.append((dim, member, minute, late, *(measures.get(m, 0.0) for m in MEASURES)))
        if not late:
            changed[(dim, member)].update(measures)
            row = hour_sums[(dim, member, _floor_hour(minute))]
            for m, v in measures.items():
                row[m] += v
    if minute_rows:
        execute_values(cur, f"""INSERT INTO indicator_minute (dim, member, minute, late, {_COLS}) VALUES %s
                                ON CONFLICT (dim, member, minute, late) DO UPDATE SET
                                {_ADD.format(table='indicator_minute')}""", minute_rows, page_size=500)
    if hour_sums:
        execute_values(cur, f"""INSERT INTO indicator_hour (dim, member, hour, {_COLS}) VALUES %s
                                ON CONFLICT (dim, member, hour) DO UPDATE SET {_ADD.format(table='indicator_hour')}""",
                       [(d, mb, h, *(row.get(m, 0.0) for m in MEASURES)) for (d, mb, h), row in sorted(hour_sums.items())],
                       page_size=500)
    return dict(changed)


def _ranges(end: datetime, window: timedelta) -> list[tuple[str, datetime, datetime]]:
    """(table, from, to) ranges that add up to the window (end - window, end] at minute grain."""
    stop = minute_of(end) + MINUTE
    start = stop - window
    if window <= HOUR:
        return [("minute", start, stop)]
    first_hour = _floor_hour(start) + (HOUR if start != _floor_hour(start) else timedelta(0))
    last_hour = _floor_hour(stop)
    return [("minute", start, first_hour), ("hour", first_hour, last_hour), ("minute", last_hour, stop)]


def _slice_filter(slices: Iterable[Slice] | None, dims: Iterable[str] | None) -> tuple[str, list]:
    if slices is not None:
        pairs = sorted(set(slices))
        return (" AND (dim, member) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                [[d for d, _ in pairs], [m for _, m in pairs]])
    if dims is not None:
        return " AND dim = ANY(%s)", [sorted(set(dims))]
    return "", []


def window_sums(cur, end: datetime, windows: Iterable[str] = tuple(WINDOWS), *,
                slices: Iterable[Slice] | None = None, dims: Iterable[str] | None = None
                ) -> dict[Slice, dict[str, dict[str, float]]]:
    """Summed measures per slice and window ending at ``end`` (only slices with data)."""
    where, params = _slice_filter(slices, dims)
    parts, args = [], []
    for name in windows:
        for table, lo, hi in _ranges(end, WINDOWS[name]):
            if lo >= hi:
                continue
            column = "minute" if table == "minute" else "hour"
            late = " AND NOT late" if table == "minute" else ""
            parts.append(f"SELECT %s, dim, member, {_SUMS} FROM indicator_{table} "
                         f"WHERE {column} >= %s AND {column} < %s{late}{where} GROUP BY dim, member")
            args += [name, lo, hi, *params]
    out: dict[Slice, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    if parts:
        cur.execute(" UNION ALL ".join(parts), args)
        for name, dim, member, *values in cur.fetchall():
            acc = out[(dim, member)][name]
            for m, v in zip(MEASURES, values):
                acc[m] += v or 0.0
    return {s: {w: dict(v) for w, v in ws.items()} for s, ws in out.items()}


def series(cur, dim: str, member: str, start: datetime, end: datetime
           ) -> list[tuple[datetime, dict[str, float], dict[str, float]]]:
    """Per minute in [start, end): (minute, live sums, late sums), only minutes with data."""
    cur.execute(f"""SELECT minute, late, {_COLS} FROM indicator_minute
                    WHERE dim = %s AND member = %s AND minute >= %s AND minute < %s ORDER BY minute, late""",
                (dim, member, start, end))
    points: dict[datetime, tuple[dict[str, float], dict[str, float]]] = {}
    for minute, late, *values in cur.fetchall():
        live, late_sums = points.setdefault(minute, ({}, {}))
        (late_sums if late else live).update({m: v for m, v in zip(MEASURES, values) if v})
    return [(m, live, late) for m, (live, late) in sorted(points.items())]
