"""Webhook subscriptions and deliveries in PostgreSQL (migration ``005_webhooks.sql``).

The query API manages the subscriptions and reads the delivery log; the ``crm-webhooks``
dispatchers enqueue deliveries (in the transaction that stores their Kafka positions), claim the
due ones and record every attempt.

Claims are leases: a dispatcher marks the deliveries it is about to send with a token and a
deadline past its request timeout, and records the outcome only while it still holds them. Claims
are serialized by an advisory lock, so the per-subscription limit on deliveries in flight holds
across dispatcher processes, and no delivery is sent by two dispatchers at once; one whose
dispatcher died is sent again once the lease has run out.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg2.extras import execute_values

from services.common.db import lock_id
from services.webhooks.filters import Filter, consents
from services.webhooks.verify import new_secret

STATUSES = ("pending", "delivered", "failed", "cancelled")
RETRYABLE = ("failed", "cancelled")
_CLAIM_LOCK = lock_id("crm-webhooks-claim")

SUBSCRIPTION = ("id", "url", "event_types", "segments", "purpose", "personal_data", "description", "enabled",
                "disabled_reason", "created_at", "updated_at")
_SUBSCRIPTION_COLUMNS = ", ".join(SUBSCRIPTION)
_DELIVERY_COLUMNS = """d.id, d.subscription_id, d.event_id, e.type AS event_type, e.customer_id, e.sequence,
    d.status, d.attempts AS attempt_count, CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
    d.last_status_code, d.last_error, d.created_at, d.updated_at, d.delivered_at"""


def _dicts(cur) -> list[dict[str, Any]]:
    names = [c.name for c in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _one(cur) -> dict[str, Any] | None:
    rows = _dicts(cur)
    return rows[0] if rows else None


# -- subscriptions (the API) ----------------------------------------------------------------------

def create_subscription(cur, *, url: str, event_types: list[str] | None, segments: list[str] | None,
                        description: str, enabled: bool, purpose: str = "service",
                        personal_data: bool = False) -> dict[str, Any]:
    """A new subscription with a fresh secret; the only answer that carries the secret."""
    cur.execute(f"""INSERT INTO webhook_subscription (id, url, event_types, segments, purpose, personal_data,
                                                      description, enabled, secret)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_SUBSCRIPTION_COLUMNS}, secret""",
                ("wh_" + uuid.uuid4().hex, url, event_types, segments, purpose, personal_data, description, enabled,
                 new_secret()))
    return _one(cur)


def list_subscriptions(cur) -> list[dict[str, Any]]:
    cur.execute(f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscription ORDER BY created_at, id")
    return _dicts(cur)


def get_subscription(cur, subscription_id: str) -> dict[str, Any] | None:
    cur.execute(f"SELECT {_SUBSCRIPTION_COLUMNS} FROM webhook_subscription WHERE id = %s", (subscription_id,))
    return _one(cur)


def update_subscription(cur, subscription_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Change some of url, event_types, segments, purpose, personal_data, description, enabled. Disabling cancels
    the deliveries still pending; enabling again matches the changes published from then on; a
    purpose that needs consent cancels the pending deliveries whose snapshot does not consent."""
    allowed = {"url", "event_types", "segments", "purpose", "personal_data", "description", "enabled"}
    assert set(changes) <= allowed, set(changes) - allowed
    sets = [f"{name} = %({name})s" for name in changes]
    if changes.get("enabled") is True:
        sets += ["disabled_reason = NULL",
                 "active_since = CASE WHEN enabled THEN active_since ELSE now() END"]
    cur.execute(f"""UPDATE webhook_subscription SET {', '.join([*sets, 'updated_at = now()'])}
                    WHERE id = %(id)s RETURNING {_SUBSCRIPTION_COLUMNS}""", {**changes, "id": subscription_id})
    updated = _one(cur)
    if updated is not None and changes.get("enabled") is False:
        cancel_pending(cur, subscription_id, "cancelled: the subscription was disabled")
    if updated is not None and "purpose" in changes:
        _cancel_unconsented(cur, subscription_id, changes["purpose"])
    return updated


