"""The orders channel: Shopify and WooCommerce order webhooks, and a generic JSON form for any other
shop system, as ``order.placed`` / ``order.paid`` / ``order.shipped`` / ``order.refunded``.

* ``POST /v1/hooks/shopify``: authenticated by ``X-Shopify-Hmac-Sha256`` (the app's client secret,
  ``CRM_SHOPIFY_WEBHOOK_SECRET``).
* ``POST /v1/hooks/woocommerce``: authenticated by ``X-WC-Webhook-Signature`` (the webhook's secret,
  ``CRM_WOOCOMMERCE_WEBHOOK_SECRET``); WooCommerce's unsigned ping on saving a webhook gets 200.
* ``POST /v1/hooks/orders``: an API key with ``events:write``.

The signature is checked on the raw body before it is parsed. A webhook the mapping leaves out (a
topic not mapped, an order naming no customer) is answered 200 with the reason: Shopify and
WooCommerce disable a webhook whose deliveries keep failing. The mapping is in ``_orders_map``;
docs/adapters/orders.md is the user's guide.
"""
from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from services.common.apikeys import EVENTS_WRITE
from services.common.auth import Caller, require_secret
from services.common.settings import Settings
from services.ingest.adapters._orders_map import (GenericOrder, Mapped, generic_event, shopify_events,
                                                  signature_ok, woo_source, woocommerce_events)
from services.ingest.intake import ADAPTER_REQUESTS, Intake, read_body

log = logging.getLogger(__name__)

SHOPIFY, WOOCOMMERCE, GENERIC = "/v1/hooks/shopify", "/v1/hooks/woocommerce", "/v1/hooks/orders"
OPEN_ROUTES = frozenset({f"POST {SHOPIFY}", f"POST {WOOCOMMERCE}"})
"""The webhooks authenticate themselves by the platforms' HMAC signatures."""

_WOO_PING = re.compile(rb"^webhook_id=\d+$")
_SHOP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")


def _refuse(adapter: str, status: int, message: str, **extra: Any) -> JSONResponse:
    ADAPTER_REQUESTS.labels(adapter, str(status)).inc()
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _read_signed(request: Request, intake: Intake, adapter: str, secret, setting: str,
                       header: str, allow_ping: bool = False) -> bytes | Response:
    """The raw body when the platform's signature in ``header`` is right, else the refusal (404 not
    configured, 413 too big, 401 bad signature). ``allow_ping``: WooCommerce checks a new webhook's
    URL with an unsigned form post, ``webhook_id=<id>``, and saves the webhook only on a 200; it
    carries nothing, so it is answered without a signature."""
    if secret is None or not secret.get_secret_value():
        return _refuse(adapter, 404, f"the {adapter} webhook is not configured: set {setting} to the secret "
                                     f"the shop signs its webhooks with")
    body = await read_body(request, intake.settings.max_batch_bytes)
    if body is None:
        return _refuse(adapter, 413, f"request body is over the limit of {intake.settings.max_batch_bytes} bytes")
    given = request.headers.get(header)
    if allow_ping and given is None and _WOO_PING.match(body.strip()):
        ADAPTER_REQUESTS.labels(adapter, "200").inc()
        return JSONResponse({"ping": "ok", "webhook_id": int(body.strip().split(b"=")[1])})
    if not signature_ok(secret.get_secret_value(), body, given):
        return _refuse(adapter, 401, f"bad or missing {header}: it must be base64(HMAC-SHA256(raw body, secret)) "
                                     f"with the secret in {setting}")
    return body


async def _deliver(intake: Intake, adapter: str, mapped: Mapped, **extra: Any) -> Response:
    """Accept the mapped events: 200 with what was accepted and skipped; a refusal of the
    collector (400 naming the fields, 413, 429, 503 with Retry-After) passes through."""
    if not mapped.events:
        ADAPTER_REQUESTS.labels(adapter, "200").inc()
        return JSONResponse({"accepted": [], "skipped": mapped.skipped, **extra})
    outcome = await intake.accept(None, mapped.events, adapter=adapter)
    if not outcome.durable:
        return outcome.response(skipped=mapped.skipped, **extra)
    return JSONResponse({**outcome.body(), "skipped": mapped.skipped, **extra})


def _parse(body: bytes) -> tuple[Any, str | None]:
    """The decoded JSON body, or the reason it is not JSON."""
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc}"


