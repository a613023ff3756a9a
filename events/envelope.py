"""The CloudEvents 1.0 envelope and the validation of a raw event into a typed ``Touchpoint``.

Pure code: no I/O and no clock (the receive time is passed in).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from events import pii
from events.identifiers import BlockedIdentifier, Identifier, InvalidIdentifier, normalize
from events.touchpoints import EVENT_TYPES, EventType, TouchpointData

_EXT_NAME = re.compile(r"^[a-z0-9]{1,20}$")
CORE_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data")

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
"""An RFC 3339 date-time, as CloudEvents requires of ``time``: seconds and an offset are not
optional (pydantic alone also takes ``10:00Z``, a space for the ``T`` and Unix timestamps)."""
TIME_FORMAT = "must be an RFC 3339 date-time with seconds and an offset, e.g. 2026-11-22T10:00:00Z"

EARLIEST_TIME = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=timezone.utc)
"""Event times are refused outside [EARLIEST_TIME, LATEST_TIME): the folds add windows and periods
to them, which would leave the range of a datetime near its ends (years 1 and 9999)."""
TIME_RANGE = f"between {EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d} (UTC)"


def _in_range(value: datetime) -> bool:
    # aware datetimes compare across offsets without converting, which could overflow at the ends
    return EARLIEST_TIME <= value < LATEST_TIME


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON form; extension attributes are kept as extras."""

    model_config = ConfigDict(extra="allow")

    specversion: str = Field("1.0", pattern=r"^1\.0$")
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1, max_length=1024)
    type: str = Field(min_length=1, max_length=200)
    time: datetime | None = None
    # CloudEvents: an optional attribute, when present, is non-empty
    subject: str | None = Field(None, min_length=1, max_length=1024)
    datacontenttype: str | None = Field("application/json", min_length=1)
    dataschema: str | None = Field(None, min_length=1, max_length=1024)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("time", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if value is not None and not (isinstance(value, str) and RFC3339.match(value)):
            raise ValueError(f"time {TIME_FORMAT}")
        return value

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("time must carry a time zone offset (RFC 3339), e.g. 2026-11-22T10:00:00Z")
        if value is not None and not _in_range(value):
            raise ValueError(f"time must be {TIME_RANGE}")
        return value

    @field_validator("datacontenttype")
    @classmethod
    def _json(cls, value: str | None) -> str | None:
        if value is not None and not value.split(";")[0].strip().endswith("json"):
            raise ValueError("only JSON data is accepted (datacontenttype application/json)")
        return value

    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True)
class FieldError:
    """One reason an event was refused: where (a dotted path) and why."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class InvalidEvent(ValueError):
    """Raised with every field error of one event."""

    def __init__(self, kind: str, errors: list[FieldError]):
        self.kind = kind  # schema_violation | unknown_type | oversize | undecodable
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


@dataclass(frozen=True)
class Touchpoint:
    """A validated touchpoint: the envelope, its typed data and its normalized identifiers."""

    id: str
    source: str
    type: str
    time: datetime
    data: TouchpointData
    channel: str
    identifiers: tuple[Identifier, ...]
    subject: str | None = None
    extensions: dict[str, Any] = field(default_factory=dict)
    invalid_identifiers: tuple[FieldError, ...] = ()
    blocked_identifiers: tuple[Identifier, ...] = ()
    """Identity fields refused as placeholder values (kind and value as given, trimmed)."""
    sealed: tuple[tuple[tuple, str], ...] = ()
    """Encrypted tokens of a sealed event with their paths in ``data`` (the model holds placeholders)."""

    @property
    def key(self) -> str:
        """Idempotency key: the same ``id`` from the same ``source`` is the same event."""
        return event_key(self.source, self.id)

    @property
    def primary_identifier(self) -> Identifier:
        return self.identifiers[0]

    @property
    def event_type(self) -> EventType:
        return EVENT_TYPES[self.type]

    def to_cloudevent(self) -> dict[str, Any]:
        """The structured CloudEvents JSON object (data in its wire form, extensions included)."""
        out: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "dataschema": self.event_type.dataschema,
        }
        if self.subject is not None:
            out["subject"] = self.subject
        out.update(self.extensions)
        out["channel"] = self.channel
        out["data"] = pii.unmask(self.data.model_dump(mode="json", by_alias=True, exclude_none=True,
                                                      exclude_defaults=False), self.sealed)
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_cloudevent())


def event_key(source: str, event_id: str) -> str:
    return hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=16).hexdigest()


NUL_MESSAGE = "must not contain the NUL character (U+0000), which no text in the read model can hold"
MAX_NESTING = 32
"""How deep objects and arrays may nest in an event (the envelope is level 0, ``data`` level 1)."""


def _storable(raw: Any) -> bool:
    """True when ``content_errors`` would find nothing: the same walk without naming paths, which
    is what costs (every event takes this path; only a bad one pays for the names)."""
    stack: list[tuple[Any, int]] = [(raw, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        if isinstance(value, str):
            if "\x00" in value:
                return False
        elif isinstance(value, dict):
            if depth >= MAX_NESTING:
                return False
            for name, item in value.items():
                if "\x00" in name:
                    return False
                push((item, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_NESTING:
                return False
            for item in value:
                push((item, depth + 1))
    return True


def content_errors(raw: Any) -> list[FieldError]:
    """What no schema can accept in a decoded JSON value: a string or member name holding U+0000
    (PostgreSQL refuses it in text and jsonb, so the event could never be stored) and nesting
    deeper than MAX_NESTING. Iterative, so no input can exhaust the interpreter's stack."""
    errors: list[FieldError] = []
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                errors.append(FieldError(path, NUL_MESSAGE))
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= MAX_NESTING:
            errors.append(FieldError(path, f"objects and arrays nest more than {MAX_NESTING} levels deep here"))
            continue
        members = value.items() if isinstance(value, dict) else enumerate(value)
        for name, item in members:
            shown = str(name).replace("\x00", "\\u0000")  # the error itself must be storable
            where = f"{path}.{shown}" if path else shown
            if shown != str(name):
                errors.append(FieldError(where, f"the member name {NUL_MESSAGE}"))
            stack.append((item, where, depth + 1))
    return sorted(errors, key=lambda e: e.field)