def _cancel_unconsented(cur, subscription_id: str, purpose: str) -> int:
    """Cancel the pending deliveries of a subscription whose snapshot does not consent to ``purpose``."""
    cur.execute("""SELECT d.id, e.type, e.body FROM webhook_delivery d JOIN webhook_event e USING (event_id)
                   WHERE d.subscription_id = %s AND d.status = 'pending'""", (subscription_id,))
    flt = Filter(purpose=purpose)
    refused = []
    for delivery_id, change_type, body in cur.fetchall():
        data = orjson.loads(bytes(body)).get("data")
        if not consents(flt, change_type, data if isinstance(data, dict) else {}):
            refused.append(delivery_id)
    if not refused:
        return 0
    cur.execute("""UPDATE webhook_delivery SET status = 'cancelled', last_error = %s, updated_at = now()
                   WHERE id = ANY(%s) AND status = 'pending'""",
                (f"cancelled: the customer does not consent to {purpose}", refused))
    return cur.rowcount


def withhold(cur, withheld: list[tuple[str, str, int | None, str]]) -> int:
    """Cancel what is still pending for ``(subscription_id, customer_id, sequence, purpose)``: a
    change of that sequence says the customer does not (any more) consent to the subscription's
    purpose, so nothing older about the customer is sent to it (None: no sequence, all of them)."""
    if not withheld:
        return 0
    cur.execute("""UPDATE webhook_delivery d SET status = 'cancelled', updated_at = now(),
                       last_error = 'cancelled: the customer does not consent to ' || w.purpose
                   FROM webhook_event e,
                        unnest(%s::text[], %s::text[], %s::bigint[], %s::text[]) AS w (sid, cid, seq, purpose)
                   WHERE d.event_id = e.event_id AND d.status = 'pending' AND d.subscription_id = w.sid
                     AND e.customer_id = w.cid AND (w.seq IS NULL OR e.sequence IS NULL OR e.sequence < w.seq)""",
                tuple(map(list, zip(*withheld))))
    return cur.rowcount


def delete_subscription(cur, subscription_id: str) -> bool:
    """Delete a subscription with its delivery log (pending deliveries stop)."""
    cur.execute("DELETE FROM webhook_subscription WHERE id = %s", (subscription_id,))
    return cur.rowcount == 1


def rotate_secret(cur, subscription_id: str, previous_valid_s: float) -> dict[str, Any] | None:
    """A new secret; the old one keeps signing (beside the new) for ``previous_valid_s`` seconds."""
    cur.execute("""UPDATE webhook_subscription
                   SET previous_secret = secret, previous_secret_until = now() + %s * interval '1 second',
                       secret = %s, updated_at = now()
                   WHERE id = %s RETURNING id, secret, previous_secret_until""",
                (previous_valid_s, new_secret(), subscription_id))
    return _one(cur)


def cancel_pending(cur, subscription_id: str, reason: str) -> int:
    cur.execute("""UPDATE webhook_delivery SET status = 'cancelled', last_error = %s, updated_at = now()
                   WHERE subscription_id = %s AND status = 'pending'""", (reason, subscription_id))
    return cur.rowcount


# -- the delivery log (the API) -------------------------------------------------------------------

def list_deliveries(cur, subscription_id: str, *, status: str | None, before: int | None,
                    limit: int) -> list[dict[str, Any]]:
    """Deliveries of a subscription, newest first, below the id ``before``."""
    cur.execute(f"""SELECT {_DELIVERY_COLUMNS} FROM webhook_delivery d JOIN webhook_event e USING (event_id)
                    WHERE d.subscription_id = %s AND (%s::text IS NULL OR d.status = %s)
                      AND (%s::bigint IS NULL OR d.id < %s)
                    ORDER BY d.id DESC LIMIT %s""",
                (subscription_id, status, status, before, before, limit))
    return _dicts(cur)


