"""Every touchpoint type, declared exactly once: its typed ``data`` model, version and identity fields.

Design §4. The registry at the bottom is the one list of event types; JSON Schemas and the
AsyncAPI document are generated from it (``events.schema``).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Str200 = Annotated[str, Field(max_length=200)]
Text = Annotated[str, Field(max_length=16_000)]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. CNY")]


class TouchpointData(BaseModel):
    """Fields every touchpoint may carry to say who the customer is, plus free properties."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: Str200 | None = Field(None, description="the customer's email address")
    phone: Str200 | None = Field(None, description="the customer's phone number (E.164 or national)")
    account_id: Str200 | None = Field(None, description="the customer's account id in the shop/CRM")
    anonymous_id: Str200 | None = Field(None, description="a web cookie or device id")
    properties: dict[str, object] = Field(default_factory=dict, description="channel-specific extras")


# --- email -------------------------------------------------------------------------------------

class Attachment(BaseModel):
    """An attachment as recorded: its name, type and size only (the content is never kept)."""

    model_config = ConfigDict(extra="forbid")
    filename: Annotated[str, Field(max_length=500)] | None = None
    content_type: Str200 = "application/octet-stream"
    size: int = Field(ge=0, description="decoded size in bytes")


class EmailData(TouchpointData):
    thread_id: Str200 | None = None
    message_id: Str200
    from_address: Str200 = Field(alias="from", description="sender address")
    to: list[Str200] = Field(min_length=1, max_length=50)
    cc: list[Str200] = Field(default_factory=list, max_length=50)
    subject: Annotated[str, Field(max_length=1000)] = ""
    body_text: Text = ""
    in_reply_to: Str200 | None = None
    references: list[Str200] = Field(default_factory=list, max_length=100)
    agent: Str200 | None = Field(None, description="agent who sent or owns the thread")
    attachments: list[Attachment] = Field(default_factory=list, max_length=100,
                                          description="attachments by name, type and size (never their content)")

    model_config = ConfigDict(populate_by_name=True)


class EmailReceived(EmailData):
    """The customer wrote to us: ``from`` is the customer."""


class EmailSent(EmailData):
    """We wrote to the customer: the first ``to`` address is the customer."""


# --- calls -------------------------------------------------------------------------------------

class CallData(TouchpointData):
    call_id: Str200
    phone_number: Str200 = Field(description="the customer's number")
    direction: Literal["inbound", "outbound"] = "inbound"
    queue: Str200 | None = None
    agent: Str200 | None = None


class CallStarted(CallData):
    pass


class CallAnswered(CallData):
    wait_seconds: float = Field(ge=0, le=86_400)


class CallEnded(CallData):
    wait_seconds: float | None = Field(None, ge=0, le=86_400)
    talk_seconds: float = Field(ge=0, le=86_400)
    hold_seconds: float = Field(0, ge=0, le=86_400, description="time the caller was on hold during the call")
    wrap_seconds: float = Field(0, ge=0, le=86_400, description="after-call work by the agent")
    disposition: Str200 | None = None
    notes: Text = ""


class CallAbandoned(CallData):
    wait_seconds: float = Field(ge=0, le=86_400)


# --- web ---------------------------------------------------------------------------------------

class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Str200 | None = None
    medium: Str200 | None = None
    name: Str200 | None = None
    term: Str200 | None = None
    content: Str200 | None = None


class WebData(TouchpointData):
    anonymous_id: Str200 = Field(description="the tracker's anonymous cookie id")
    user_id: Str200 | None = Field(None, description="the account id when logged in")
    session_id: Str200 | None = None
    url: Annotated[str, Field(max_length=2048)]
    referrer: Annotated[str, Field(max_length=2048)] | None = None
    title: Annotated[str, Field(max_length=1000)] | None = None
    campaign: Campaign | None = None


class WebPageViewed(WebData):
    pass


class WebSessionStarted(WebData):
    pass


class WebIdentified(WebData):
    """The visitor said who they are (a login or sign-up): the cookie is linked to ``user_id`` and,
    when given, ``email`` and ``phone``."""

    user_id: Str200 = Field(description="the account id the visitor logged in or signed up as")
    traits: dict[str, object] = Field(default_factory=dict, description="what the page knows of the user "
                                                                        "(name, plan, ...)")


class WebTracked(WebData):
    """Something the visitor did on the page (Segment's ``track``): ``event`` names it, e.g.
    ``Product Added``, ``Checkout Started``; ``properties`` carry its details."""

    event: Str200 = Field(description="what the visitor did, e.g. 'Product Added'")


# --- orders ------------------------------------------------------------------------------------

class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: Str200
    name: Str200 | None = None
    quantity: int = Field(ge=1, le=1_000_000)
    unit_price: Money


class OrderData(TouchpointData):
    order_id: Str200
    currency: Currency = "CNY"


