"""Call-center callbacks as ``call.*`` CloudEvents: pure functions, no I/O (the routes are in ``calls.py``).

Three native forms are mapped (docs/adapters/calls.md has the tables):

* Twilio Voice: status callbacks (``CallStatus``), the ``<Enqueue action>`` request (``QueueResult``,
  ``QueueTime``) and the ``<Dial><Queue url>`` request made when an agent dequeues a caller
  (``DequeingCallSid``), all form-encoded and signed with ``X-Twilio-Signature``.
* Amazon Connect contact records (CTR), one record giving the whole call.
* A generic JSON form any PBX or cloud call center can send.

Event ids are deterministic per call and outcome (``twilio:<CallSid>:answered``...), so a retried
callback, or two callbacks reporting the same outcome, is one event.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Iterable, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from events.identifiers import InvalidIdentifier, normalize


class Refused(ValueError):
    """Bad input: ``field`` names what is wrong, the message says how."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message = field, message


@dataclass
class Mapped:
    """The events one native record gives, and why it gave none (or fewer) when so."""

    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None


MAX_SECONDS = 86_400.0


def call_event(source: str, event_id: str, kind: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """One ``call.<kind>`` CloudEvent; ``None`` values are left out of ``data``."""
    return {"specversion": "1.0", "id": event_id, "source": source, "type": f"call.{kind}",
            "time": at.astimezone(timezone.utc).isoformat(),
            "data": {k: v for k, v in data.items() if v is not None}}


def _seconds(value: object, name: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Refused(name, f"must be a number of seconds, got {value!r}") from None
    if not 0 <= seconds <= MAX_SECONDS:
        raise Refused(name, f"must be between 0 and {MAX_SECONDS:g} seconds, got {value!r}")
    return seconds


def _withheld(number: object, default_region: str) -> str | None:
    """Why ``number`` cannot name a customer (withheld, a SIP or client address), or None."""
    if not isinstance(number, str) or not number.strip():
        return "the caller's number is missing"
    try:
        normalize("phone", number, default_region)
    except InvalidIdentifier as exc:
        return f"the customer's number is withheld or not a phone number ({exc})"
    return None


# --- Twilio -------------------------------------------------------------------------------------

def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` as Twilio computes it: base64(HMAC-SHA1(auth token, the full URL it
    requested + every POST parameter's name and value, by name in case-sensitive order)). A name
    given several times contributes each of its distinct values, in order."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    payload = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, without and with the scheme's default port: Twilio signs the URL as it was
    configured, and proxies differ on whether they pass ``:443`` on."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    elif parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    return variants


def twilio_signature_valid(auth_token: str, url: str, params: list[tuple[str, str]], signature: str) -> bool:
    """Whether ``signature`` is Twilio's for this request (compared in constant time)."""
    return any(hmac.compare_digest(twilio_signature(auth_token, u, params).encode(), signature.strip().encode())
               for u in _port_variants(url))


TWILIO_DIRECTIONS = {"inbound": "inbound", "trunking-originating": "inbound",
                     "outbound-api": "outbound", "outbound-dial": "outbound", "trunking-terminating": "outbound"}
TWILIO_STARTED = ("queued", "initiated", "ringing")
TWILIO_UNANSWERED = ("busy", "no-answer", "canceled", "failed")
TWILIO_STATUSES = (*TWILIO_STARTED, "in-progress", "completed", *TWILIO_UNANSWERED)
QUEUE_ANSWERED = ("bridged", "redirected-from-bridged")
QUEUE_ABANDONED = ("hangup", "bridging-in-process")
QUEUE_UNRECORDED = ("leave", "redirected", "queue-full", "error", "system-error")


def _required(params: Mapping[str, str], name: str) -> str:
    value = (params.get(name) or "").strip()
    if not value:
        raise Refused(name, "missing: not a Twilio Voice callback?")
    return value


def _rfc2822(value: str) -> datetime:
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise Refused("Timestamp", f"{value!r} is not an RFC 2822 date") from None
    if at is None:
        raise Refused("Timestamp", f"{value!r} is not an RFC 2822 date")
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def twilio_events(params: Mapping[str, str], query: Mapping[str, str], received_at: datetime,
                  default_region: str = "CN") -> Mapped:
    """The events of one Twilio Voice request (already verified): a status callback, an
    ``<Enqueue action>`` request or a ``<Queue url>`` request. ``query`` is the callback URL's query:
    ``queue`` and ``agent`` there name the queue and the agent, which Twilio does not send."""
    sid, account = _required(params, "CallSid"), _required(params, "AccountSid")
    raw_direction = (params.get("Direction") or "inbound").strip()
    direction = TWILIO_DIRECTIONS.get(raw_direction)
    if direction is None:
        raise Refused("Direction", f"unknown value {raw_direction!r}; known: {', '.join(TWILIO_DIRECTIONS)}")
    number = params.get("From") if direction == "inbound" else params.get("To")
    withheld = _withheld(number, default_region)
    if withheld:
        return Mapped(skipped=f"{withheld}: the call cannot be attributed to a customer")
    queue, agent = (query.get("queue") or "").strip() or None, (query.get("agent") or "").strip() or None
    source = f"urn:crm:cti:twilio:{account}"

    def event(kind: str, at: datetime, native: str, **measures: Any) -> dict[str, Any]:
        data = {"call_id": sid, "phone_number": number, "direction": direction, "queue": queue, "agent": agent,
                **measures, "properties": {"platform": "twilio", "native_status": native}}
        return call_event(source, f"twilio:{sid}:{kind}", kind, at, data)

    if "QueueResult" in params:  # the <Enqueue action> request: the call left the queue
        result = params["QueueResult"].strip()
        wait = _seconds(params.get("QueueTime") or 0, "QueueTime")
        queue = queue or (params.get("QueueSid") or "").strip() or None
        if result in QUEUE_ANSWERED:
            return Mapped([event("answered", received_at, result, wait_seconds=wait)])
        if result in QUEUE_ABANDONED:
            return Mapped([event("abandoned", received_at, result, wait_seconds=wait)])
        if result in QUEUE_UNRECORDED:
            return Mapped(skipped=f"QueueResult {result}: the call left the queue neither to an agent nor by "
                                  "hanging up; nothing to record")
        raise Refused("QueueResult", f"unknown value {result!r}; known: "
                                     f"{', '.join(QUEUE_ANSWERED + QUEUE_ABANDONED + QUEUE_UNRECORDED)}")
    if "DequeingCallSid" in params:  # the <Dial><Queue url> request: an agent takes the caller now
        wait = _seconds(params.get("QueueTime") or 0, "QueueTime")
        queue = queue or (params.get("QueueSid") or "").strip() or None
        return Mapped([event("answered", received_at, "dequeued", wait_seconds=wait)])

    status = _required(params, "CallStatus")
    at = _rfc2822(params["Timestamp"]) if (params.get("Timestamp") or "").strip() else received_at
    if status in TWILIO_STARTED:
        return Mapped([event("started", at, status)])
    if status == "in-progress":
        if direction == "inbound" and queue:
            return Mapped(skipped="answered by Twilio, not yet by an agent: for a queued call the <Enqueue "
                                  "action> (or <Queue url>) request reports the answer and the wait")
        return Mapped([event("answered", at, status, wait_seconds=0.0)])
    if status not in TWILIO_STATUSES:
        raise Refused("CallStatus", f"unknown value {status!r}; known: {', '.join(TWILIO_STATUSES)}")
    duration = _seconds(params.get("CallDuration") or 0, "CallDuration")
    # A phone number's own status callback reports only the end of an incoming call: the end says
    # the call started (and, completed, was answered), under the same ids a "ringing" or "answered"
    # callback would have used, so the events are the same whichever callbacks are configured.
    began = at - timedelta(seconds=duration)
    events = [event("started", began, status)]
    if status == "completed":
        if not (direction == "inbound" and queue):  # a queued call's answer comes from the queue
            events.append(event("answered", began, status, wait_seconds=0.0))
        events.append(event("ended", at, status, talk_seconds=duration, disposition=status))
    elif direction == "inbound":  # busy, no-answer, canceled, failed: the caller was never answered
        events.append(event("abandoned", at, status, wait_seconds=duration))
    else:
        events.append(event("ended", at, status, talk_seconds=0.0, disposition=status))
    return Mapped(events)


# --- Amazon Connect -----------------------------------------------------------------------------

CONNECT_OUTBOUND = ("OUTBOUND", "API", "CALLBACK", "EXTERNAL_OUTBOUND")
CONNECT_TRANSFERS = ("TRANSFER", "QUEUE_TRANSFER")
CONNECT_NOT_CALLS = ("MONITOR", "DISCONNECT")


def _iso(record: Mapping[str, Any], name: str, where: str, required: bool = False) -> datetime | None:
    value = record.get(name)
    if value is None or value == "":
        if required:
            raise Refused(f"{where}{name}", "missing")
        return None
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"{where}{name}", f"{value!r} is not an ISO 8601 time") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _number(record: Mapping[str, Any], name: str, where: str) -> float | None:
    value = record.get(name)
    return None if value is None else _seconds(value, f"{where}{name}")


def _object(record: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Refused(name, "must be an object or null")
    return value


def _queue_wait(queue: Mapping[str, Any], until: datetime) -> float:
    """Seconds in queue: ``Queue.Duration`` when given, else dequeue (or ``until``) − enqueue."""
    duration = _number(queue, "Duration", "Queue.")
    if duration is not None:
        return duration
    enqueued = _iso(queue, "EnqueueTimestamp", "Queue.")
    left = _iso(queue, "DequeueTimestamp", "Queue.") or until
    return max(0.0, min(MAX_SECONDS, (left - enqueued).total_seconds())) if enqueued else 0.0


def connect_events(ctr: object, default_region: str = "CN") -> Mapped:
    """The events of one Amazon Connect contact record: ``call.started`` (not for a transfer, whose
    call started under the initial contact), then ``call.answered`` + ``call.ended`` when an agent
    took it, or ``call.abandoned`` when it was queued and no agent did."""
    if not isinstance(ctr, dict):
        raise Refused("", "a contact record must be a JSON object")
    contact = ctr.get("ContactId")
    if not isinstance(contact, str) or not contact.strip():
        raise Refused("ContactId", "missing")
    channel = ctr.get("Channel")
    if not isinstance(channel, str) or not channel:
        raise Refused("Channel", "missing")
    if channel != "VOICE":
        return Mapped(skipped=f"Channel {channel}: only VOICE contacts are calls")
    method = str(ctr.get("InitiationMethod") or "INBOUND")
    if method in CONNECT_NOT_CALLS:
        return Mapped(skipped=f"InitiationMethod {method}: not a conversation with a customer")
    endpoint = _object(ctr, "CustomerEndpoint") or {}
    number = endpoint.get("Address")
    withheld = _withheld(number, default_region)
    if withheld:
        return Mapped(skipped=f"CustomerEndpoint.Address: {withheld}")
    started = _iso(ctr, "InitiationTimestamp", "", required=True)
    disconnected = _iso(ctr, "DisconnectTimestamp", "") or started
    queue, agent = _object(ctr, "Queue"), _object(ctr, "Agent")
    answered_at = _iso(agent, "ConnectedToAgentTimestamp", "Agent.") if agent else None
    agent_name = None
    if agent:
        agent_name = agent.get("Username") or (str(agent.get("ARN") or "").rsplit("/", 1)[-1] or None)
    source = "urn:crm:cti:amazon-connect"
    base = {"call_id": contact, "phone_number": number,
            "direction": "outbound" if method in CONNECT_OUTBOUND else "inbound",
            "queue": (queue or {}).get("Name") or None, "agent": agent_name,
            "properties": {"platform": "amazon-connect", "initiation_method": method,
                           **({"initial_contact_id": ctr["InitialContactId"]} if ctr.get("InitialContactId") else {}),
                           **({"disconnect_reason": ctr["DisconnectReason"]} if ctr.get("DisconnectReason") else {})}}

    def event(kind: str, at: datetime, **measures: Any) -> dict[str, Any]:
        return call_event(source, f"connect:{contact}:{kind}", kind, at, {**base, **measures})

    events = [] if method in CONNECT_TRANSFERS else [event("started", started)]
    if agent and answered_at:
        wait = _queue_wait(queue, answered_at) if queue else 0.0
        events.append(event("answered", answered_at, wait_seconds=wait))
        events.append(event(
            "ended", disconnected, wait_seconds=wait,
            talk_seconds=_number(agent, "AgentInteractionDuration", "Agent.") or 0.0,
            hold_seconds=_number(agent, "CustomerHoldDuration", "Agent.") or 0.0,
            wrap_seconds=_number(agent, "AfterContactWorkDuration", "Agent.") or 0.0,
            disposition=ctr.get("DisconnectReason") or None))
    elif queue and (queue.get("EnqueueTimestamp") or queue.get("Duration") is not None):
        left = _iso(queue, "DequeueTimestamp", "Queue.") or disconnected
        events.append(event("abandoned", left, wait_seconds=_queue_wait(queue, disconnected)))
    return Mapped(events)


# --- the generic form ---------------------------------------------------------------------------

Seconds = Annotated[float | None, Field(None, ge=0, le=MAX_SECONDS)]
Name = Annotated[str | None, Field(None, min_length=1, max_length=200)]


class GenericCall(BaseModel):
    """One call status as any PBX or cloud call center can send it (docs/adapters/calls.md)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    call_id: str = Field(min_length=1, max_length=200, description="the call's id in the sending system")
    status: Literal["started", "answered", "ended", "abandoned"]
    customer_number: str = Field(min_length=1, max_length=200, description="the customer's phone number")
    direction: Literal["inbound", "outbound"] = "inbound"
    queue: Name = None
    agent: Name = None
    wait_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS, validate_default=True,
                                       description="required for answered and abandoned")
    talk_seconds: float | None = Field(None, ge=0, le=MAX_SECONDS, validate_default=True,
                                       description="required for ended")
    hold_seconds: Seconds = None
    wrap_seconds: Seconds = None
    disposition: Name = None
    notes: str = Field("", max_length=16_000)
    at: AwareDatetime | None = Field(None, description="when it happened, RFC 3339 with offset; default: now")
    system: str = Field("pbx", pattern=r"^[a-z0-9][a-z0-9-]{0,39}$",
                        description="names the sending system; call ids are unique within it")

    @field_validator("wait_seconds", "talk_seconds")
    @classmethod
    def _needed(cls, value: float | None, info: ValidationInfo) -> float | None:
        status = info.data.get("status")
        if value is None and _NEEDED.get(status) == info.field_name:
            raise ValueError(f"required when status is {status}")
        return value


_NEEDED = {"answered": "wait_seconds", "abandoned": "wait_seconds", "ended": "talk_seconds"}


_GENERIC_FIELDS = {"started": (), "answered": ("wait_seconds",), "abandoned": ("wait_seconds",),
                   "ended": ("wait_seconds", "talk_seconds", "hold_seconds", "wrap_seconds", "disposition", "notes")}


def generic_event(call: GenericCall, received_at: datetime) -> dict[str, Any]:
    """The ``call.<status>`` event of one generic call; fields that do not apply to the status are
    left out."""
    data: dict[str, Any] = {"call_id": call.call_id, "phone_number": call.customer_number,
                            "direction": call.direction, "queue": call.queue, "agent": call.agent}
    for name in _GENERIC_FIELDS[call.status]:
        value = getattr(call, name)
        if value not in (None, ""):
            data[name] = value
    return call_event(f"urn:crm:cti:{call.system}", f"{call.system}:{call.call_id}:{call.status}", call.status,
                      call.at or received_at, data)