def get_delivery(cur, subscription_id: str, delivery_id: int) -> dict[str, Any] | None:
    """One delivery with the event sent and every attempt, oldest first."""
    cur.execute(f"""SELECT {_DELIVERY_COLUMNS}, e.body FROM webhook_delivery d JOIN webhook_event e USING (event_id)
                    WHERE d.subscription_id = %s AND d.id = %s""", (subscription_id, delivery_id))
    delivery = _one(cur)
    if delivery is None:
        return None
    delivery["body"] = bytes(delivery["body"])
    # the receiver's answer is not shown (attempts recorded before it stopped being kept included):
    # an endpoint's body is no business of the delivery log's readers
    cur.execute("""SELECT attempt, started_at, duration_ms, status_code, error, NULL AS response, dispatcher
                   FROM webhook_attempt WHERE delivery_id = %s ORDER BY id""", (delivery_id,))
    delivery["attempts"] = _dicts(cur)
    return delivery


def requeue(cur, delivery_id: int) -> bool:
    """Queue a failed or cancelled delivery again, with a fresh retry schedule."""
    cur.execute("""UPDATE webhook_delivery SET status = 'pending', tries = 0, next_attempt_at = now(), updated_at = now()
                   WHERE id = %s AND status = ANY(%s)""", (delivery_id, list(RETRYABLE)))
    return cur.rowcount == 1


# -- the dispatchers ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    """An enabled subscription as the enqueuer sees it."""

    id: str
    filter: Filter
    active_since_ms: int


def targets(cur) -> list[Target]:
    """The enabled subscriptions and their filters."""
    cur.execute("""SELECT id, event_types, segments, purpose, (extract(epoch FROM active_since) * 1000)::bigint
                   FROM webhook_subscription WHERE enabled ORDER BY id""")
    return [Target(sid, Filter(frozenset(types) if types is not None else None,
                               frozenset(segments) if segments is not None else None, purpose), since)
            for sid, types, segments, purpose, since in cur.fetchall()]


def earliest_active_ms(cur) -> int | None:
    """From when on (unix ms) any enabled subscription takes changes: where a dispatcher without
    stored positions starts reading."""
    cur.execute("SELECT (extract(epoch FROM min(active_since)) * 1000)::bigint FROM webhook_subscription WHERE enabled")
    return cur.fetchone()[0]