def _pydantic_errors(exc: ValidationError, prefix: str) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        out.append(FieldError(f"{prefix}{loc}" if loc else prefix.rstrip("."), err["msg"]))
    return out


def _wire_name(data: TouchpointData, path: str) -> str:
    """The dotted name of an identity field as the sender wrote it: ``from_address`` is ``data.from``,
    ``to[0]`` is ``data.to.0`` (as pydantic names the fields it refuses)."""
    name, _, index = path.partition("[")
    info = type(data).model_fields.get(name)
    wire = info.alias if info is not None and info.alias else name
    return f"data.{wire}" + (f".{index.rstrip(']')}" if index else "")


def _field_value(data: TouchpointData, path: str) -> Any:
    name, _, index = path.partition("[")
    value = getattr(data, name, None)
    if index and value is not None:
        i = int(index.rstrip("]"))
        value = value[i] if len(value) > i else None
    return value


def _normalize(kind: str, raw: object, default_region: str, pseudonyms: bool = False,
               blocked: frozenset[str] | None = None) -> Identifier:
    """``normalize``, refusing also an identifier with white space inside: customer events carry
    their identifier keys space separated (``events.customer_events``), so such a value would
    come apart into several identifiers no one sent. With ``pseudonyms`` (a sealed event, read by
    the processors) a pseudonym is an identifier as it stands."""
    if pseudonyms and isinstance(raw, str) and pii.PSEUDONYM.match(raw):
        return Identifier(kind, raw)
    ident = normalize(kind, raw, default_region, blocked)
    if any(c.isspace() for c in ident.value):
        raise InvalidIdentifier(f"{kind} {raw!r} has white space inside, which no identifier may hold")
    return ident


def extract_identifiers(event_type: EventType, data: TouchpointData, default_region: str, pseudonyms: bool = False,
                        blocked: frozenset[str] | None = None, refused: list[Identifier] | None = None
                        ) -> tuple[tuple[Identifier, ...], tuple[FieldError, ...]]:
    """The event's normalized identifiers (primary first, no duplicates) and the invalid ones;
    ``refused`` (when given) collects the placeholder values refused (``blocked``)."""
    found: list[Identifier] = []
    invalid: list[FieldError] = []
    refused = [] if refused is None else refused
    for kind, path in event_type.identity_fields:
        raw = _field_value(data, path)
        if raw is None:
            continue
        try:
            ident = _normalize(kind, raw, default_region, pseudonyms, blocked)
        except InvalidIdentifier as exc:
            invalid.append(FieldError(_wire_name(data, path), str(exc)))
            if isinstance(exc, BlockedIdentifier) and exc.value:
                refused.append(Identifier(exc.kind, exc.value))
            continue
        if ident not in found:
            found.append(ident)
    refs = getattr(data, "identifiers", None) or []
    if event_type.name not in ("identity.linked", "identity.unlinked"):
        # an unlink names its identifiers too: the identity stage reads them as "different people"
        # and puts the event on the customer of the first one
        refs = []
    if refs:
        for i, ref in enumerate(refs):
            try:
                ident = _normalize(ref.kind, ref.value, default_region, pseudonyms, blocked)
            except InvalidIdentifier as exc:
                invalid.append(FieldError(f"data.identifiers.{i}", str(exc)))
                if isinstance(exc, BlockedIdentifier) and exc.value:
                    refused.append(Identifier(exc.kind, exc.value))
                continue
            if ident not in found:
                found.append(ident)
    return tuple(found), tuple(invalid)


