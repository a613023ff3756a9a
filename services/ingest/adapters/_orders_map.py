"""Orders as the shop systems send them, mapped to ``order.*`` CloudEvents (pure: no I/O, no clock).

Three senders: Shopify order webhooks (one fact per topic), WooCommerce order webhooks (the whole
order on every change: the facts are derived from its state) and a generic JSON form for any other
shop system. Every event id is derived from the shop's own ids only, so a re-delivered webhook, or
the same order sent again, gives the same ids and the platform records each fact once.

Each mapper answers a ``Mapped``: the CloudEvents to hand to the collector's ``Intake`` and, for
what it leaves out, the reasons (the webhook is still answered 2xx: a shop platform disables a
webhook whose deliveries keep failing).
"""
from __future__ import annotations

import base64
import html
import hashlib
import hmac
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, ROUND_HALF_UP
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from events.identifiers import InvalidIdentifier, normalize
from events.touchpoints import Currency, LineItem, Money, Str200

MAX_ITEMS = 500
"""``order.placed`` holds at most this many line items; a bigger order keeps its total and says
``items_truncated`` in its properties."""

_CENT = Decimal("0.0001")  # the precision of ``Money``


@dataclass
class Mapped:
    """What one request becomes: CloudEvents to accept, and why anything was left out."""

    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def signature_ok(secret: str, body: bytes, given: str | None) -> bool:
    """True when ``given`` is base64(HMAC-SHA256(body, secret)), as Shopify (``X-Shopify-Hmac-Sha256``)
    and WooCommerce (``X-WC-Webhook-Signature``) sign the raw request body. Constant-time."""
    if not given:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, given.strip().encode("latin-1", "replace"))


# --- shared helpers -----------------------------------------------------------------------------

def _text(value: Any) -> str | None:
    """A non-empty string of a JSON scalar (ids may be numbers), else None."""
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    out = str(value).strip()
    return out or None


def _money(value: Any) -> Decimal | None:
    """A non-negative amount from a JSON string or number, to the precision ``Money`` keeps."""
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite():
        return None
    return abs(amount).quantize(_CENT, rounding=ROUND_HALF_UP)


def _amount(value: Decimal) -> str:
    """Money as a JSON string: to the cent (``"89.99"``, ``"5.00"``), or finer when it is."""
    cents = value.quantize(Decimal("0.01"))
    return format(cents if cents == value else value.normalize(), "f")


def _currency(value: Any) -> str | None:
    code = _text(value)
    return code.upper() if code and len(code) == 3 and code.isalpha() else None