class OrderPlaced(OrderData):
    items: list[LineItem] = Field(min_length=1, max_length=500)
    total: Money | None = Field(None, description="order total; the sum of the items when absent")

    @model_validator(mode="after")
    def _total(self) -> "OrderPlaced":
        if self.total is None:
            self.total = sum((i.unit_price * i.quantity for i in self.items), Decimal(0))
        return self


class OrderPaid(OrderData):
    amount: Money
    method: Str200 | None = None


class OrderRefunded(OrderData):
    amount: Money
    reason: Str200 | None = None


class OrderShipped(OrderData):
    carrier: Str200 | None = None
    tracking_number: Str200 | None = None
    promised_at: AwareDatetime | None = Field(None, description="when delivery was promised by (for the "
                                                                "late-delivery indicator)")


class OrderDelivered(OrderData):
    carrier: Str200 | None = None
    tracking_number: Str200 | None = None
    promised_at: AwareDatetime | None = Field(None, description="when delivery was promised by")


class OrderCancelled(OrderData):
    reason: Str200 | None = Field(None, description="why (free text: personal, sealed)")


class OrderReturnRequested(OrderData):
    reason: Str200 | None = Field(None, description="why (free text: personal, sealed)")


class OrderReturned(OrderData):
    carrier: Str200 | None = None
    tracking_number: Str200 | None = None


class OrderInstallationScheduled(OrderData):
    """An appliance's installation was booked."""

    scheduled_for: AwareDatetime | None = Field(None, description="the appointment")
    installer: Str200 | None = None


class OrderInstallationCompleted(OrderData):
    installer: Str200 | None = None


# --- fax ---------------------------------------------------------------------------------------

class FaxReceived(TouchpointData):
    """An inbound fax, from a fax-to-mail gateway's mail or a gateway's webhook. The document is
    recorded by name, type, size and pages only (never its content)."""

    fax_id: Str200 = Field(description="the gateway's id of the fax (or the mail's Message-ID)")
    from_number: Str200 = Field(description="the sender's fax number (the customer's phone identity)")
    to_number: Str200 | None = Field(None, description="the company's fax number it reached")
    pages: int | None = Field(None, ge=0, le=100_000)
    document: Attachment | None = Field(None, description="the received document: name, type and size")
    gateway: Str200 | None = Field(None, description="which gateway delivered it, e.g. hylafax")


# --- surveys and tickets -----------------------------------------------------------------------

class SurveySent(TouchpointData):
    """A survey invitation went out (the denominator of the response rate)."""

    survey_id: Str200
    rated_touchpoint_id: Str200 | None = Field(None, description="id of the touchpoint to be rated")
    rated_channel: Str200 | None = None
    agent: Str200 | None = Field(None, description="the agent to be rated")
    queue: Str200 | None = None


class SurveyAnswered(TouchpointData):
    survey_id: Str200
    csat: int | None = Field(None, ge=1, le=5, description="customer satisfaction, 1-5")
    nps: int | None = Field(None, ge=0, le=10, description="likelihood to recommend, 0-10")
    comment: Text = ""
    rated_touchpoint_id: Str200 | None = Field(None, description="id of the touchpoint being rated")
    rated_channel: Str200 | None = None
    agent: Str200 | None = Field(None, description="the agent rated, captured at survey time")
    queue: Str200 | None = None

    @model_validator(mode="after")
    def _some_score(self) -> "SurveyAnswered":
        if self.csat is None and self.nps is None:
            raise ValueError("a survey answer needs csat (1-5) or nps (0-10)")
        return self


class TicketData(TouchpointData):
    ticket_id: Str200
    kind: Literal["complaint", "service_request", "question"] = "service_request"
    channel: Str200 | None = Field(None, description="channel the ticket came in by")
    agent: Str200 | None = None
    queue: Str200 | None = None


class TicketOpened(TicketData):
    subject: Annotated[str, Field(max_length=1000)] = ""
    body_text: Text = ""
    priority: Literal["low", "normal", "high", "urgent"] = "normal"


class TicketReplied(TicketData):
    author: Literal["customer", "agent"]
    body_text: Text = ""


class TicketResolved(TicketData):
    resolution: Str200 | None = None


class TicketReopened(TicketData):
    """A resolved ticket is open again (a customer reply to a resolved ticket reopens it too)."""

    reason: Str200 | None = None


# --- profile, identity, consent ----------------------------------------------------------------

class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line1: Str200 | None = None
    line2: Str200 | None = None
    city: Str200 | None = None
    region: Str200 | None = None
    postal_code: Str200 | None = None
    country: Str200 | None = None


def _iso_date(value: object) -> object:
    """A birthday is written YYYY-MM-DD; pydantic would also read "0" or 1e9 as seconds since 1970."""
    if isinstance(value, str) and not (len(value) == 10 and value[4] == value[7] == "-"):
        raise ValueError("a date is written YYYY-MM-DD")
    if not isinstance(value, (str, date)):
        raise ValueError("a date is written YYYY-MM-DD, as a string")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]


