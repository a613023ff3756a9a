"""Customer state: lifecycle, value (RFM, tier, lifetime value), segments, satisfaction and profile.

Pure functions of the unified customer view and a moment (``as_of``), by rules read from a file
(``config/customer-state.toml``): no I/O, no clock. The processors evaluate a customer at its latest
event time when events arrive and at the clock when it falls silent (``next_review`` says when its
state could next change without new events), and publish what ``changes`` finds between two
snapshots.

Evaluation order, so no rule depends on itself: satisfaction and the base facts → value tiers →
lifecycle stage → lifetime value → segments.

Consent: a segment declared for a purpose other than ``service`` (e.g. ``purpose = "marketing"``)
holds only customers whose latest consent grants that purpose on the segment's channel (or on all
channels); no consent event means no consent. ``profile.consent`` publishes the resolved slots
(``resolve_consent``) and ``consented`` is the one test, used by the webhooks as well.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable, get_args

from events.feed import LIFECYCLE_STAGES
from events.touchpoints import ConsentChanged
from projections import customer_view, satisfaction
from projections.satisfaction import at_time

DEFAULT_RULES = Path(__file__).resolve().parents[1] / "config" / "customer-state.toml"
TIERS = ("high", "medium", "low")
CENT = Decimal("0.01")
_DAY = timedelta(days=1)
_EPSILON = timedelta(seconds=1)


class RulesError(ValueError):
    """The rules file is wrong; the message says where and why."""


# -- consent ----------------------------------------------------------------------------------------

CONSENT_PURPOSES: tuple[str, ...] = get_args(ConsentChanged.model_fields["purpose"].annotation)
"""What a ``consent.changed`` event may grant or withdraw (marketing, analytics, service, profiling)."""
CONSENT_CHANNELS: tuple[str, ...] = tuple(c for c in get_args(ConsentChanged.model_fields["channel"].annotation)
                                          if c != "all")
"""The channels a consent may name; ``all`` stands for every one of them."""
NO_CONSENT_NEEDED = "service"
"""The purpose that needs no consent (serving the customer); every other one is opt-in."""


def resolve_consent(slots: dict[str, dict]) -> dict[str, bool]:
    """The customer's consent as published (``profile.consent``): ``purpose:channel`` -> granted,
    from the view's latest event per slot, where a later ``purpose:all`` event overrides an earlier
    one of a single channel (withdrawing "all" withdraws every channel; granting one channel after
    withdrawing "all" grants that one). A slot never set is absent: not granted."""
    out = {}
    for slot, stamped in slots.items():
        purpose, _, channel = slot.partition(":")
        every = slots.get(f"{purpose}:all")
        latest = stamped if channel == "all" or every is None else max(
            (stamped, every), key=lambda s: (s["at"], s["event"]))
        out[slot] = bool(latest["value"])
    return dict(sorted(out.items()))


def consented(consent: dict[str, bool], purpose: str, channel: str | None = "all") -> bool:
    """Whether the resolved ``consent`` (a snapshot's ``profile.consent``) allows ``purpose`` on
    ``channel``: that channel's slot, else the purpose's ``all`` slot, must be granted. ``"all"``
    asks for every channel (the ``all`` slot granted and no channel withdrawn), ``None`` for at
    least one. The service purpose needs no consent; absent consent is no consent (opt-in)."""
    if purpose == NO_CONSENT_NEEDED:
        return True
    if channel is None:
        return any(consented(consent, purpose, c) for c in CONSENT_CHANNELS)
    if channel == "all":
        return consent.get(f"{purpose}:all") is True and all(
            v for k, v in consent.items() if k.startswith(f"{purpose}:"))
    return consent.get(f"{purpose}:{channel}", consent.get(f"{purpose}:all")) is True


# -- facts ------------------------------------------------------------------------------------------

BASE_FACTS = frozenset({
    "orders.count", "orders.refunds", "days_since_last_order", "days_since_first_order",
    "days_since_last_contact", "days_since_first_contact", "contacts.total", "tickets.open",
    "complaints.open", "satisfaction.index", "satisfaction.at_risk", "satisfaction.reasons",
    "satisfaction.csat", "satisfaction.nps", "value.monetary", "value.aov",
    "rfm.recency", "rfm.frequency", "rfm.monetary", "rfm.sum", "rfm.score",
})
FAMILIES = ("contacts.", "traits.", "consent.")
"""Fact names with a free suffix: a channel, a trait name, a consent slot (purpose:channel)."""
AFTER_TIERS = BASE_FACTS | {"value.tier"}
AFTER_LIFECYCLE = AFTER_TIERS | {"lifecycle", "value.ltv"}
TIME_FACTS = {"days_since_last_order": "last_order", "days_since_first_order": "first_order",
              "days_since_last_contact": "last_contact", "days_since_first_contact": "first_contact"}
"""Facts that change as time passes, and the moment each counts from."""

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "gte": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "lte": lambda a, b: a is not None and a <= b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    "contains": lambda a, b: a is not None and b in a,
    "exists": lambda a, b: (a is not None) == bool(b),
}
_EVENT_KEYS = {"event", "within_days", "at_least", "at_most", "path_matches", "channel", "kind", "direction", "name"}


# -- conditions -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``kind`` is all, any, not, field or event."""

    kind: str
    parts: tuple["Condition", ...] = ()
    field: str = ""
    op: str = ""
    value: Any = None
    types: frozenset[str] = frozenset()
    within: timedelta | None = None
    at_least: int = 1
    at_most: int | None = None
    path: re.Pattern | None = None
    match: tuple[tuple[str, str], ...] = ()  # (entry key, required value): channel, kind, direction, name


def parse_condition(raw: Any, where: str, facts: frozenset[str]) -> Condition:
    """Parse (and check) one condition of the rules file; ``facts`` are the names it may read."""
    if not isinstance(raw, dict) or not raw:
        raise RulesError(f"{where}: a condition is a table, e.g. {{ field = \"orders.count\", gte = 1 }}")
    keys = set(raw)
    for combinator in ("all", "any"):
        if combinator in keys:
            if keys != {combinator} or not isinstance(raw[combinator], list) or not raw[combinator]:
                raise RulesError(f"{where}: '{combinator}' takes a non-empty list of conditions and nothing else")
            return Condition(combinator, tuple(parse_condition(c, f"{where}.{combinator}[{i}]", facts)
                                               for i, c in enumerate(raw[combinator])))
    if "not" in keys:
        if keys != {"not"}:
            raise RulesError(f"{where}: 'not' takes one condition and nothing else")
        return Condition("not", (parse_condition(raw["not"], f"{where}.not", facts),))
    if "field" in keys:
        name = raw["field"]
        if not isinstance(name, str) or not (name in facts or any(name.startswith(f) and len(name) > len(f)
                                                                  for f in FAMILIES)):
            allowed = ", ".join(sorted(facts)) + ", " + ", ".join(f + "<name>" for f in FAMILIES)
            raise RulesError(f"{where}: unknown fact {name!r} here; known: {allowed}")
        ops = keys - {"field"}
        if len(ops) != 1 or next(iter(ops)) not in _OPS:
            raise RulesError(f"{where}: give exactly one operator of {', '.join(_OPS)} (got {', '.join(sorted(ops)) or 'none'})")
        op = next(iter(ops))
        value = raw[op]
        if op in ("in", "not_in") and not isinstance(value, list):
            raise RulesError(f"{where}: '{op}' takes a list")
        if op in ("gt", "gte", "lt", "lte") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RulesError(f"{where}: '{op}' takes a number")
        return Condition("field", field=name, op=op, value=value)
    if "event" in keys:
        unknown = keys - _EVENT_KEYS
        if unknown:
            raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; an event condition takes "
                             f"{', '.join(sorted(_EVENT_KEYS))}")
        types = raw["event"] if isinstance(raw["event"], list) else [raw["event"]]
        if not types or not all(isinstance(t, str) and t for t in types):
            raise RulesError(f"{where}: 'event' is an event type or a list of them")
        within = raw.get("within_days")
        if within is None or isinstance(within, bool) or not isinstance(within, (int, float)) or within <= 0:
            raise RulesError(f"{where}: 'within_days' (a positive number) is required: past events count in a window")
        at_least = raw.get("at_least", 0 if "at_most" in raw else 1)
        at_most = raw.get("at_most")
        kept = customer_view.ORDERS_KEPT if set(types) == {"order.placed"} else customer_view.ACTIVITY_KEPT
        for name, n in (("at_least", at_least), ("at_most", at_most)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > kept):
                raise RulesError(f"{where}: '{name}' must be a whole number from 0 to {kept} "
                                 f"(the view keeps the latest {kept} of these events)")
        try:
            path = re.compile(raw["path_matches"]) if "path_matches" in raw else None
        except (re.error, TypeError) as exc:
            raise RulesError(f"{where}: 'path_matches' is not a regular expression: {exc}") from None
        match = tuple(sorted((k, str(raw[k])) for k in ("channel", "kind", "direction", "name") if k in raw))
        return Condition("event", types=frozenset(types), within=timedelta(days=within), at_least=at_least,
                         at_most=at_most, path=path, match=match)
    raise RulesError(f"{where}: a condition needs one of all, any, not, field, event (got {', '.join(sorted(keys))})")