def install(app: FastAPI, intake: Intake, settings: Settings) -> None:
    """Add the Shopify, WooCommerce and generic order routes."""

    @app.post(SHOPIFY, tags=["channel adapters"], summary="Shopify order webhooks", responses={
        200: {"description": "accepted (durable) and skipped facts, with reasons"},
        401: {"description": "bad or missing X-Shopify-Hmac-Sha256"},
        404: {"description": "CRM_SHOPIFY_WEBHOOK_SECRET is not set"}})
    async def shopify(request: Request) -> Response:
        body = await _read_signed(request, intake, "shopify", settings.shopify_webhook_secret,
                                  "CRM_SHOPIFY_WEBHOOK_SECRET", "X-Shopify-Hmac-Sha256")
        if isinstance(body, Response):
            return body
        topic = (request.headers.get("X-Shopify-Topic") or "").strip()
        shop = (request.headers.get("X-Shopify-Shop-Domain") or "").strip().lower()
        if not topic:
            return _refuse("shopify", 400, "missing X-Shopify-Topic header")
        if not _SHOP.match(shop):
            return _refuse("shopify", 400, "missing or malformed X-Shopify-Shop-Domain header "
                                           "(e.g. my-shop.myshopify.com)")
        payload, malformed = _parse(body)
        if malformed:
            return _refuse("shopify", 400, malformed)
        mapped = shopify_events(topic, shop, payload)
        log.info("shopify webhook", extra={"topic": topic, "shop": shop, "events": len(mapped.events),
                                           "webhook_id": request.headers.get("X-Shopify-Webhook-Id"),
                                           "skipped": mapped.skipped})
        return await _deliver(intake, "shopify", mapped, topic=topic)

    @app.post(WOOCOMMERCE, tags=["channel adapters"], summary="WooCommerce order webhooks", responses={
        200: {"description": "accepted (durable) and skipped facts, with reasons; or the ping answered"},
        401: {"description": "bad or missing X-WC-Webhook-Signature"},
        404: {"description": "CRM_WOOCOMMERCE_WEBHOOK_SECRET is not set"}})
    async def woocommerce(request: Request) -> Response:
        body = await _read_signed(request, intake, "woocommerce", settings.woocommerce_webhook_secret,
                                  "CRM_WOOCOMMERCE_WEBHOOK_SECRET", "X-WC-Webhook-Signature", allow_ping=True)
        if isinstance(body, Response):
            return body
        topic = (request.headers.get("X-WC-Webhook-Topic") or "").strip()
        host = woo_source(request.headers.get("X-WC-Webhook-Source"))
        if not topic:
            return _refuse("woocommerce", 400, "missing X-WC-Webhook-Topic header")
        if host is None:
            return _refuse("woocommerce", 400, "missing or malformed X-WC-Webhook-Source header "
                                               "(the shop's URL, e.g. https://shop.example.com/)")
        payload, malformed = _parse(body)
        if malformed:
            return _refuse("woocommerce", 400, malformed)
        mapped = woocommerce_events(topic, host, payload)
        log.info("woocommerce webhook", extra={"topic": topic, "shop": host, "events": len(mapped.events),
                                               "delivery_id": request.headers.get("X-WC-Webhook-Delivery-ID"),
                                               "skipped": mapped.skipped})
        return await _deliver(intake, "woocommerce", mapped, topic=topic)

    @app.post(GENERIC, tags=["channel adapters"], summary="Orders from any shop system", status_code=202,
              responses={202: {"description": "the order facts are durable"},
                         400: {"description": "not JSON, or no order fact the platform accepts (each rejected "
                                              "with its reasons)"},
                         413: {"description": "the request is over the size limit"},
                         422: {"description": "a field of the form is missing or wrong; nothing accepted"}})
    async def generic(request: Request,
                      caller: Annotated[Caller, Depends(require_secret(EVENTS_WRITE))]) -> Response:
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:
            return _refuse("orders", 413, f"request body is over the limit of {settings.max_batch_bytes} bytes")
        payload, malformed = _parse(body)
        if malformed:
            return _refuse("orders", 400, malformed)
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            return _refuse("orders", 400, "the body must be an order object or a non-empty array of them")
        orders, problems = [], []
        for index, item in enumerate(items):
            try:
                orders.append(GenericOrder.model_validate(item))
            except ValidationError as exc:
                problems += [{"index": index, "field": ".".join(str(p) for p in e["loc"]) or "(order)",
                              "message": e["msg"]} for e in exc.errors(include_url=False)]
        if problems:
            first = problems[0]
            return _refuse("orders", 422, f"invalid order: {first['field']}: {first['message']}"
                                          + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                           detail=problems)
        outcome = await intake.accept(caller, [generic_event(o) for o in orders], single=single, adapter="orders")
        return outcome.response()