def enqueue(cur, events: list[tuple[str, str, str, int | None, bytes, int]],
            deliveries: list[tuple[str, str]]) -> int:
    """Store the matched events ``(event_id, type, customer_id, sequence, body, published_ms)`` and
    the deliveries ``(subscription_id, event_id)``; returns how many deliveries are new."""
    if not deliveries:
        return 0
    execute_values(cur, """INSERT INTO webhook_event (event_id, type, customer_id, sequence, body, published_at)
                           VALUES %s ON CONFLICT DO NOTHING""", events,
                   template="(%s, %s, %s, %s, %s, to_timestamp(%s / 1000.0))")
    new = execute_values(cur, """INSERT INTO webhook_delivery (subscription_id, event_id) VALUES %s
                                 ON CONFLICT DO NOTHING RETURNING id""", deliveries, fetch=True)
    return len(new)


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery leased to one dispatcher for one attempt."""

    id: int
    subscription_id: str
    event_id: str
    attempt: int  # the number of this attempt, from 1
    tries: int  # failed attempts so far in the current retry schedule
    body: bytes
    url: str
    secrets: tuple[str, ...]  # the current secret, and a rotated-out one still valid
    token: str
    personal_data: bool = False  # whether the subscription may receive the personal data in the change


def claim(cur, *, lease_s: float, per_subscription: int, limit: int) -> list[Claim]:
    """Lease up to ``limit`` due deliveries, oldest due first, no subscription having more than
    ``per_subscription`` in flight (counting every dispatcher's)."""
    if limit < 1:
        return []
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CLAIM_LOCK,))
    cur.execute("""
        SELECT due.id FROM webhook_subscription s
        CROSS JOIN LATERAL (SELECT count(*) AS n FROM webhook_delivery b
                            WHERE b.subscription_id = s.id AND b.lease_token IS NOT NULL
                              AND b.lease_until > now()) busy
        CROSS JOIN LATERAL (SELECT d.id, d.next_attempt_at FROM webhook_delivery d
                            WHERE d.subscription_id = s.id AND d.status = 'pending' AND d.next_attempt_at <= now()
                              AND (d.lease_until IS NULL OR d.lease_until <= now())
                            ORDER BY d.next_attempt_at, d.id
                            LIMIT GREATEST(%s - busy.n, 0)) due
        WHERE s.enabled ORDER BY due.next_attempt_at, due.id LIMIT %s""", (per_subscription, limit))
    ids = [r[0] for r in cur.fetchall()]
    if not ids:
        return []
    token = str(uuid.uuid4())
    cur.execute("""
        UPDATE webhook_delivery d SET lease_token = %s, lease_until = now() + %s * interval '1 second'
        FROM webhook_event e, webhook_subscription s
        WHERE d.id = ANY(%s) AND e.event_id = d.event_id AND s.id = d.subscription_id
        RETURNING d.id, d.subscription_id, d.event_id, d.attempts + 1, d.tries, e.body, s.url, s.secret,
                  CASE WHEN s.previous_secret_until > now() THEN s.previous_secret END, s.personal_data""",
                (token, lease_s, ids))
    claims = [Claim(did, sid, eid, attempt, tries, bytes(body), url, (secret, *([previous] if previous else [])), token,
                    personal)
              for did, sid, eid, attempt, tries, body, url, secret, previous, personal in cur.fetchall()]
    return sorted(claims, key=lambda c: c.id)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to."""

    started_at: float  # unix time
    duration_ms: float
    status_code: int | None
    error: str | None  # None: delivered
    response: str | None
    retry_in_s: float | None  # None: no further attempt (delivered, or the last one failed)
    gone: bool = False  # the receiver answered 410 Gone: the subscription is disabled


def finish(cur, item: Claim, outcome: Outcome, dispatcher: str) -> bool:
    """Record an attempt and move its delivery on: delivered, pending again (retry), failed, or
    cancelled when its subscription was disabled meanwhile. Returns False when the lease was lost
    (the attempt is recorded all the same, the delivery left to its new holder)."""
    cur.execute("""INSERT INTO webhook_attempt (delivery_id, attempt, started_at, duration_ms, status_code, error,
                                                response, dispatcher)
                   SELECT id, %s, to_timestamp(%s), %s, %s, %s, %s, %s FROM webhook_delivery WHERE id = %s""",
                (item.attempt, outcome.started_at, outcome.duration_ms, outcome.status_code, outcome.error,
                 outcome.response, dispatcher, item.id))
    if outcome.error is None:
        status = "'delivered'"
    elif outcome.retry_in_s is None:
        status = "'failed'"
    else:
        status = "CASE WHEN d.status = 'cancelled' OR NOT s.enabled THEN 'cancelled' ELSE 'pending' END"
    cur.execute(f"""
        UPDATE webhook_delivery d SET status = {status}, attempts = d.attempts + 1, tries = d.tries + 1,
            next_attempt_at = now() + COALESCE(%s, 0) * interval '1 second',
            lease_token = NULL, lease_until = NULL, last_status_code = %s, last_error = %s, updated_at = now(),
            delivered_at = CASE WHEN %s THEN now() END
        FROM webhook_subscription s
        WHERE s.id = d.subscription_id AND d.id = %s AND d.lease_token = %s""",
                (outcome.retry_in_s, outcome.status_code, outcome.error, outcome.error is None, item.id, item.token))
    held = cur.rowcount == 1
    if held and outcome.gone:
        reason = f"the endpoint answered 410 Gone to delivery {item.id}"
        cur.execute("""UPDATE webhook_subscription SET enabled = false, disabled_reason = %s, updated_at = now()
                       WHERE id = %s""", (reason, item.subscription_id))
        cancel_pending(cur, item.subscription_id, f"cancelled: {reason}")
    return held