def _events(view: dict, cond: Condition) -> list[dict]:
    """The kept events of the view that match the condition's type and filters (any time)."""
    if cond.types == {"order.placed"}:
        pool = [{**o, "type": "order.placed", "channel": "shop"} for o in view["orders"]["recent"]]
    else:
        pool = view["activity"] + ([{**o, "type": "order.placed", "channel": "shop"}
                                    for o in view["orders"]["recent"]] if "order.placed" in cond.types else [])
    out = []
    for entry in pool:
        if entry["type"] not in cond.types:
            continue
        if cond.path is not None and not cond.path.search(entry.get("path") or ""):
            continue
        if any(str(entry.get(k)) != v for k, v in cond.match):
            continue
        out.append(entry)
    return out


def holds(cond: Condition, facts: dict[str, Any], view: dict, as_of: datetime) -> bool:
    if cond.kind == "all":
        return all(holds(c, facts, view, as_of) for c in cond.parts)
    if cond.kind == "any":
        return any(holds(c, facts, view, as_of) for c in cond.parts)
    if cond.kind == "not":
        return not holds(cond.parts[0], facts, view, as_of)
    if cond.kind == "field":
        try:
            return bool(_OPS[cond.op](facts.get(cond.field), cond.value))
        except TypeError:  # e.g. a number compared with a string trait
            return False
    since = customer_view.ts(as_of - cond.within)
    until = customer_view.ts(as_of)
    n = sum(1 for e in _events(view, cond) if since < e["at"] <= until)
    return n >= cond.at_least and (cond.at_most is None or n <= cond.at_most)


