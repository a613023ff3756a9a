"""Threshold alerts on indicators (pure): "CSAT under 80 % over 1 h on a channel".

A rule names an indicator, a window, a dimension (and optionally one member of it), a bound
(``below`` or ``above``) and a minimum sample (``min_count``, the indicator's denominator) so that
one bad answer at 3 a.m. does not page anyone. A rule *fires* on a slice when the value crosses
the bound with enough samples, and *resolves* when it is back within the bound; only the changes
are events.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from projections.indicators import DIMENSIONS, INDICATORS, WINDOWS


@dataclass(frozen=True)
class AlertRule:
    name: str
    indicator: str
    window: str
    dimension: str = "all"
    member: str | None = None
    below: float | None = None
    above: float | None = None
    min_count: float = 1

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AlertRule":
        """Raises ValueError saying what is wrong."""
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"alert rule {config.get('name')!r}: unknown settings {sorted(unknown)}")
        rule = cls(**config)
        if rule.indicator not in INDICATORS:
            raise ValueError(f"alert rule {rule.name!r}: unknown indicator {rule.indicator!r}")
        if rule.window not in WINDOWS:
            raise ValueError(f"alert rule {rule.name!r}: window must be one of {', '.join(WINDOWS)}")
        if rule.dimension not in ("all",) + DIMENSIONS:
            raise ValueError(f"alert rule {rule.name!r}: unknown dimension {rule.dimension!r}")
        if (rule.below is None) == (rule.above is None):
            raise ValueError(f"alert rule {rule.name!r}: give exactly one of below, above")
        return rule

    def applies(self, indicator: str, window: str, dim: str, member: str) -> bool:
        return (indicator == self.indicator and window == self.window and dim == self.dimension
                and (self.member is None or member == self.member))

    def breached(self, value: float | None, count: float) -> bool:
        if value is None or count < self.min_count:
            return False
        return value < self.below if self.below is not None else value > self.above

    def describe(self) -> str:
        bound = f"below {self.below:g}" if self.below is not None else f"above {self.above:g}"
        where = "overall" if self.dimension == "all" else f"per {self.dimension}" + (
            f" {self.member}" if self.member else "")
        return f"{self.indicator} {bound} over {self.window} {where} (at least {self.min_count:g} samples)"


def rules(configs: list[dict[str, Any]]) -> list[AlertRule]:
    parsed = [AlertRule.from_config(c) for c in configs]
    names = [r.name for r in parsed]
    if len(set(names)) != len(names):
        raise ValueError("alert rule names must be unique")
    return parsed
