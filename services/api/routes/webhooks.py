"""``/v1/webhooks``: subscriptions of downstream systems to the change feed over HTTP, and their
delivery log. The ``crm-webhooks`` dispatchers do the sending (``services/webhooks/``).

Reads go through the read-only pool; the subscription changes and manual retries through the
API's small read-write pool (``WriterDep``), the only tables the API writes.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from events.feed import CHANGE_TYPES, without_personal_data
from projections.customer_state import CONSENT_PURPOSES, NO_CONSENT_NEEDED
from services.api.deps import DatabaseDep, SettingsDep, WriterDep
from services.api.schemas import Problem, RequestBody
from services.api.security import FeedManager
from services.common import audit
from services.common.apikeys import CUSTOMERS_READ, FEED_MANAGE
from services.common.auth import require
from services.common.settings import names
from services.webhooks import addresses, store

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], dependencies=[Depends(require(FEED_MANAGE))])

NOT_FOUND = {404: {"model": Problem, "description": "no such subscription or delivery"}}
Status = Literal["pending", "delivered", "failed", "cancelled"]


# -- request and response models ------------------------------------------------------------------

class SubscriptionIn(RequestBody):
    """A new subscription."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="the endpoint deliveries are POSTed to (http or https)")
    event_types: list[str] | None = Field(
        None, min_length=1, description=f"change types to receive, of: {', '.join(CHANGE_TYPES)}; "
                                        "null or left out: every type")
    segments: list[str] | None = Field(
        None, min_length=1, description="only changes of customers in one of these segments (after the change), "
                                        "or entering or leaving one of them; null or left out: every customer")
    purpose: str = Field(
        NO_CONSENT_NEEDED, description=f"what the receiver uses the changes for, of: {', '.join(CONSENT_PURPOSES)}. "
                                       f"{NO_CONSENT_NEEDED} (the default) needs no consent; for the others only "
                                       "changes whose snapshot consents to the purpose (profile.consent, on at least "
                                       "one channel) are delivered")
    personal_data: bool | None = Field(
        None, description="whether deliveries carry the customer's personal data (display name and traits in "
                          "data.state.profile, the values of profile.changed, merged identifiers). Only a caller "
                          "that may read customers (customers:read) may turn it on; left out: on for such a caller, "
                          "off for others. Off: those values read \"[withheld]\"")
    description: str = Field("", max_length=500)
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("must not be null")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if any(c.isspace() for c in value):
            raise ValueError("must not contain white space")
        try:
            parts.port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(CHANGE_TYPES))
        if unknown:
            raise ValueError(f"unknown change types {', '.join(unknown)}; known: {', '.join(CHANGE_TYPES)}")
        return sorted(set(value))

    @field_validator("segments")
    @classmethod
    def _segments(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if any(not name.strip() or len(name) > 100 for name in value):
            raise ValueError("segment names are 1 to 100 characters")
        return sorted(set(value))

    @field_validator("purpose")
    @classmethod
    def _purpose(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("must not be null")
        if value not in CONSENT_PURPOSES:
            raise ValueError(f"unknown purpose {value!r}; one of {', '.join(CONSENT_PURPOSES)}")
        return value

    @field_validator("description", "enabled")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null")
        return value


class SubscriptionPatch(SubscriptionIn):
    """The fields to change (left out: unchanged; event_types or segments null: no filter)."""

    url: str | None = Field(None, max_length=2048)
    personal_data: bool | None = Field(None, description="turn personal data on (customers:read needed) or off")
    purpose: str | None = Field(None, description="another purpose: a purpose that needs consent cancels the pending "
                                                  "deliveries whose snapshot does not consent to it")
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = Field(None, description="false: the pending deliveries are cancelled; true again: "
                                                   "the changes published from then on are delivered")


class SubscriptionOut(BaseModel):
    id: str
    url: str
    event_types: list[str] | None = Field(description="null: every change type")
    segments: list[str] | None = Field(description="null: no segment filter")
    purpose: str = Field(description="service: no consent needed; marketing, analytics or profiling: only changes "
                                     "whose snapshot consents to it")
    personal_data: bool = Field(description="whether deliveries carry personal data (false: it reads [withheld])")
    description: str
    enabled: bool
    disabled_reason: str | None = Field(description="why the dispatcher disabled it (the endpoint answered 410 Gone)")
    created_at: datetime
    updated_at: datetime


class SubscriptionCreated(SubscriptionOut):
    secret: str = Field(description="whsec_...: verifies the signatures; shown only in this answer "
                                    "(POST .../rotate-secret makes a new one)")


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    previous_valid_s: float | None = Field(
        None, ge=0, le=7 * 24 * 3600,
        description="how long the old secret still signs beside the new one (0: stop now); default "
                    "CRM_WEBHOOKS_PREVIOUS_SECRET_S (a day)")


class SecretOut(BaseModel):
    id: str
    secret: str = Field(description="the new secret; shown only in this answer")
    previous_secret_valid_until: datetime = Field(description="until then deliveries carry a signature with the "
                                                              "old secret, too")


class AttemptOut(BaseModel):
    attempt: int = Field(description="1 for the first")
    started_at: datetime
    duration_ms: float
    status_code: int | None = Field(description="the receiver's HTTP status; null without an answer")
    error: str | None = Field(description="null: delivered; else what went wrong (HTTP status, timeout, "
                                          "connection error)")
    response: str | None = Field(description="always null: the receiver's answer is not kept (the delivery log is "
                                             "no window onto what an endpoint says)")
    dispatcher: str = Field(description="the dispatcher process that made the attempt")


class DeliveryOut(BaseModel):
    id: int
    subscription_id: str
    event_id: str = Field(description="the change event's id, sent as webhook-id")
    event_type: str
    customer_id: str
    sequence: int | None
    status: Status
    attempt_count: int
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None


class DeliveryDetail(DeliveryOut):
    event: dict[str, Any] = Field(description="the CloudEvent as stored (personal data sealed); to a caller without "
                                              "customers:read its personal values read [withheld]")
    attempts: list[AttemptOut] = Field(description="every attempt, oldest first")


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next (older) page; null at the end")


# -- routes ---------------------------------------------------------------------------------------

def _missing(subscription_id: str) -> HTTPException:
    return HTTPException(404, f"no webhook subscription {subscription_id!r}")


def _may_read_personal_data(caller) -> bool:
    return caller.allows(CUSTOMERS_READ)


def _refuse_personal_data(caller) -> HTTPException:
    return HTTPException(403, f"API key {caller.key.prefix} lacks the scope {CUSTOMERS_READ}: only a caller that may "
                              "read customers may send their personal data to a webhook (personal_data: true)")


def _check_url(url: str, settings) -> None:
    """The URL's host must be, and resolve to, a public address (``services/webhooks/addresses.py``)."""
    try:
        addresses.check_url(url, names(settings.webhooks_allowed_hosts))
    except addresses.AddressRefused as exc:
        raise HTTPException(400, f"url: {exc}") from None


@router.post("", status_code=201, response_model=SubscriptionCreated,
             responses={400: {"model": Problem}, 403: {"model": Problem}, 422: {"model": Problem}})
def create_subscription(body: SubscriptionIn, writer: WriterDep, settings: SettingsDep,
                        caller: FeedManager) -> dict[str, Any]:
    """Subscribe an endpoint to the change feed. The answer carries the signing secret, once."""
    personal = _may_read_personal_data(caller) if body.personal_data is None else body.personal_data
    if personal and not _may_read_personal_data(caller):
        raise _refuse_personal_data(caller)
    _check_url(body.url, settings)
    with writer.transaction() as cur:
        created = store.create_subscription(cur, url=body.url, event_types=body.event_types, segments=body.segments,
                                            description=body.description, enabled=body.enabled,
                                            purpose=body.purpose, personal_data=personal)
        audit.record(cur, caller, "webhook.create", created["id"], {
            "url": body.url, "event_types": body.event_types, "segments": body.segments, "enabled": body.enabled,
            "purpose": body.purpose, "personal_data": personal})
        return created


@router.get("", response_model=SubscriptionList)
def list_subscriptions(db: DatabaseDep) -> SubscriptionList:
    """Every subscription, oldest first (without secrets)."""
    with db.cursor() as cur:
        return SubscriptionList(items=store.list_subscriptions(cur))


@router.get("/{subscription_id}", response_model=SubscriptionOut, responses=NOT_FOUND)
def get_subscription(subscription_id: str, db: DatabaseDep) -> dict[str, Any]:
    with db.cursor() as cur:
        found = store.get_subscription(cur, subscription_id)
    if found is None:
        raise _missing(subscription_id)
    return found


@router.patch("/{subscription_id}", response_model=SubscriptionOut,
               responses={**NOT_FOUND, 400: {"model": Problem}, 403: {"model": Problem}})
def update_subscription(subscription_id: str, body: SubscriptionPatch, writer: WriterDep, settings: SettingsDep,
                        caller: FeedManager) -> dict[str, Any]:
    """Change the URL, filters, personal data, description, or enable or disable the subscription."""
    changes = body.model_dump(include=body.model_fields_set)
    if not changes:
        raise HTTPException(400, "nothing to change: give url, event_types, segments, purpose, personal_data, "
                                 "description or enabled")
    if "personal_data" in changes and changes["personal_data"] is None:
        raise HTTPException(400, "personal_data: true or false, not null")
    if "url" in changes:
        _check_url(changes["url"], settings)
    with writer.transaction() as cur:
        current = store.get_subscription(cur, subscription_id)
        if current is None:
            raise _missing(subscription_id)
        # a caller who may not read personal data may neither turn it on nor send it elsewhere
        carries = changes.get("personal_data", current["personal_data"])
        if carries and not _may_read_personal_data(caller) and (changes.get("personal_data") or "url" in changes):
            raise _refuse_personal_data(caller)
        updated = store.update_subscription(cur, subscription_id, changes)
        if updated is not None:
            audit.record(cur, caller, "webhook.update", subscription_id, {"changes": changes})
    if updated is None:
        raise _missing(subscription_id)
    return updated


@router.delete("/{subscription_id}", status_code=204, responses=NOT_FOUND)
def delete_subscription(subscription_id: str, writer: WriterDep, caller: FeedManager) -> Response:
    """Delete the subscription and its delivery log; its pending deliveries are not sent."""
    with writer.transaction() as cur:
        if not store.delete_subscription(cur, subscription_id):
            raise _missing(subscription_id)
        audit.record(cur, caller, "webhook.delete", subscription_id)
    return Response(status_code=204)


@router.post("/{subscription_id}/rotate-secret", response_model=SecretOut, responses=NOT_FOUND)
def rotate_secret(subscription_id: str, writer: WriterDep, settings: SettingsDep, caller: FeedManager,
                  body: RotateIn | None = None) -> dict[str, Any]:
    """A new signing secret. The old one keeps signing beside it for a while (each delivery then
    carries two signatures), so receivers can switch without losing a delivery."""
    keep = body.previous_valid_s if body and body.previous_valid_s is not None else settings.webhooks_previous_secret_s
    with writer.transaction() as cur:
        rotated = store.rotate_secret(cur, subscription_id, keep)
        if rotated is not None:  # never the secret itself
            audit.record(cur, caller, "webhook.rotate_secret", subscription_id, {"previous_valid_s": keep})
    if rotated is None:
        raise _missing(subscription_id)
    return {"id": rotated["id"], "secret": rotated["secret"],
            "previous_secret_valid_until": rotated["previous_secret_until"]}


@router.get("/{subscription_id}/deliveries", response_model=DeliveryList,
            responses={**NOT_FOUND, 400: {"model": Problem}})
def list_deliveries(
    subscription_id: str, db: DatabaseDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> DeliveryList:
    """The delivery log, newest first."""
    try:
        before = int(cursor) if cursor is not None else None
    except ValueError:
        raise HTTPException(400, "invalid cursor; use the next_cursor of a previous page") from None
    with db.cursor() as cur:
        if store.get_subscription(cur, subscription_id) is None:
            raise _missing(subscription_id)
        rows = store.list_deliveries(cur, subscription_id, status=status, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryList(items=rows, next_cursor=str(rows[-1]["id"]) if more else None)


@router.get("/{subscription_id}/deliveries/{delivery_id}", response_model=DeliveryDetail, responses=NOT_FOUND)
def get_delivery(subscription_id: str, delivery_id: int, db: DatabaseDep, writer: WriterDep,
                 caller: FeedManager) -> dict[str, Any]:
    """One delivery: the event sent and every attempt (time, HTTP status, error, duration). The
    event's personal values read ``[withheld]`` unless the caller may read customers (audited)."""
    with db.cursor() as cur:
        found = store.get_delivery(cur, subscription_id, delivery_id)
    if found is None:
        raise HTTPException(404, f"no delivery {delivery_id} of webhook subscription {subscription_id!r}")
    event = orjson.loads(found.pop("body"))
    if not _may_read_personal_data(caller):
        return {**found, "event": without_personal_data(event)}
    with writer.transaction() as cur:  # a read of a customer's data like GET /v1/customers/{id}
        audit.record(cur, caller, "webhook.delivery_read", found["customer_id"],
                     {"subscription_id": subscription_id, "delivery_id": delivery_id})
    return {**found, "event": event}


@router.post("/{subscription_id}/deliveries/{delivery_id}/retry", status_code=202, response_model=DeliveryOut,
             responses={**NOT_FOUND, 409: {"model": Problem}})
def retry_delivery(subscription_id: str, delivery_id: int, writer: WriterDep, caller: FeedManager) -> dict[str, Any]:
    """Queue a failed (or cancelled) delivery again, with a fresh retry schedule."""
    with writer.transaction() as cur:
        subscription = store.get_subscription(cur, subscription_id)
        if subscription is None:
            raise _missing(subscription_id)
        found = store.get_delivery(cur, subscription_id, delivery_id)
        if found is None:
            raise HTTPException(404, f"no delivery {delivery_id} of webhook subscription {subscription_id!r}")
        if found["status"] not in store.RETRYABLE:
            raise HTTPException(409, f"delivery {delivery_id} is {found['status']}: only failed or cancelled "
                                     "deliveries are retried")
        if not subscription["enabled"]:
            raise HTTPException(409, f"webhook subscription {subscription_id!r} is disabled; enable it first "
                                     "(PATCH with enabled: true)")
        store.requeue(cur, delivery_id)
        audit.record(cur, caller, "webhook.retry_delivery", subscription_id, {"delivery_id": delivery_id})
        return store.get_delivery(cur, subscription_id, delivery_id)