def _quantity(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _first(*values: Any) -> str | None:
    for value in values:
        text = _text(value)
        if text is not None:
            return text
    return None


def _event(source: str, event_id: str, kind: str, time: str | None, data: dict[str, Any]) -> dict[str, Any]:
    event = {"specversion": "1.0", "id": event_id[:256], "source": source, "type": f"order.{kind}",
             "data": {k: v for k, v in data.items() if v is not None}}
    if time:
        event["time"] = time
    return event


def _items(lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The line items that can be recorded (quantity 1 or more), at most MAX_ITEMS; and whether
    any were cut."""
    kept = [line for line in lines if line["quantity"] >= 1]
    return kept[:MAX_ITEMS], len(kept) > MAX_ITEMS


def _phone(raw: Any, country: Any) -> str | None:
    """A phone as E.164 when the address it came with names its country (a shop abroad writes
    national numbers, which the platform's default region would misread); a number that is not
    valid there is left out. Without a country, or already international, it is passed as given."""
    phone, region = _text(raw), _text(country)
    if phone is None or phone.startswith("+") or region is None or len(region) != 2:
        return phone
    try:
        return normalize("phone", phone, region.upper()).value
    except InvalidIdentifier:
        return None


def _has_identity(who: dict[str, Any]) -> bool:
    return any(who.get(k) for k in ("email", "phone", "account_id"))


# --- Shopify ------------------------------------------------------------------------------------

SHOPIFY_ORDER_TOPICS = ("orders/create", "orders/paid", "orders/fulfilled", "orders/partially_fulfilled",
                        "orders/cancelled", "orders/updated")
SHOPIFY_TOPICS = SHOPIFY_ORDER_TOPICS + ("refunds/create",)
"""The topics mapped; every other topic is answered 200 and skipped."""


def shopify_customer(order: dict[str, Any]) -> dict[str, Any]:
    """Who placed a Shopify order: email, phone and ``shopify:<customer id>``."""
    customer, billing, shipping = _obj(order.get("customer")), _obj(order.get("billing_address")), \
        _obj(order.get("shipping_address"))
    home = _obj(customer.get("default_address"))
    country = _first(billing.get("country_code"), shipping.get("country_code"), home.get("country_code"))
    customer_id = _text(customer.get("id"))
    return {
        "email": _first(order.get("email"), order.get("contact_email"), customer.get("email")),
        "phone": _first(_phone(order.get("phone"), country), _phone(customer.get("phone"), country),
                        _phone(billing.get("phone"), billing.get("country_code")),
                        _phone(shipping.get("phone"), shipping.get("country_code"))),
        "account_id": f"shopify:{customer_id}" if customer_id else None,
    }


_SHOPIFY_REFS = (("variant_id", "variant"), ("product_id", "product"), ("id", "line"))


def shopify_line(line: dict[str, Any]) -> dict[str, Any]:
    """One Shopify line item as a ``LineItem``: the SKU, else the variant or product id."""
    sku = _text(line.get("sku")) or next((f"{label}:{ref}" for key, label in _SHOPIFY_REFS
                                          if (ref := _text(line.get(key)))), None)
    title, variant = _text(line.get("title")) or _text(line.get("name")), _text(line.get("variant_title"))
    name = f"{title} - {variant}" if title and variant else title or variant
    return {"sku": (sku or "unknown")[:200], "name": name[:200] if name else None,
            "quantity": _quantity(line.get("quantity")),
            "unit_price": _amount(_money(line.get("price")) or Decimal(0))}


def _shopify_refund(refund: dict[str, Any], order_currency: str | None) -> tuple[Decimal, str | None]:
    """A refund's amount and currency: its successful refund transactions, else the subtotals of
    its refunded line items."""
    paid_back = [t for t in _list(refund.get("transactions")) if isinstance(t, dict) and t.get("kind") == "refund"
                 and t.get("status") in (None, "success")]
    if paid_back:
        amount = sum((_money(t.get("amount")) or Decimal(0) for t in paid_back), Decimal(0))
        return amount, _currency(paid_back[0].get("currency")) or order_currency
    lines = [r for r in _list(refund.get("refund_line_items")) if isinstance(r, dict)]
    amount = sum((_money(r.get("subtotal")) or Decimal(0) for r in lines), Decimal(0))
    currency = next((c for r in lines if (c := _currency(_obj(_obj(r.get("subtotal_set")).get("shop_money"))
                                                         .get("currency_code")))), None)
    return amount, currency or order_currency


class ShopifyOrder:
    """One Shopify order payload (the REST Order resource, as every ``orders/*`` webhook sends it)."""

    def __init__(self, shop: str, order: dict[str, Any]):
        self.shop, self.order = shop, order
        self.order_id = _text(order.get("id"))
        self.source = f"urn:shopify:{shop}"
        self.currency = _currency(order.get("currency"))
        self.who = shopify_customer(order)

    def _id(self, *parts: str) -> str:
        return ":".join(("shopify", self.shop, str(self.order_id), *parts))

    def _data(self, **fields: Any) -> dict[str, Any]:
        props = {"platform": "shopify", "shop": self.shop, "order_name": _text(self.order.get("name")),
                 "order_number": self.order.get("order_number")}
        presentment = _currency(self.order.get("presentment_currency"))
        if presentment and presentment != self.currency:
            props["presentment_currency"] = presentment
        if self.order.get("test") is True:
            props["test"] = True
        return {"order_id": self.order_id, "currency": self.currency, **self.who, **fields,
                "properties": {k: v for k, v in props.items() if v is not None}}

    def placed(self) -> Mapped:
        lines = [shopify_line(line) for line in _list(self.order.get("line_items")) if isinstance(line, dict)]
        items, cut = _items(lines)
        if not items:
            return Mapped(skipped=[f"order {self.order_id} has no line item with a quantity: nothing to record"])
        total = _money(self.order.get("total_price"))
        data = self._data(items=items, total=_amount(total) if total is not None else None)
        if cut:
            data["properties"]["items_truncated"] = len(lines)
        time = _first(self.order.get("processed_at"), self.order.get("created_at"))
        return Mapped([_event(self.source, self._id("placed"), "placed", time, data)])

    def paid(self) -> Mapped:
        amount = _money(self.order.get("total_price"))
        if amount is None:
            return Mapped(skipped=[f"order {self.order_id} has no total_price: nothing to record as paid"])
        gateways = [g for g in (_text(x) for x in _list(self.order.get("payment_gateway_names"))) if g]
        data = self._data(amount=_amount(amount), method=", ".join(gateways)[:200] or None)
        time = _first(self.order.get("updated_at"), self.order.get("processed_at"), self.order.get("created_at"))
        return Mapped([_event(self.source, self._id("paid"), "paid", time, data)])

    def shipped(self) -> Mapped:
        """One ``order.shipped`` per fulfillment (a partial fulfillment is a shipment too)."""
        fulfillments = [f for f in _list(self.order.get("fulfillments"))
                        if isinstance(f, dict) and f.get("status") not in ("cancelled", "error", "failure")]
        out = Mapped()
        for f in fulfillments:
            numbers = [n for n in (_text(x) for x in _list(f.get("tracking_numbers"))) if n]
            data = self._data(carrier=_text(f.get("tracking_company")),
                              tracking_number=_first(f.get("tracking_number"), *numbers))
            fid = _text(f.get("id"))
            out.events.append(_event(self.source, self._id("shipped", fid) if fid else self._id("shipped"),
                                     "shipped", _first(f.get("created_at"), f.get("updated_at")), data))
        if not out.events:  # fulfilled, but the payload lists no fulfillment (Shopify's own sample)
            time = _first(self.order.get("updated_at"), self.order.get("processed_at"))
            out.events.append(_event(self.source, self._id("shipped"), "shipped", time, self._data()))
        out.events += self.delivered().events
        return out

    def delivered(self) -> Mapped:
        """One ``order.delivered`` per fulfillment whose carrier reports it delivered
        (``shipment_status``: Shopify updates it from the carrier's tracking)."""
        out = Mapped()
        for f in _list(self.order.get("fulfillments")):
            if isinstance(f, dict) and f.get("shipment_status") == "delivered":
                fid = _text(f.get("id"))
                numbers = [n for n in (_text(x) for x in _list(f.get("tracking_numbers"))) if n]
                data = self._data(carrier=_text(f.get("tracking_company")),
                                  tracking_number=_first(f.get("tracking_number"), *numbers))
                out.events.append(_event(self.source, self._id("delivered", fid) if fid else self._id("delivered"),
                                         "delivered", _first(f.get("updated_at"), f.get("created_at")), data))
        return out

    def cancellation(self, *, topic: bool) -> Mapped:
        """``order.cancelled`` when the order says it was (``cancelled_at``), or the topic does."""
        at = _text(self.order.get("cancelled_at"))
        if not at and not topic:
            return Mapped()
        time = at or _first(self.order.get("updated_at"), self.order.get("processed_at"))
        return Mapped([_event(self.source, self._id("cancelled"), "cancelled", time,
                              self._data(reason=_text(self.order.get("cancel_reason"))))])

    def refunds(self) -> Mapped:
        """One ``order.refunded`` per refund of the order that gave money back."""
        out = Mapped()
        for refund in _list(self.order.get("refunds")):
            if isinstance(refund, dict):
                mapped = shopify_refund(self.shop, refund, self.currency, self.who)
                out.events += mapped.events
                out.skipped += mapped.skipped
        return out

    def cancelled(self) -> Mapped:
        out = self.refunds()
        out.events = self.cancellation(topic=True).events + out.events
        return out


def shopify_refund(shop: str, refund: dict[str, Any], order_currency: str | None = None,
                   who: dict[str, Any] | None = None) -> Mapped:
    """A Shopify refund (``refunds/create``, or an entry of an order's ``refunds``) as ``order.refunded``."""
    order_id, refund_id = _text(refund.get("order_id")), _text(refund.get("id"))
    if order_id is None or refund_id is None:
        return Mapped(skipped=["the refund has no id or order_id"])
    who = who or shopify_customer(refund)
    amount, currency = _shopify_refund(refund, order_currency)
    if amount <= 0:
        return Mapped(skipped=[f"refund {refund_id} of order {order_id} gave no money back: nothing to record"])
    if currency is None:
        return Mapped(skipped=[f"refund {refund_id} of order {order_id} names no currency: nothing to record"])
    if not _has_identity(who):
        # Shopify's refund payload names the order, not the customer: the refund is recorded from
        # the order's ``refunds`` (orders/updated, orders/cancelled), under the same event id.
        return Mapped(skipped=[f"refund {refund_id} of order {order_id} names no customer; it is recorded from "
                               "the order's refunds when orders/updated or orders/cancelled arrives"])
    data = {"order_id": order_id, "currency": currency, **who, "amount": _amount(amount),
            "reason": (_text(refund.get("note")) or "")[:200] or None,
            "properties": {"platform": "shopify", "shop": shop, "refund_id": refund_id}}
    event_id = f"shopify:{shop}:{order_id}:refunded:{refund_id}"
    return Mapped([_event(f"urn:shopify:{shop}", event_id, "refunded",
                          _first(refund.get("processed_at"), refund.get("created_at")), data)])


def shopify_events(topic: str, shop: str, payload: Any) -> Mapped:
    """The ``order.*`` events of one Shopify webhook (``X-Shopify-Topic``, ``X-Shopify-Shop-Domain``,
    the parsed body). Unmapped topics are skipped with a reason."""
    if topic not in SHOPIFY_TOPICS:
        return Mapped(skipped=[f"topic {topic!r} is not mapped (mapped: {', '.join(SHOPIFY_TOPICS)})"])
    if not isinstance(payload, dict) or _text(payload.get("id")) is None:
        return Mapped(skipped=[f"the {topic} payload is not an object with an id"])
    if topic == "refunds/create":
        return shopify_refund(shop, payload)
    order = ShopifyOrder(shop, payload)
    if order.currency is None:
        return Mapped(skipped=[f"order {order.order_id} names no currency: nothing to record"])
    if not _has_identity(order.who):
        return Mapped(skipped=[f"order {order.order_id} names no customer (no email, phone or customer): "
                               "nothing to record"])
    if topic == "orders/create":
        return order.placed()
    if topic == "orders/paid":
        return order.paid()
    if topic in ("orders/fulfilled", "orders/partially_fulfilled"):
        return order.shipped()
    if topic == "orders/cancelled":
        return order.cancelled()
    # orders/updated: its refunds, a cancellation and carrier-confirmed deliveries are the facts not
    # sent by a topic of their own
    out = order.refunds()
    out.events = order.cancellation(topic=False).events + out.events + order.delivered().events
    if not out.events and not out.skipped:
        out.skipped.append(f"orders/updated of order {order.order_id}: no refund, cancellation or delivery in it; "
                           "placements, payments and shipments come from their own topics")
    return out


# --- WooCommerce --------------------------------------------------------------------------------

WOO_ORDER_TOPICS = ("order.created", "order.updated", "order.restored")
WOO_UNPLACED = ("checkout-draft", "draft", "auto-draft", "trash")
"""Order statuses that are not a placed order (a checkout in progress, a trashed order)."""


def woo_source(header: str | None) -> str | None:
    """The shop's host (and path, for a WordPress in a sub-folder) from ``X-WC-Webhook-Source``
    (``home_url('/')``, e.g. ``https://shop.example.com/``)."""
    text = _text(header)
    if text is None:
        return None
    parts = urlsplit(text if "//" in text else f"//{text}")
    host = (parts.netloc or "").lower()
    return f"{host}{parts.path.rstrip('/')}" if host else None


def _woo_time(value: Any) -> str | None:
    """A WooCommerce ``*_gmt`` time (no offset, UTC) as RFC 3339."""
    text = _text(value)
    if text is None:
        return None
    return text if text.endswith("Z") or "+" in text[10:] else f"{text}Z"


def woo_line(line: dict[str, Any]) -> dict[str, Any]:
    """One WooCommerce line item as a ``LineItem``: the SKU, else the variation or product id."""
    sku = _text(line.get("sku"))
    if sku is None:
        variation, product = _text(line.get("variation_id")), _text(line.get("product_id"))
        sku = (f"variation:{variation}" if variation and variation != "0" else
               f"product:{product}" if product and product != "0" else f"line:{_text(line.get('id'))}")
    quantity = _quantity(line.get("quantity"))
    price = _money(line.get("price"))
    if price is None and quantity > 0:
        subtotal = _money(line.get("subtotal")) or Decimal(0)
        price = (subtotal / quantity).quantize(_CENT, rounding=ROUND_HALF_UP)
    name = html.unescape(_text(line.get("name")) or "") or None  # WooCommerce writes "&ndash;" in names
    return {"sku": sku[:200], "name": name[:200] if name else None, "quantity": quantity,
            "unit_price": _amount(price or Decimal(0))}


def woocommerce_customer(order: dict[str, Any]) -> dict[str, Any]:
    """Who placed a WooCommerce order: the billing email and phone and, for a registered customer,
    ``woo:<customer_id>`` (a guest order has customer_id 0)."""
    billing = _obj(order.get("billing"))
    customer_id = _quantity(order.get("customer_id"))
    return {"email": _text(billing.get("email")), "phone": _phone(billing.get("phone"), billing.get("country")),
            "account_id": f"woo:{customer_id}" if customer_id > 0 else None}


def woocommerce_events(topic: str, host: str, payload: Any) -> Mapped:
    """The ``order.*`` events of one WooCommerce webhook. WooCommerce sends the whole order on each
    change, so every fact its state shows is derived each time (placed; paid once ``date_paid_gmt``
    is set; shipped once completed; one refund per entry of ``refunds``) under ids of the shop's
    own ids: a fact already recorded is recognised, only new facts become new events."""
    if topic not in WOO_ORDER_TOPICS:
        return Mapped(skipped=[f"topic {topic!r} is not mapped (mapped: {', '.join(WOO_ORDER_TOPICS)}; "
                               "a deleted order keeps its recorded history)"])
    if not isinstance(payload, dict) or _text(payload.get("id")) is None:
        return Mapped(skipped=[f"the {topic} payload is not an order object with an id"])
    order_id, status = _text(payload["id"]), _text(payload.get("status")) or ""
    if status in WOO_UNPLACED:
        return Mapped(skipped=[f"order {order_id} is {status!r}: not a placed order"])
    currency = _currency(payload.get("currency"))
    if currency is None:
        return Mapped(skipped=[f"order {order_id} names no currency: nothing to record"])
    who = woocommerce_customer(payload)
    if not _has_identity(who):
        return Mapped(skipped=[f"order {order_id} names no customer (no billing email or phone, a guest): "
                               "nothing to record"])
    source = f"urn:woocommerce:{host}"
    props = {"platform": "woocommerce", "shop": host, "order_number": _text(payload.get("number")),
             "status": status or None}

    def data(**fields: Any) -> dict[str, Any]:
        return {"order_id": order_id, "currency": currency, **who, **fields,
                "properties": {k: v for k, v in props.items() if v is not None}}

    def event_id(*parts: str) -> str:
        return ":".join(("woo", host, order_id, *parts))

    out = Mapped()
    lines = [woo_line(line) for line in _list(payload.get("line_items")) if isinstance(line, dict)]
    items, cut = _items(lines)
    total = _money(payload.get("total"))
    if items:
        placed = data(items=items, total=_amount(total) if total is not None else None)
        if cut:
            placed["properties"]["items_truncated"] = len(lines)
        out.events.append(_event(source, event_id("placed"), "placed", _woo_time(payload.get("date_created_gmt")),
                                 placed))
    else:
        out.skipped.append(f"order {order_id} has no line item with a quantity: no order.placed")
    paid_at = _woo_time(payload.get("date_paid_gmt"))
    if paid_at and total is not None:
        method = _text(payload.get("payment_method_title")) or _text(payload.get("payment_method"))
        out.events.append(_event(source, event_id("paid"), "paid", paid_at,
                                 data(amount=_amount(total), method=method[:200] if method else None)))
    completed_at = _woo_time(payload.get("date_completed_gmt"))
    if status == "completed" or completed_at:
        out.events.append(_event(source, event_id("shipped"), "shipped",
                                 completed_at or _woo_time(payload.get("date_modified_gmt")), data()))
    if status == "cancelled":
        out.events.append(_event(source, event_id("cancelled"), "cancelled",
                                 _woo_time(payload.get("date_modified_gmt")), data()))
    for refund in _list(payload.get("refunds")):
        refund = _obj(refund)
        refund_id, amount = _text(refund.get("id")), _money(refund.get("total"))
        if refund_id is None or not amount:
            continue
        reason = (_text(refund.get("reason")) or "")[:200] or None
        out.events.append(_event(source, event_id("refunded", refund_id), "refunded",
                                 _woo_time(payload.get("date_modified_gmt")),
                                 data(amount=_amount(amount), reason=reason)))
    return out


# --- the generic form ---------------------------------------------------------------------------

class GenericCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    email: Str200 | None = None
    phone: Str200 | None = None
    account_id: Str200 | None = None

    @model_validator(mode="after")
    def _someone(self) -> "GenericCustomer":
        if not (self.email or self.phone or self.account_id):
            raise ValueError("the customer needs an email, phone or account_id")
        return self


class GenericOrder(BaseModel):
    """One fact about an order, from any shop system (POST /v1/hooks/orders)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    order_id: Str200 = Field(min_length=1)
    status: Literal["placed", "paid", "shipped", "delivered", "cancelled", "return_requested", "returned",
                    "refunded", "installation_scheduled", "installation_completed"]
    customer: GenericCustomer
    currency: Currency = "CNY"
    items: list[LineItem] = Field(default_factory=list, max_length=MAX_ITEMS)
    total: Money | None = None
    amount: Money | None = None
    method: Str200 | None = None
    carrier: Str200 | None = None
    tracking_number: Str200 | None = None
    reason: Str200 | None = None
    promised_at: AwareDatetime | None = Field(None, description="shipped, delivered: delivery promised by")
    scheduled_for: AwareDatetime | None = Field(None, description="installation_scheduled: the appointment")
    installer: Str200 | None = None
    at: AwareDatetime | None = Field(None, description="when it happened (RFC 3339 with an offset); "
                                                       "default: when received")
    source: str = Field("shop", pattern=r"^[A-Za-z0-9._-]{1,100}$",
                        description="the shop system's name, e.g. youzan or erp")
    event_id: str | None = Field(None, min_length=1, max_length=200, description=(
        "this fact's own id, to tell apart two refunds or shipments of one order; default "
        "<order_id>:<status>"))
    properties: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> "GenericOrder":
        if self.status == "placed" and not self.items:
            raise ValueError("a placed order needs items (at least one)")
        if self.status == "refunded" and self.amount is None:
            raise ValueError("a refunded order needs amount (the money given back)")
        if self.status == "paid" and self.amount is None and self.total is None:
            raise ValueError("a paid order needs amount (or total)")
        return self


def generic_event(order: GenericOrder) -> dict[str, Any]:
    """The ``order.<status>`` CloudEvent of one generic order fact."""
    data: dict[str, Any] = {"order_id": order.order_id, "currency": order.currency,
                            **order.customer.model_dump(exclude_none=True),
                            "properties": {"platform": order.source, **order.properties}}
    if order.status == "placed":
        data.update(items=[i.model_dump(mode="json", exclude_none=True) for i in order.items],
                    total=str(order.total) if order.total is not None else None)
    elif order.status == "paid":
        data.update(amount=str(order.amount if order.amount is not None else order.total), method=order.method)
    elif order.status in ("shipped", "delivered"):
        data.update(carrier=order.carrier, tracking_number=order.tracking_number,
                    promised_at=order.promised_at.isoformat() if order.promised_at else None)
    elif order.status == "returned":
        data.update(carrier=order.carrier, tracking_number=order.tracking_number)
    elif order.status in ("cancelled", "return_requested"):
        data.update(reason=order.reason)
    elif order.status == "installation_scheduled":
        data.update(scheduled_for=order.scheduled_for.isoformat() if order.scheduled_for else None,
                    installer=order.installer)
    elif order.status == "installation_completed":
        data.update(installer=order.installer)
    else:
        data.update(amount=str(order.amount), reason=order.reason)
    event_id = f"{order.source}:{order.order_id}:{order.event_id or order.status}"
    return _event(f"urn:orders:{order.source}", event_id, order.status,
                  order.at.isoformat() if order.at else None, data)