def _moments(cond: Condition, view: dict, anchors: dict[str, str | None]) -> set[datetime]:
    """When the condition's truth could change with no new event: a window letting an event go,
    a ``days_since_*`` threshold being crossed."""
    if cond.kind in ("all", "any", "not"):
        return set().union(*(_moments(c, view, anchors) for c in cond.parts))
    if cond.kind == "field":
        anchor = anchors.get(TIME_FACTS.get(cond.field, ""))
        if anchor and cond.op in ("gt", "gte", "lt", "lte"):
            return {at_time(anchor) + cond.value * _DAY + _EPSILON}
        return set()
    return {at_time(e["at"]) + cond.within + _EPSILON for e in _events(view, cond)}


# -- rules ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    stage: str
    rule: str
    when: Condition


@dataclass(frozen=True)
class Segment:
    name: str
    label: dict[str, str]
    when: Condition
    purpose: str = NO_CONSENT_NEEDED  # not service: only customers who consent to it are in the segment
    channel: str = "all"  # the channel the consent must cover (all: every channel)


@dataclass(frozen=True)
class Rules:
    currency: str
    rates: dict[str, Decimal]
    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    tiers: tuple[tuple[str, Condition], ...]
    horizon_years: Decimal
    default_orders_per_year: Decimal
    survival: dict[str, Decimal]
    stages: tuple[Stage, ...]
    segments: tuple[Segment, ...]

    @property
    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)


