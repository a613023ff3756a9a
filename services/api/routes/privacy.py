"""Personal data in the query API: revealing it to callers, an export of everything held on a
customer (GDPR art. 15, PIPL art. 45) and erasure (GDPR art. 17, PIPL art. 47).

The read models hold pseudonyms and encrypted tokens only (``events.pii``). The API opens them as
the very last step of a JSON answer (``install_reveal``): what a caller with the right scope sees
is plain, what is stored is not. A token whose key was shredded reads ``[erased]``.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from events.envelope import InvalidEvent, validate
from events.identifiers import Identifier
from events.kafka_binding import structured_headers
from services.api.deps import DatabaseDep, PublisherDep, SettingsDep
from services.api.schemas import Problem
from services.common import audit
from services.common.auth import Caller, require
from services.common.publisher import KafkaUnavailable
from services.common.timeline import EVENT_COLUMNS
from services.common.topics import TOUCHPOINTS
from services.common.vault import Vault

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/customers", tags=["privacy"])

ERASURE_SOURCE = "urn:crm:api:erasure"


def vault_of(request: Request) -> Vault:
    return request.app.state.vault


VaultDep = Annotated[Vault, Depends(vault_of)]


def pseudonym_keys(db, vault: Vault, idents: list[Identifier]) -> list[str]:
    """The stored keys (``kind:psn-...``) of plain identifiers; one never seen has none."""
    with db.cursor() as cur:
        found = vault.subjects(cur, idents, create=False)
    return [f"{i.kind}:{found[i].subject_id}" for i in idents if i in found]


REVEALED = ("/v1/customers", "/v1/webhooks")
"""The routes whose answers hold customer data (documentation only shows example pseudonyms)."""


def install_reveal(app: FastAPI) -> None:
    """Open the pseudonyms and tokens of every JSON answer, as its last step."""

    @app.middleware("http")
    async def reveal(request: Request, call_next):
        response = await call_next(request)
        if (not request.url.path.startswith(REVEALED) or
                not response.headers.get("content-type", "").startswith("application/json")):
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])
        if b"psn-" in body or b"enc1." in body:
            def opened() -> bytes:
                with app.state.db.cursor() as cur:
                    return orjson.dumps(app.state.vault.reveal(cur, orjson.loads(body)))
            body = await asyncio.to_thread(opened)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return Response(body, status_code=response.status_code, headers=headers, media_type="application/json")


# -- erasure ---------------------------------------------------------------------------------------------

class ErasureIn(BaseModel):
    reason: str | None = Field(None, max_length=200, description="why: a reference such as the data subject's "
                                                                 "request id, not personal data")
    requested_by: str | None = Field(None, max_length=200, description="who asked (a ticket, the person)")


class ErasureOut(BaseModel):
    customer_id: str
    event_id: str = Field(description="the customer.erasure_requested touchpoint; the erasure is done when "
                                      "crm.customer-changes carries customer.erased for the customer")
    status: str = "accepted"


@router.post("/{customer_id}/erasure", status_code=202, response_model=ErasureOut,
             responses={404: {"model": Problem}, 409: {"model": Problem}, 503: {"model": Problem}})
async def erase(customer_id: str, body: ErasureIn, request: Request, db: DatabaseDep, settings: SettingsDep,
                publisher: PublisherDep, caller: Annotated[Caller, Depends(require("admin"))]) -> ErasureOut:
    """Erase a customer (right to erasure). Publishes a ``customer.erasure_requested`` touchpoint;
    the identity stage shreds the key of every identifier of the customer (crypto-shredding: every
    stored copy in topics, archive, projections and rebuilds is unreadable from then on) and the
    customer leaves the identity graph; the view stage removes the customer from every read
    model, tombstones the snapshot on crm.customer-state and announces ``customer.erased`` on
    crm.customer-changes."""
    survivor, key = await run_in_threadpool(_erasure_target, db, customer_id)
    kind, _, value = key.partition(":")
    raw = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": ERASURE_SOURCE,
           "type": "customer.erasure_requested", "time": datetime.now(timezone.utc).isoformat(),
           "data": {kind: value, **({"reason": body.reason} if body.reason else {}),
                    "requested_by": body.requested_by or caller.name}}
    try:
        tp = validate(raw, received_at=datetime.now(timezone.utc), default_region=settings.default_region,
                      sealed=True)
    except InvalidEvent as exc:
        raise HTTPException(400, f"not a valid erasure request: {exc}") from None
    try:
        await publisher.send_all([(TOUCHPOINTS, key.encode(), tp.to_json(), list(structured_headers()))])
    except KafkaUnavailable as exc:
        raise HTTPException(503, f"the erasure could not be published: {exc}", headers={"Retry-After": "5"}) from None
    await run_in_threadpool(audit.record, request.app.state.writer, caller, "customer.erasure", survivor,
                            {"event_id": tp.id})  # free text stays off the append-only log
    log.info("erasure requested", extra={"customer_id": survivor, "event_id": tp.id})
    return ErasureOut(customer_id=survivor, event_id=tp.id)


def _survivor(cur, customer_id: str) -> str:
    """The live customer an id stands for (an alias answers with the customer it was merged into)."""
    cur.execute("SELECT coalesce((SELECT survivor FROM customer_view_alias WHERE alias = %s), %s)",
                (customer_id, customer_id))
    return cur.fetchone()[0]


def _erasure_target(db, customer_id: str) -> tuple[str, str]:
    with db.cursor() as cur:
        cur.execute("SELECT customer_id FROM public.privacy_erasure WHERE customer_id = %s", (customer_id,))
        if cur.fetchone():
            raise HTTPException(409, f"customer {customer_id!r} is erased already")
        survivor = _survivor(cur, customer_id)
        cur.execute("SELECT key FROM identity_identifier WHERE customer_id = %s ORDER BY key LIMIT 1", (survivor,))
        row = cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
    return survivor, row[0]


# -- access: everything held on a customer ---------------------------------------------------------------

@router.get("/{customer_id}/export", responses={404: {"model": Problem}})
async def export(customer_id: str, request: Request, db: DatabaseDep, vault: VaultDep,
                 caller: Annotated[Caller, Depends(require("admin"))]) -> Response:
    """Everything the platform holds on a customer, as one JSON document (right of access): the
    identifiers, the profile with every trait's provenance, consent, the whole timeline with each
    event's data, merges and splits, the customer state, and the changes sent downstream."""
    document = await run_in_threadpool(_export, db, vault, customer_id)
    await run_in_threadpool(audit.record, request.app.state.writer, caller, "customer.export",
                            document["customer_id"], {"events": len(document["timeline"])})
    return Response(orjson.dumps(document, option=orjson.OPT_INDENT_2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="customer-{document["customer_id"]}.json"'})


def _export(db, vault: Vault, customer_id: str) -> dict[str, Any]:
    with db.cursor() as cur:
        cid = _survivor(cur, customer_id)
        cur.execute("SELECT state, first_seen_at, updated_at FROM customer_view WHERE customer_id = %s", (cid,))
        row = cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        view, created, updated = row
        cur.execute("SELECT key FROM customer_view_identifier WHERE customer_id = %s ORDER BY key", (cid,))
        identifiers = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT alias FROM customer_view_alias WHERE survivor = %s ORDER BY alias", (cid,))
        aliases = [r[0] for r in cur.fetchall()]
        cur.execute(f"SELECT {EVENT_COLUMNS}, summary FROM customer_timeline WHERE customer_id = %s "
                    "ORDER BY event_time, event_key", (cid,))
        timeline = [{"event_id": r[1], "source": r[2], "type": r[3], "time": r[4].isoformat(), "channel": r[5],
                     "identifiers": list(r[7]), "data": r[8], "summary": r[10]} for r in cur.fetchall()]
        cur.execute("""SELECT kind, target, source, identifiers, event_id, rule, event_time FROM customer_view_change
                       WHERE target = %s OR source = %s ORDER BY seq""", (cid, cid))
        merges = [{"kind": k, "into": t, "from": s, "identifiers": list(i), "event_id": e, "rule": r,
                   "time": tm.isoformat() if tm else None} for k, t, s, i, e, r, tm in cur.fetchall()]
        cur.execute("SELECT snapshot, version, updated_at FROM customer_state WHERE customer_id = %s", (cid,))
        state = cur.fetchone()
        cur.execute("""SELECT event_id, type, sequence, published_at FROM webhook_event WHERE customer_id = %s
                       ORDER BY published_at""", (cid,))
        sent = [{"event_id": e, "type": t, "sequence": s, "published_at": p.isoformat()} for e, t, s, p in cur.fetchall()]
        document = {
            "customer_id": cid,
            "exported_at": datetime.now(timezone.utc).isoformat(),
            "aliases": aliases,
            "identifiers": identifiers,
            "profile": {"traits": view.get("traits", {}), "consent": view.get("consent", {}),
                        "first_contact": view.get("first_contact"), "last_contact": view.get("last_contact"),
                        "orders": view.get("orders"), "tickets": view.get("tickets"),
                        "satisfaction": view.get("satisfaction"), "contacts": view.get("contacts"),
                        "first_seen_at": created.isoformat() if created else None,
                        "updated_at": updated.isoformat() if updated else None},
            "state": state[0] if state else None,
            "timeline": timeline,
            "merges": merges,
            "changes_sent_to_webhooks": sent,
            "processing": {"purposes": ["service", "analytics", "marketing (only with consent)"],
                           "storage": "personal fields encrypted with per-person keys under the platform's master key"},
        }
        return vault.reveal(cur, document)