def validate(raw: Any, *, received_at: datetime, default_region: str = "CN", sealed: bool = False,
             require_specversion: bool = False, blocked: frozenset[str] | None = None) -> Touchpoint:
    """Validate one raw structured CloudEvent (a decoded JSON object) into a Touchpoint.

    ``time`` defaults to ``received_at``; when the sender gives ``sentat`` (its own clock at
    sending), the time is corrected for client clock skew: time = received_at - (sentat - time).
    Raises InvalidEvent listing every problem. ``sealed``: the event was sealed by the collector
    (``events.pii``), as every event on crm.touchpoints is: pseudonyms are identifiers, and each
    encrypted token stands for a valid value of its field. ``require_specversion``: the event came
    in a CloudEvents mode (a CloudEvents media type or ``ce-`` headers), where ``specversion`` is
    REQUIRED; the collector's plain ``application/json`` form and the processors let it default to 1.0.
    ``blocked``: the placeholder values refused as identifiers (``CRM_IDENTITY_BLOCKED``; default
    ``events.identifiers.BLOCKED_VALUES``).
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("schema_violation", [FieldError("", "an event must be a JSON object")])
    unstorable = [] if _storable(raw) else content_errors(raw)
    if unstorable:
        raise InvalidEvent("schema_violation", unstorable)
    early = []
    if require_specversion and "specversion" not in raw:
        early.append(FieldError("specversion", "Field required: every CloudEvent names its specversion (\"1.0\")"))
    if "data_base64" in raw:  # a member of the JSON format, not an extension: binary data
        early.append(FieldError("data_base64", "data and data_base64 are mutually exclusive" if "data" in raw else
                                "binary data (data_base64) is not accepted: the collector takes JSON data only (data)"))
    if early:
        raise InvalidEvent("schema_violation", early)
    try:
        envelope = CloudEvent.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent("schema_violation", _pydantic_errors(exc, "")) from None
    ext = envelope.extensions()
    bad_ext = [FieldError(k, "extension attribute names are 1-20 lower-case letters or digits")
               for k in ext if not _EXT_NAME.match(k)]
    if bad_ext:
        raise InvalidEvent("schema_violation", bad_ext)
    event_type = EVENT_TYPES.get(envelope.type)
    if event_type is None:
        raise InvalidEvent("unknown_type", [FieldError("type", f"unknown event type {envelope.type!r}; "
                                                       f"known: {', '.join(sorted(EVENT_TYPES))}")])
    if envelope.dataschema and envelope.dataschema != event_type.dataschema:
        raise InvalidEvent("schema_violation", [FieldError(
            "dataschema", f"{envelope.dataschema!r} is not the schema of {envelope.type} "
                          f"(expected {event_type.dataschema!r})")])
    tokens: tuple = ()
    data_in = envelope.data
    if sealed:
        data_in, tokens = pii.mask(envelope.data)
    try:
        data = event_type.data.model_validate(data_in)
    except ValidationError as exc:
        raise InvalidEvent("schema_violation", _pydantic_errors(exc, "data.")) from None

    time = envelope.time or received_at
    sent_at = ext.pop("sentat", None)
    if sent_at is not None:
        try:
            if not (isinstance(sent_at, str) and RFC3339.match(sent_at)):
                raise ValueError
            sent = datetime.fromisoformat(sent_at.upper().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent("schema_violation", [FieldError("sentat", f"sentat {TIME_FORMAT}")]) from None
        if not _in_range(sent):
            raise InvalidEvent("schema_violation", [FieldError("sentat", f"sentat must be {TIME_RANGE}")])
        time = received_at - (sent - time)
        if not _in_range(time):
            raise InvalidEvent("schema_violation", [FieldError(
                "time", f"time corrected for the sender's clock (received - (sentat - time)) is {time.isoformat()}; "
                        f"it must be {TIME_RANGE}")])
    ext.pop("channel", None)  # the channel is the declared one of the type
    ext.pop("customerid", None)  # resolved by the platform, never trusted from a sender

    refused: list[Identifier] = []
    identifiers, invalid = extract_identifiers(event_type, data, default_region, sealed, blocked, refused)
    if event_type.name in ("identity.linked", "identity.unlinked") and len(identifiers) < 2:
        verb = "link" if event_type.name == "identity.linked" else "unlink"
        raise InvalidEvent("schema_violation", [*invalid, FieldError(
            "data.identifiers", f"an {event_type.name} event needs two different valid identifiers to {verb}")])
    if not identifiers:
        errors = list(invalid) or [FieldError("data", "the event carries no customer identifier "
                                                      "(email, phone, account_id or anonymous_id)")]
        raise InvalidEvent("schema_violation", errors)
    return Touchpoint(
        id=envelope.id, source=envelope.source, type=envelope.type, time=time.astimezone(timezone.utc),
        data=data, channel=event_type.channel, identifiers=identifiers, subject=envelope.subject,
        extensions=ext, invalid_identifiers=invalid, blocked_identifiers=tuple(dict.fromkeys(refused)),
        sealed=tokens,
    )