def _thresholds(raw: Any, where: str, *, ascending: bool = True) -> tuple[float, ...]:
    if (not isinstance(raw, list) or len(raw) != 4
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in raw)
            or list(raw) != sorted(raw) or len(set(raw)) != 4):
        raise RulesError(f"{where}: four increasing non-negative numbers, e.g. [30, 90, 180, 365]")
    return tuple(float(x) for x in raw)


def _table(doc: dict, key: str, where: str) -> dict:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise RulesError(f"{where}{key}: must be a table")
    return value


def parse_rules(doc: dict) -> Rules:
    """Rules from the parsed TOML document; ``RulesError`` says what is wrong and where."""
    unknown = set(doc) - {"value", "lifecycle", "segments"}
    if unknown:
        raise RulesError(f"unknown section(s) {', '.join(sorted(unknown))}; expected value, lifecycle, segments")
    value = _table(doc, "value", "")
    currency = value.get("currency", "CNY")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise RulesError("value.currency: an ISO 4217 code such as CNY")
    rates_raw = _table(value, "rates", "value.")
    rates = {}
    for code, rate in {currency: 1.0, **rates_raw}.items():
        if not re.fullmatch(r"[A-Z]{3}", code) or isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
            raise RulesError(f"value.rates.{code}: a currency code with a non-negative rate to {currency}")
        rates[code] = Decimal(str(rate))
    rfm = _table(value, "rfm", "value.")
    recency = _thresholds(rfm.get("recency_days", [30, 90, 180, 365]), "value.rfm.recency_days")
    frequency = _thresholds(rfm.get("frequency", [2, 3, 5, 10]), "value.rfm.frequency")
    monetary = _thresholds(rfm.get("monetary", [500, 2000, 5000, 20000]), "value.rfm.monetary")
    tiers = []
    raw_tiers = value.get("tiers", [])
    if not isinstance(raw_tiers, list):
        raise RulesError("value.tiers: a list of [[value.tiers]] tables")
    for i, t in enumerate(raw_tiers):
        where = f"value.tiers[{i}]"
        if not isinstance(t, dict) or set(t) != {"tier", "when"} or t["tier"] not in ("high", "medium"):
            raise RulesError(f"{where}: needs tier (high or medium) and when, nothing else")
        tiers.append((t["tier"], parse_condition(t["when"], f"{where}.when", BASE_FACTS)))
    ltv = _table(value, "ltv", "value.")
    try:
        horizon = Decimal(str(ltv.get("horizon_years", 3)))
        per_year = Decimal(str(ltv.get("default_orders_per_year", 1.0)))
        survival_raw = ltv.get("survival", {"customer": 0.5, "loyal": 0.9, "at_risk": 0.3})
        survival = {s: Decimal(str(survival_raw.get(s, 0))) for s in LIFECYCLE_STAGES}
    except (ArithmeticError, AttributeError, ValueError) as exc:
        raise RulesError(f"value.ltv: numbers expected ({exc})") from None
    bad = set(survival_raw) - set(LIFECYCLE_STAGES)
    if bad or horizon < 0 or per_year < 0 or any(not 0 <= v <= 1 for v in survival.values()):
        raise RulesError(f"value.ltv: horizon_years and default_orders_per_year >= 0, survival per stage "
                         f"({', '.join(LIFECYCLE_STAGES)}) from 0 to 1")

    stages = []
    raw_stages = doc.get("lifecycle", [])
    if not isinstance(raw_stages, list):
        raise RulesError("lifecycle: a list of [[lifecycle]] tables")
    for i, s in enumerate(raw_stages):
        where = f"lifecycle[{i}]"
        if not isinstance(s, dict) or not {"stage", "when"} <= set(s) <= {"stage", "when", "rule"}:
            raise RulesError(f"{where}: needs stage and when (and optionally rule, a description)")
        if s["stage"] not in LIFECYCLE_STAGES or s["stage"] == "prospect":
            raise RulesError(f"{where}.stage: one of {', '.join(LIFECYCLE_STAGES[1:])} (prospect is what no rule matches)")
        stages.append(Stage(s["stage"], str(s.get("rule") or s["stage"]),
                            parse_condition(s["when"], f"{where}.when", AFTER_TIERS)))
    segments = []
    raw_segments = doc.get("segments", [])
    if not isinstance(raw_segments, list):
        raise RulesError("segments: a list of [[segments]] tables")
    for i, s in enumerate(raw_segments):
        where = f"segments[{i}]"
        if not isinstance(s, dict) or not {"name", "when"} <= set(s) <= {"name", "when", "label", "description",
                                                                         "purpose", "channel"}:
            raise RulesError(f"{where}: needs name and when (and optionally label, description, purpose, channel)")
        if not isinstance(s["name"], str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", s["name"]):
            raise RulesError(f"{where}.name: lower-case letters, digits and _ (a stable identifier)")
        if any(x.name == s["name"] for x in segments):
            raise RulesError(f"{where}.name: segment {s['name']!r} is defined twice")
        label = s.get("label", {})
        if not isinstance(label, dict):
            raise RulesError(f"{where}.label: a table such as {{ en = \"...\", zh = \"...\" }}")
        purpose = s.get("purpose", NO_CONSENT_NEEDED)
        if purpose not in CONSENT_PURPOSES:
            raise RulesError(f"{where}.purpose: unknown purpose {purpose!r}; one of {', '.join(CONSENT_PURPOSES)} "
                             f"(a consent purpose; {NO_CONSENT_NEEDED}, the default, needs no consent)")
        channel = s.get("channel", "all")
        if channel not in (*CONSENT_CHANNELS, "all"):
            raise RulesError(f"{where}.channel: unknown channel {channel!r}; one of "
                             f"{', '.join((*CONSENT_CHANNELS, 'all'))}")
        if "channel" in s and purpose == NO_CONSENT_NEEDED:
            gated = ", ".join(p for p in CONSENT_PURPOSES if p != NO_CONSENT_NEEDED)
            raise RulesError(f"{where}.channel: the channel the consent must cover; it takes a purpose that "
                             f"needs consent ({gated})")
        segments.append(Segment(s["name"], {k: str(v) for k, v in label.items()},
                                parse_condition(s["when"], f"{where}.when", AFTER_LIFECYCLE), purpose, channel))
    return Rules(currency, rates, recency, frequency, monetary, tuple(tiers), horizon, per_year, survival,
                 tuple(stages), tuple(segments))


def load_rules(path: str | Path | None = None) -> Rules:
    """The rules in ``path`` (default: the shipped config/customer-state.toml)."""
    path = Path(path) if path else DEFAULT_RULES
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_rules(doc)
    except RulesError as exc:
        raise RulesError(f"{path}: {exc}") from None


# -- evaluation -------------------------------------------------------------------------------------

def _days(since: str | None, as_of: datetime) -> float | None:
    return None if since is None else (as_of - at_time(since)) / _DAY


def _score(value: float, thresholds: tuple[float, ...]) -> int:
    """1 below the first threshold, up to 5 at or above the last."""
    return 1 + sum(1 for t in thresholds if value >= t)


def _money(value: Decimal) -> str:
    return format(value.quantize(CENT, ROUND_HALF_UP), "f")


def _anchors(view: dict) -> dict[str, str | None]:
    orders = view["orders"]
    return {"last_order": orders["last_at"], "first_order": orders["first_at"],
            "last_contact": view["last_contact"]["at"] if view["last_contact"] else None,
            "first_contact": view["first_contact"]["at"] if view["first_contact"] else None}


def _base(view: dict, as_of: datetime, rules: Rules, summary: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base facts and the value block before tiers and LTV."""
    orders = view["orders"]
    sat = summary["satisfaction"]
    anchors = _anchors(view)
    net = {c: Decimal(v) for c, v in summary["net_revenue"].items()}
    gross = {c: Decimal(v) for c, v in orders["revenue"].items()}
    monetary = sum((v * rules.rates[c] for c, v in net.items() if c in rules.rates), Decimal(0))
    gross_base = sum((v * rules.rates[c] for c, v in gross.items() if c in rules.rates), Decimal(0))
    aov = gross_base / orders["count"] if orders["count"] else None
    facts: dict[str, Any] = {
        "orders.count": orders["count"], "orders.refunds": orders["refunds"],
        **{name: _days(anchors[anchor], as_of) for name, anchor in TIME_FACTS.items()},
        "contacts.total": summary["contacts_total"],
        "tickets.open": len(summary["open_tickets"]), "complaints.open": len(summary["open_complaints"]),
        "satisfaction.index": sat["index"], "satisfaction.at_risk": sat["at_risk"],
        "satisfaction.reasons": [r["code"] for r in sat["reasons"]],
        "satisfaction.csat": (view["satisfaction"]["csat"] or {}).get("value"),
        "satisfaction.nps": (view["satisfaction"]["nps"] or {}).get("value"),
        "value.monetary": float(monetary), "value.aov": float(aov) if aov is not None else None,
    }
    facts.update({f"contacts.{c}": n for c, n in view["contacts"].items()})
    facts.update({f"traits.{k}": v["value"] for k, v in view["traits"].items()})
    facts.update({f"consent.{k}": v for k, v in resolve_consent(view["consent"]).items()})
    rfm = None
    if orders["count"]:
        recency = 5 - sum(1 for t in rules.recency_days if facts["days_since_last_order"] > t)
        rfm = {"recency": recency, "frequency": _score(orders["count"], rules.frequency),
               "monetary": _score(float(monetary), rules.monetary)}
        rfm["score"] = f"{rfm['recency']}{rfm['frequency']}{rfm['monetary']}"
        facts.update({f"rfm.{k}": v for k, v in rfm.items()},
                     **{"rfm.sum": rfm["recency"] + rfm["frequency"] + rfm["monetary"]})
    value = {
        "orders": orders["count"], "refunds": orders["refunds"], "net_revenue": summary["net_revenue"],
        "monetary": _money(monetary), "currency": rules.currency,
        "average_order_value": _money(aov) if aov is not None else None,
        "first_order_at": orders["first_at"], "last_order_at": orders["last_at"], "rfm": rfm,
    }
    return facts, value


def _orders_per_year(view: dict, rules: Rules) -> Decimal:
    orders = view["orders"]
    if orders["count"] >= 2 and orders["first_at"] and orders["last_at"]:
        span = Decimal((at_time(orders["last_at"]) - at_time(orders["first_at"])) / _DAY)
        if span >= 30:
            return min(Decimal(52), (orders["count"] - 1) / (span / Decimal(365)))
    return rules.default_orders_per_year


def derive(view: dict, as_of: datetime, rules: Rules, previous: dict | None = None) -> dict[str, Any]:
    """The customer's snapshot content at ``as_of`` (without ``version``; ``previous`` is the last
    snapshot, whose lifecycle ``since`` is kept while the stage stays)."""
    view = customer_view.upgrade(view)
    summary = customer_view.summary(view)
    facts, value = _base(view, as_of, rules, summary)
    tier = next((t for t, cond in rules.tiers if holds(cond, facts, view, as_of)),
                "low" if view["orders"]["count"] else "none")
    value["tier"] = facts["value.tier"] = tier
    matched = next((s for s in rules.stages if holds(s.when, facts, view, as_of)), None)
    stage, rule = (matched.stage, matched.rule) if matched else ("prospect", "no rule matched")
    before = (previous or {}).get("lifecycle") or {}
    since = before["since"] if before.get("stage") == stage else customer_view.ts(as_of)
    facts["lifecycle"] = stage
    aov = Decimal(value["average_order_value"]) if value["average_order_value"] else Decimal(0)
    ltv = Decimal(value["monetary"]) + aov * _orders_per_year(view, rules) * rules.horizon_years * rules.survival[stage]
    value["ltv"] = _money(max(ltv, Decimal(0)))
    facts["value.ltv"] = float(value["ltv"])
    consent = resolve_consent(view["consent"])
    # a segment for a purpose that needs consent holds only those whose latest consent grants it
    segments = sorted(s.name for s in rules.segments
                      if consented(consent, s.purpose, s.channel) and holds(s.when, facts, view, as_of))
    sat = summary["satisfaction"]
    return {
        "customer_id": view["customer_id"],
        "as_of": customer_view.ts(as_of),
        "profile": {"display_name": summary["display_name"],
                    "traits": {k: v["value"] for k, v in sorted(view["traits"].items())},
                    "consent": consent},
        "lifecycle": {"stage": stage, "since": since, "rule": rule},
        "value": value,
        "segments": segments,
        "satisfaction": {"index": sat["index"], "at_risk": sat["at_risk"],
                         "reasons": [r["code"] for r in sat["reasons"]]},
    }


def next_review(view: dict, as_of: datetime, rules: Rules) -> datetime | None:
    """The earliest moment after ``as_of`` at which the state could change with no new event
    (None: never). A clock tick re-evaluates the customer then: a silent customer still churns."""
    view = customer_view.upgrade(view)
    anchors = _anchors(view)
    moments: set[datetime] = set()
    conditions = [c for _, c in rules.tiers] + [s.when for s in rules.stages] + [s.when for s in rules.segments]
    for cond in conditions:
        moments |= _moments(cond, view, anchors)
    if anchors["last_order"]:
        moments |= {at_time(anchors["last_order"]) + d * _DAY + _EPSILON for d in rules.recency_days}
    later = [m for m in moments if m > as_of]
    return min(later) if later else None


# -- changes ----------------------------------------------------------------------------------------

CONTENT = ("profile", "lifecycle", "value", "segments", "satisfaction")
"""The parts of a snapshot whose change makes a new version (``as_of`` alone does not)."""


def same(a: dict | None, b: dict | None) -> bool:
    """Do two snapshots say the same thing about the customer?"""
    if a is None or b is None:
        return a is b
    return all(a.get(k) == b.get(k) for k in CONTENT)


def changes(before: dict | None, after: dict) -> list[tuple[str, str, dict[str, Any]]]:
    """What changed from ``before`` (None: a new customer) to ``after``, as (type, detail, data).
    Every difference in the content yields at least one change."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    b = before or {}
    old_stage = (b.get("lifecycle") or {}).get("stage")
    if b.get("lifecycle") != after["lifecycle"]:  # another stage, or another rule put it there
        out.append(("lifecycle.changed", "", {"from": old_stage, "to": after["lifecycle"]["stage"],
                                              "rule": after["lifecycle"]["rule"]}))
    old_segments = set(b.get("segments") or ())
    new_segments = set(after["segments"])
    out += [("segment.entered", s, {"segment": s}) for s in sorted(new_segments - old_segments)]
    out += [("segment.exited", s, {"segment": s}) for s in sorted(old_segments - new_segments)]
    old_sat = b.get("satisfaction") or {"at_risk": False, "index": None, "reasons": []}
    sat = after["satisfaction"]
    body = {"index": sat["index"], "reasons": sat["reasons"]}
    if sat["at_risk"] and not old_sat["at_risk"]:
        out.append(("satisfaction.at_risk", "", body))
    elif old_sat["at_risk"] and not sat["at_risk"]:
        out.append(("satisfaction.recovered", "", body))
    elif before is not None and old_sat != sat:
        out.append(("satisfaction.changed", "", body))
    old_value = b.get("value") or {}
    changed = sorted(k for k in after["value"] if old_value.get(k) != after["value"][k])
    if before is None and not (after["value"]["orders"] or after["value"]["refunds"]):
        changed = []  # nothing bought: the new customer's lifecycle change says it all
    if changed:
        out.append(("value.changed", "", {"changed": changed}))
    old_profile = b.get("profile") or {"display_name": None, "traits": {}, "consent": {}}
    profile = after["profile"]
    diff: dict[str, Any] = {}
    if old_profile["display_name"] != profile["display_name"]:
        diff["display_name"] = {"from": old_profile["display_name"], "to": profile["display_name"]}
    for name in sorted(set(old_profile["traits"]) | set(profile["traits"])):
        if old_profile["traits"].get(name) != profile["traits"].get(name):
            diff[name] = {"from": old_profile["traits"].get(name), "to": profile["traits"].get(name)}
    for slot in sorted(set(old_profile["consent"]) | set(profile["consent"])):
        if old_profile["consent"].get(slot) != profile["consent"].get(slot):
            diff[f"consent:{slot}"] = {"from": old_profile["consent"].get(slot), "to": profile["consent"].get(slot)}
    if diff:
        out.append(("profile.changed", "", {"changed": diff}))
    if before is not None and not out and not same(before, after):  # a guard: content changed unnamed
        out.append(("value.changed", "", {"changed": []}))
    return out