PROFILE_TRAITS = ("name", "company", "address", "language", "birthday", "preferred_channel", "preferred_time")
"""The traits a profile update may set; the view keeps each with its provenance."""


class ProfileUpdated(TouchpointData):
    name: Str200 | None = None
    company: Str200 | None = None
    address: Address | None = None
    language: Str200 | None = None
    birthday: IsoDate | None = None
    preferred_channel: Literal["email", "phone", "sms", "wechat", "mail"] | None = Field(
        None, description="how the customer prefers to be contacted")
    preferred_time: Literal["morning", "afternoon", "evening", "any"] | None = Field(
        None, description="when the customer prefers to be contacted")

    @model_validator(mode="after")
    def _something(self) -> "ProfileUpdated":
        if not any(getattr(self, f) is not None for f in PROFILE_TRAITS + ("email", "phone")):
            raise ValueError("a profile update needs at least one trait")
        return self


class IdentityRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["email", "phone", "account_id", "anonymous_id"]
    value: Str200


class IdentityLinked(TouchpointData):
    identifiers: list[IdentityRef] = Field(min_length=2, max_length=10)
    reason: Str200 = "explicit link"
    operator: Str200 | None = None


class IdentityUnlinked(TouchpointData):
    """The identifiers are different people, pairwise: never link them, by any path."""

    identifiers: list[IdentityRef] = Field(min_length=2, max_length=10)
    reason: Str200 = "explicit unlink"
    operator: Str200 | None = None


class ConsentChanged(TouchpointData):
    purpose: Literal["marketing", "analytics", "service", "profiling"] = "marketing"
    channel: Literal["email", "phone", "sms", "web", "mail", "all"] = "all"
    granted: bool


class ErasureRequested(TouchpointData):
    requested_by: Str200 | None = None
    reason: Str200 | None = None


# --- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventType:
    """One declared event type: its name, schema version, data model and where its identities are."""

    name: str
    version: int
    data: type[TouchpointData]
    channel: str
    identity_fields: tuple[tuple[str, str], ...]
    """``(identifier kind, data field)`` in priority order; the first present one keys the event."""

    @property
    def dataschema(self) -> str:
        return f"urn:crm:schema:{self.name}:{self.version}"


_COMMON = (("account_id", "account_id"), ("email", "email"), ("phone", "phone"), ("anonymous_id", "anonymous_id"))


def _t(name: str, data: type[TouchpointData], channel: str, *first: tuple[str, str], version: int = 1) -> EventType:
    return EventType(name, version, data, channel, tuple(first) + _COMMON)


EVENT_TYPES: dict[str, EventType] = {t.name: t for t in (
    _t("email.received", EmailReceived, "email", ("email", "from_address")),
    _t("email.sent", EmailSent, "email", ("email", "to[0]")),
    _t("call.started", CallStarted, "phone", ("phone", "phone_number")),
    _t("call.answered", CallAnswered, "phone", ("phone", "phone_number")),
    _t("call.ended", CallEnded, "phone", ("phone", "phone_number")),
    _t("call.abandoned", CallAbandoned, "phone", ("phone", "phone_number")),
    _t("web.page_viewed", WebPageViewed, "web", ("account_id", "user_id")),
    _t("web.session_started", WebSessionStarted, "web", ("account_id", "user_id")),
    _t("web.identified", WebIdentified, "web", ("account_id", "user_id")),
    _t("web.tracked", WebTracked, "web", ("account_id", "user_id")),
    _t("order.placed", OrderPlaced, "shop"),
    _t("order.paid", OrderPaid, "shop"),
    _t("order.refunded", OrderRefunded, "shop"),
    _t("order.shipped", OrderShipped, "shop"),
    _t("order.delivered", OrderDelivered, "shop"),
    _t("order.cancelled", OrderCancelled, "shop"),
    _t("order.return_requested", OrderReturnRequested, "shop"),
    _t("order.returned", OrderReturned, "shop"),
    _t("order.installation_scheduled", OrderInstallationScheduled, "shop"),
    _t("order.installation_completed", OrderInstallationCompleted, "shop"),
    _t("fax.received", FaxReceived, "fax", ("phone", "from_number")),
    _t("survey.sent", SurveySent, "survey"),
    _t("survey.answered", SurveyAnswered, "survey"),
    _t("ticket.opened", TicketOpened, "ticket"),
    _t("ticket.replied", TicketReplied, "ticket"),
    _t("ticket.resolved", TicketResolved, "ticket"),
    _t("ticket.reopened", TicketReopened, "ticket"),
    _t("profile.updated", ProfileUpdated, "profile"),
    _t("identity.linked", IdentityLinked, "identity"),
    _t("identity.unlinked", IdentityUnlinked, "identity"),
    _t("consent.changed", ConsentChanged, "consent"),
    _t("customer.erasure_requested", ErasureRequested, "privacy"),
)}
