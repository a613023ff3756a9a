"""Business hours: how much of a span of time the service desk was open (pure).

A calendar is a time zone, the opening hours of each weekday and a list of holidays, e.g. the
default: Monday to Friday 09:00-18:00 in Asia/Shanghai. ``seconds(start, end)`` counts only the
open time between two instants, so a question asked on Friday evening and answered on Monday at
09:30 took 30 business minutes, however long the weekend was. Daylight-saving changes are
handled by the time zone database: opening hours are wall-clock hours of the calendar's zone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_DAYS = 3660
"""Spans longer than this many days are counted up to it (a ten-year-old open ticket)."""


def _clock(text: str) -> time:
    if text == "24:00":
        return time.max
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True)
class Calendar:
    timezone: str = "Asia/Shanghai"
    hours: dict[str, tuple[str, str]] = field(default_factory=lambda: {d: ("09:00", "18:00") for d in DAYS[:5]})
    holidays: frozenset[date] = frozenset()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Calendar":
        """From ``{"timezone": "Asia/Shanghai", "hours": {"mon": ["09:00", "18:00"], ...},
        "holidays": ["2026-10-01", ...]}``; a weekday not named is closed. Raises ValueError."""
        unknown = set(config) - {"timezone", "hours", "holidays"}
        if unknown:
            raise ValueError(f"unknown business-hours settings: {sorted(unknown)}")
        tz = config.get("timezone", "Asia/Shanghai")
        try:
            ZoneInfo(tz)
        except Exception as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc
        hours = {}
        for day, span in (config.get("hours") or {}).items():
            if day not in DAYS:
                raise ValueError(f"unknown weekday {day!r}; use one of {', '.join(DAYS)}")
            opens, closes = span
            if not _clock(opens) < _clock(closes):
                raise ValueError(f"{day}: opening {opens} is not before closing {closes}")
            hours[day] = (opens, closes)
        if "hours" not in config:
            hours = cls().hours
        holidays = frozenset(date.fromisoformat(d) for d in config.get("holidays") or ())
        return cls(tz, hours, holidays)

    def _open_span(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        if day in self.holidays:
            return None
        span = self.hours.get(DAYS[day.weekday()])
        if not span:
            return None
        opens, closes = (_clock(t) for t in span)
        start = datetime.combine(day, opens, zone)
        end = datetime.combine(day + timedelta(days=1), time.min, zone) if closes == time.max \
            else datetime.combine(day, closes, zone)
        return start, end

    def seconds(self, start: datetime, end: datetime) -> float:
        """Open seconds between two aware instants (0 when ``end`` is not after ``start``)."""
        if end <= start:
            return 0.0
        zone = ZoneInfo(self.timezone)
        day = start.astimezone(zone).date()
        last = min(end.astimezone(zone).date(), day + timedelta(days=MAX_DAYS))
        total = 0.0
        while day <= last:
            span = self._open_span(day, zone)
            if span:
                lo, hi = max(span[0], start), min(span[1], end)
                if hi > lo:
                    total += (hi - lo).total_seconds()
            day += timedelta(days=1)
        return total
