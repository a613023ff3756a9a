"""Webhook signatures as the Standard Webhooks specification has them (https://www.standardwebhooks.com).

Every delivery carries three headers:

* ``webhook-id``: the message id, the same on every retry (the change event's id): dedupe on it;
* ``webhook-timestamp``: when it was sent, in unix seconds;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over ``"{webhook-id}.{webhook-timestamp}.{body}"``,
  keyed with the base64-decoded part of the ``whsec_...`` secret after its prefix. Several
  signatures, separated by spaces, are sent while a rotated-out secret is still valid.

This module needs nothing but the standard library: a receiver may copy it as it is and call
``verify(secret, request.headers, raw_body)`` on the body bytes exactly as received.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Mapping

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(ValueError):
    """The request is not a genuine, fresh delivery."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise WebhookVerificationError("the secret is not whsec_ followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300,
           now: float | None = None) -> dict[str, Any]:
    """Check a delivery's signature and freshness; returns the decoded event.

    Raises ``WebhookVerificationError`` when a header is missing, the timestamp is further than
    ``tolerance_s`` from now (a replayed or delayed request), or no signature matches.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a unix time in seconds") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too far from now")
    expected = sign(secret, msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise WebhookVerificationError("no matching signature")
    return json.loads(body)
