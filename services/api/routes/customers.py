"""``/v1/customers``: the unified customer view, identifier lookups, the timeline, merges and unmerge."""
from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from events.envelope import InvalidEvent, validate
from events.identifiers import InvalidIdentifier, normalize
from events.kafka_binding import structured_headers
from events.touchpoints import EVENT_TYPES
from events.feed import LIFECYCLE_STAGES
from projections import customer_view
from projections.identity import MANUAL_MERGE_SOURCE, Evidence, resolve_evidence
from services.api.deps import DatabaseDep, PublisherDep, SettingsDep, refuse_time_out_of_range, state_rules
from services.api.schemas import (CustomerList, CustomerOut, Merge, MergeIn, MergeOut, Merges, Problem, Refusal,
                                  Timeline, TimelineItem, UnmergeIn, UnmergeOut)
from services.common.publisher import KafkaUnavailable
from services.api.routes.privacy import VaultDep, pseudonym_keys
from services.common.vault import Vault
from services.common.timeline import EVENT_COLUMNS, to_event
from services.api.deps import WriterDep
from services.api.security import Admin, CustomersReader
from services.common import audit
from services.common.apikeys import CUSTOMERS_READ
from services.common.auth import require
from services.common.topics import TOUCHPOINTS

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/customers", tags=["customers"], dependencies=[Depends(require(CUSTOMERS_READ))])

NOT_FOUND = {404: {"model": Problem, "description": "no such customer"}}


_WALK = """
    WITH RECURSIVE walk(requested, id, depth) AS (
        SELECT x, x, 0 FROM unnest(%s::text[]) AS x
      UNION ALL
        SELECT w.requested, a.survivor, w.depth + 1 FROM walk w JOIN customer_view_alias a ON a.alias = w.id
        WHERE w.depth < 32 AND NOT EXISTS (SELECT 1 FROM customer_view v WHERE v.customer_id = w.id)
    )
    SELECT DISTINCT ON (requested) requested, id FROM walk
    WHERE EXISTS (SELECT 1 FROM customer_view v WHERE v.customer_id = walk.id)
    ORDER BY requested, depth"""
"""Each requested id with the live customer answering for it: itself when it has a view, else the
end of its chain of merges (an id split off again has a view of its own and answers for itself)."""


def _resolve_many(cur, customer_ids: list[str]) -> dict[str, str]:
    cur.execute(_WALK, (customer_ids,))
    return dict(cur.fetchall())


def _resolve(cur, customer_id: str) -> str | None:
    return _resolve_many(cur, [customer_id]).get(customer_id)


def _aliases_of(cur, survivors: list[str]) -> dict[str, list[str]]:
    """The merged-away ids that each of these live customers answers for."""
    cur.execute("""
        WITH RECURSIVE back(survivor, alias, depth) AS (
            SELECT a.survivor, a.alias, 1 FROM customer_view_alias a WHERE a.survivor = ANY(%s)
          UNION ALL
            SELECT b.survivor, a.alias, b.depth + 1 FROM back b JOIN customer_view_alias a ON a.survivor = b.alias
            WHERE b.depth < 32
              AND NOT EXISTS (SELECT 1 FROM customer_view v WHERE v.customer_id = b.alias)
        )
        SELECT DISTINCT survivor, alias FROM back b
        WHERE NOT EXISTS (SELECT 1 FROM customer_view v WHERE v.customer_id = b.alias) ORDER BY 1, 2""",
                (survivors,))
    out: dict[str, list[str]] = {}
    for survivor, alias in cur.fetchall():
        out.setdefault(survivor, []).append(alias)
    return out


def _identities_of(cur, customer_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """The identifiers each customer owns, by kind, as the identity graph last told the view."""
    cur.execute("SELECT customer_id, kind, key FROM customer_view_identifier WHERE customer_id = ANY(%s) "
                "ORDER BY key", (customer_ids,))
    out: dict[str, dict[str, list[str]]] = {}
    for cid, kind, key in cur.fetchall():
        out.setdefault(cid, {}).setdefault(kind, []).append(key.partition(":")[2])
    return out


def _load_many(cur, customer_ids: list[str], keep_order: bool = False) -> list[CustomerOut]:
    """The views of these customers (aliases answered by their survivor), by customer id (or in the
    order asked, with ``keep_order``)."""
    resolved = _resolve_many(cur, customer_ids)
    live = sorted(set(resolved.values()))
    cur.execute("SELECT customer_id, state, updated_at FROM customer_view WHERE customer_id = ANY(%s) "
                "ORDER BY customer_id", (live,))
    rows = cur.fetchall()
    aliases = _aliases_of(cur, live)
    identities = _identities_of(cur, live)
    out = [_out(state, updated_at, aliases.get(cid, []), identities.get(cid, {}), requested=None)
           for cid, state, updated_at in rows]
    if keep_order:
        rank = {resolved[c]: n for n, c in reversed(list(enumerate(customer_ids))) if c in resolved}
        out.sort(key=lambda c: rank.get(c.customer_id, len(rank)))
    return out


def _load(cur, customer_id: str) -> CustomerOut | None:
    found = _load_many(cur, [customer_id])
    if not found:
        return None
    view = found[0]
    view.requested_id = customer_id if customer_id != view.customer_id else None
    return view


def _load_as_of(cur, customer_id: str, as_of: datetime, limits: dict[str, int], vault: Vault | None = None
                ) -> CustomerOut | None:
    """The view as it stood at ``as_of``, identity included: the identity evidence of events up to
    then is resolved again (the resolver depends only on the set of evidence), and the touchpoints
    up to then whose home identifier belonged to the customer *then* are folded again."""
    cur.execute("""SELECT c.anchor_key, i.component FROM identity_customer c
                   JOIN identity_identifier i ON i.key = c.anchor_key WHERE c.customer_id = %s""", (customer_id,))
    row = cur.fetchone()
    if row is None:
        return None
    anchor, component = row
    cur.execute("SELECT key, first_seen FROM identity_identifier WHERE component = %s AND first_seen <= %s",
                (component, as_of))
    seen = dict(cur.fetchall())
    if anchor not in seen:
        return None
    cur.execute("""SELECT event_key, event_id, type, event_time, identifiers, unlink FROM identity_link
                   WHERE component = %s AND event_time <= %s""", (component, as_of))
    evidence = [Evidence(k, i, t, at, tuple(ids), u) for k, i, t, at, ids, u in cur.fetchall()]
    then = resolve_evidence(evidence, limits, seen)
    then_id = then.customer_of[anchor]
    keys = sorted(k for k, c in then.customer_of.items() if c == then_id)
    cur.execute(f"SELECT {EVENT_COLUMNS} FROM customer_timeline WHERE home = ANY(%s) AND event_time <= %s",
                (keys, as_of))
    events = [to_event(row) for row in cur.fetchall()]
    if not events:
        return None
    if vault is not None:  # sentiment reads the customer's words, opened in memory only
        events = vault.open_events(cur, events)
    state = customer_view.apply_all(customer_view.empty(then_id), events)
    identities: dict[str, list[str]] = {}
    for key in keys:
        identities.setdefault(key.partition(":")[0], []).append(key.partition(":")[2])
    out = _out(orjson.loads(orjson.dumps(state)), as_of, [], identities,
               requested=customer_id if customer_id != then_id else None)
    out.as_of = as_of
    return out


def _out(state: dict[str, Any], updated_at: datetime, aliases: list[str], identities: dict[str, list[str]],
         requested: str | None) -> CustomerOut:
    derived = customer_view.summary(state)
    return CustomerOut(
        customer_id=state["customer_id"], requested_id=requested, aliases=aliases,
        display_name=derived["display_name"], identities=identities,
        traits=state["traits"], contacts=state["contacts"], contacts_total=derived["contacts_total"],
        first_contact=state["first_contact"], last_contact=state["last_contact"],
        orders={**state["orders"], "net_revenue": derived["net_revenue"],
                "average_order_value": derived["average_order_value"]},
        tickets=state["tickets"], open_tickets=derived["open_tickets"],
        open_complaints=derived["open_complaints"],
        satisfaction={**state["satisfaction"], **{k: v for k, v in derived["satisfaction"].items()}},
        consent=state["consent"], event_count=state["event_count"], last_event_at=state["last_event_at"],
        updated_at=updated_at,
    )


@router.get("", response_model=CustomerList, responses={400: {"model": Problem}})
def find_customers(
    db: DatabaseDep, settings: SettingsDep, vault: VaultDep, caller: CustomersReader, writer: WriterDep,
    email: Annotated[str | None, Query(max_length=254)] = None,
    phone: Annotated[str | None, Query(max_length=64)] = None,
    account_id: Annotated[str | None, Query(max_length=200)] = None,
    anonymous_id: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=100,
                                   description="prefix of a name or company, or of one of their words "
                                               "(any script, case-insensitive)")] = None,
    at_risk: Annotated[bool | None, Query(description="true: the customers at risk, least satisfied first "
                                                      "(paginated)")] = None,
    lifecycle: Annotated[str | None, Query(description="customers in this lifecycle stage (with segment and "
                                                       "tier: all must hold; paginated)")] = None,
    segment: Annotated[str | None, Query(max_length=63, description="customers in this configured segment")] = None,
    tier: Annotated[str | None, Query(description="customers of this value tier: high, medium, low, none")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> CustomerList:
    """Find customers by an identifier (normalized as on ingest: emails lower-cased, phones to E.164
    with the default region), search them by name or company (``q``, paginated), or list those at
    risk (``at_risk=true``, paginated, lowest satisfaction index first), or list them by customer
    state (``lifecycle``, ``segment``, ``tier``; paginated by customer id)."""
    given = {k: v for k, v in (("email", email), ("phone", phone), ("account_id", account_id),
                               ("anonymous_id", anonymous_id)) if v is not None}
    by_state = {k: v for k, v in (("lifecycle", lifecycle), ("segment", segment), ("tier", tier)) if v is not None}
    modes = bool(given) + (q is not None) + (at_risk is not None) + bool(by_state)
    if modes == 0:
        raise HTTPException(400, "give one of: email, phone, account_id, anonymous_id, q, at_risk, "
                                 "lifecycle, segment, tier")
    if modes > 1:
        raise HTTPException(400, "search by identifier, by q, by at_risk or by state (lifecycle, segment, tier): "
                                 "one at a time")
    if q is not None:
        return _search(db, vault, q, limit, cursor)
    if by_state:
        return _by_state(db, settings, by_state, limit, cursor)
    if at_risk is not None:
        if not at_risk:
            raise HTTPException(400, "at_risk lists the customers at risk: use at_risk=true")
        return _at_risk(db, limit, cursor)
    idents = []
    for kind, raw in given.items():
        try:
            idents.append(normalize(kind, raw, settings.default_region, settings.blocked))
        except InvalidIdentifier as exc:
            raise HTTPException(400, f"{kind}: {exc}") from None
    # the read models know identifiers by their pseudonyms; an event a trusted producer wrote straight
    # to crm.touchpoints, unsealed, keeps its identifiers as given
    keys = pseudonym_keys(db, vault, idents) + [i.key for i in idents]
    with db.cursor() as cur:
        cur.execute("SELECT DISTINCT customer_id FROM customer_view_identifier WHERE key = ANY(%s)", (keys,))
        found = CustomerList(items=_load_many(cur, [r[0] for r in cur.fetchall()]))
    with writer.transaction() as cur:  # audited: which kinds of identifier, never their values
        for customer in found.items or [None]:
            audit.record(cur, caller, "customer.find", customer.customer_id if customer else "",
                         {"by": sorted(given), "found": len(found.items)})
    return found


_CUSTOMER_ID = re.compile(r"c_[0-9a-f]{20}")  # projections.identity.customer_id_for


def _id_cursor(cursor: str | None) -> str:
    """The customer id a ``q`` or state page ended at (``""``: the first page); 400 for anything
    else, since no other string is a cursor this API gave out."""
    if cursor is None:
        return ""
    if not _CUSTOMER_ID.fullmatch(cursor):
        raise HTTPException(400, "cursor: not a cursor this API gave out")
    return cursor


def _search(db, vault: Vault, q: str, limit: int, cursor: str | None) -> CustomerList:
    """Names are stored as keyed digests of every prefix of every word (and of the whole name), up
    to 40 characters (``view_stage._Batch.terms``): a prefix search is one exact lookup."""
    term = " ".join(q.lower().split())[:40]
    after = _id_cursor(cursor)
    with db.cursor() as cur:
        cur.execute("""SELECT DISTINCT customer_id FROM customer_view_search
                       WHERE term = %s AND customer_id > %s ORDER BY customer_id LIMIT %s""",
                    (vault.search_digest(term), after, limit + 1))
        ids = [r[0] for r in cur.fetchall()]
        items = _load_many(cur, ids[:limit])
    return CustomerList(items=items, next_cursor=ids[limit - 1] if len(ids) > limit else None)


def _by_state(db, settings, wanted: dict[str, str], limit: int, cursor: str | None) -> CustomerList:
    rules = state_rules(settings)
    known = {"lifecycle": LIFECYCLE_STAGES, "segment": rules.segment_names, "tier": ("high", "medium", "low", "none")}
    for name, value in wanted.items():
        if value not in known[name]:
            raise HTTPException(400, f"{name}: {value!r} is not one of {', '.join(known[name])}")
    where = ["live", "customer_id > %s"]
    args: list[Any] = [_id_cursor(cursor)]
    if "lifecycle" in wanted:
        where.append("lifecycle = %s")
        args.append(wanted["lifecycle"])
    if "tier" in wanted:
        where.append("tier = %s")
        args.append(wanted["tier"])
    if "segment" in wanted:
        where.append("segments @> ARRAY[%s]::text[]")
        args.append(wanted["segment"])
    with db.cursor() as cur:
        cur.execute(f"SELECT customer_id FROM customer_state WHERE {' AND '.join(where)} "
                    "ORDER BY customer_id LIMIT %s", (*args, limit + 1))
        ids = [r[0] for r in cur.fetchall()]
        items = _load_many(cur, ids[:limit], keep_order=True)
    return CustomerList(items=items, next_cursor=ids[limit - 1] if len(ids) > limit else None)


def _at_risk(db, limit: int, cursor: str | None) -> CustomerList:
    try:
        index, after = _decode_risk_cursor(cursor) if cursor else (-1.0, "")
    except ValueError:
        raise HTTPException(400, "cursor: not a cursor this API gave out") from None
    with db.cursor() as cur:
        cur.execute("""SELECT customer_id, COALESCE(satisfaction_index, 101) FROM customer_view
                       WHERE at_risk AND (COALESCE(satisfaction_index, 101), customer_id) > (%s, %s)
                       ORDER BY COALESCE(satisfaction_index, 101), customer_id LIMIT %s""", (index, after, limit + 1))
        rows = cur.fetchall()
        items = _load_many(cur, [r[0] for r in rows[:limit]], keep_order=True)
    more = len(rows) > limit
    return CustomerList(items=items, next_cursor=f"{rows[limit - 1][1]}:{rows[limit - 1][0]}" if more else None)


def _decode_risk_cursor(cursor: str) -> tuple[float, str]:
    """(satisfaction index, customer id) of the last row of a page: the index is 0 to 100, or 101
    for none, and never nan or inf; the id one the platform made."""
    index, _, after = cursor.partition(":")
    value = float(index)
    if not (math.isfinite(value) and 0 <= value <= 101) or not _CUSTOMER_ID.fullmatch(after):
        raise ValueError(cursor)
    return value, after


@router.get("/{customer_id}", response_model=CustomerOut, responses=NOT_FOUND)
def get_customer(
    customer_id: str, db: DatabaseDep, settings: SettingsDep, caller: CustomersReader, writer: WriterDep,
    vault: VaultDep, as_of: Annotated[datetime | None, Query(description="RFC 3339 time: the view as it stood then, "
                                                        "identity included")] = None,
) -> CustomerOut:
    """The unified view of one customer; an alias (a merged-away id) answers with the survivor."""
    if as_of is not None and as_of.tzinfo is None:
        raise HTTPException(400, "as_of needs a time zone offset, e.g. 2026-11-01T10:00:00Z")
    refuse_time_out_of_range("as_of", as_of)
    if as_of is not None:  # PostgreSQL takes offsets up to ±15:59 only; RFC 3339 up to ±23:59
        as_of = as_of.astimezone(timezone.utc)
    with db.cursor() as cur:
        view = (_load(cur, customer_id) if as_of is None
                else _load_as_of(cur, customer_id, as_of, settings.identity_limits, vault))
    if view is None:
        raise HTTPException(404, f"no customer {customer_id!r}" + (f" with touchpoints by {as_of.isoformat()}"
                                                                    if as_of else ""))
    audit.record(writer, caller, "customer.read", view.customer_id,
                 {"requested": customer_id, **({"as_of": as_of.isoformat()} if as_of else {})})
    return view


@router.get("/{customer_id}/merges", response_model=Merges, responses=NOT_FOUND)
def get_merges(customer_id: str, db: DatabaseDep) -> Merges:
    """Every merge and split that shaped this customer: which touchpoint, identifier and rule
    moved which identifiers between which customer ids, oldest first; and every link refused on
    either side (``refusals``): which touchpoint, which identifier, which rule."""
    with db.cursor() as cur:
        survivor = _resolve(cur, customer_id)
        if survivor is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        ids = [survivor, *_aliases_of(cur, [survivor]).get(survivor, [])]
        cur.execute("""SELECT m.seq, m.kind, m.target, m.source, m.identifiers, m.event_id, m.identifier, m.rule,
                              m.event_time, m.version,
                              NOT EXISTS (SELECT 1 FROM customer_view_change later
                                          WHERE later.seq > m.seq AND later.identifiers && m.identifiers) AS current
                       FROM customer_view_change m
                       WHERE m.target = ANY(%s) OR m.source = ANY(%s) ORDER BY m.seq""", (ids, ids))
        items = [Merge(seq=r[0], kind=r[1], survivor=r[2], alias=r[3], identifiers=r[4], event_id=r[5],
                       identifier=r[6], rule=r[7], event_time=r[8], version=r[9], current=r[10])
                 for r in cur.fetchall()]
        refused = _refusals_of(cur, survivor)
    return Merges(customer_id=survivor, items=items, refusals=refused)


def _refusals_of(cur, customer_id: str) -> list[Refusal]:
    """The refused links that name an identifier of this customer, on the side the event stayed
    with or on the side refused, with the customer of each side as the view knows it now."""
    cur.execute("""SELECT r.event_id, r.type, r.event_time, r.identifier, r.home, r.rule, h.customer_id, o.customer_id
                   FROM identity_refusal r
                   LEFT JOIN customer_view_identifier h ON h.key = r.home
                   LEFT JOIN customer_view_identifier o ON o.key = r.identifier
                   WHERE r.home IN (SELECT key FROM customer_view_identifier WHERE customer_id = %s)
                      OR r.identifier IN (SELECT key FROM customer_view_identifier WHERE customer_id = %s)
                   ORDER BY r.event_time, r.event_key, r.identifier""", (customer_id, customer_id))
    return [Refusal(event_id=r[0], type=r[1], event_time=r[2], identifier=r[3], stayed_with=r[4], rule=r[5],
                    customer_id=r[6], other_customer_id=r[7]) for r in cur.fetchall()]


def _encode_cursor(time: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([time.isoformat(), key])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        time, key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(time)
        if at.tzinfo is None or "\x00" in str(key):  # never in a cursor this API gave out
            raise ValueError
        return at.astimezone(timezone.utc), str(key)
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise HTTPException(400, "invalid cursor; use the next_cursor of a previous page") from None


CHANNELS = sorted({t.channel for t in EVENT_TYPES.values()})


def _known(name: str, given: list[str] | None, known: list[str]) -> list[str]:
    """The values of a repeatable, comma-separated filter; 400 naming any value no event can have
    (a typo would otherwise answer an empty timeline that looks like "nothing happened")."""
    values = sorted({v.strip() for g in given or () for v in g.split(",") if v.strip()})
    unknown = [v for v in values if v not in known]
    if unknown:
        raise HTTPException(400, f"unknown {name} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return values


@router.get("/{customer_id}/timeline", response_model=Timeline, responses={**NOT_FOUND, 400: {"model": Problem}})
def get_timeline(
    customer_id: str, db: DatabaseDep, caller: CustomersReader, writer: WriterDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    order: Literal["asc", "desc"] = "asc",
    channel: Annotated[list[str] | None, Query(
        max_length=50, description=f"only these channels (repeat, or comma-separated): {', '.join(CHANNELS)}")] = None,
    type_: Annotated[list[str] | None, Query(
        alias="type", max_length=50, description="only these event types (repeat, or comma-separated), e.g. call.ended")] = None,
) -> Timeline:
    """Every touchpoint of the customer in event-time order (oldest first unless order=desc),
    optionally only some channels or event types."""
    channels = _known("channel", channel, CHANNELS)
    types = _known("type", type_, sorted(EVENT_TYPES))
    after = _decode_cursor(cursor) if cursor else None
    with db.cursor() as cur:
        survivor = _resolve(cur, customer_id)
        if survivor is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where = f"AND (event_time, event_key) {op} (%s, %s)" if after else ""
        where += " AND channel = ANY(%s)" if channels else ""
        where += " AND type = ANY(%s)" if types else ""
        cur.execute(f"""SELECT event_id, source, type, channel, event_time, summary, data, event_key
                        FROM customer_timeline WHERE customer_id = %s {where}
                        ORDER BY event_time {direction}, event_key {direction} LIMIT %s""",
                    (survivor, *(after or ()), *([channels] if channels else []), *([types] if types else []),
                     limit + 1))
        rows = cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [TimelineItem(event_id=r[0], source=r[1], type=r[2], channel=r[3], time=r[4], summary=r[5], data=r[6])
             for r in rows]
    next_cursor = _encode_cursor(rows[-1][4], rows[-1][7]) if more else None
    audit.record(writer, caller, "customer.timeline", survivor,
                 {"requested": customer_id, "items": len(items), "page": bool(cursor)})
    return Timeline(customer_id=survivor, items=items, next_cursor=next_cursor)


UNMERGE_SOURCE = "urn:crm:api:unmerge"


@router.post("/{customer_id}/unmerge", status_code=202, response_model=UnmergeOut,
             responses={**NOT_FOUND, 409: {"model": Problem}, 503: {"model": Problem}})
async def unmerge(customer_id: str, body: UnmergeIn, db: DatabaseDep, settings: SettingsDep,
                  publisher: PublisherDep, vault: VaultDep, caller: Admin, writer: WriterDep) -> UnmergeOut:
    """Split a wrong merge again (an operator action). Publishes an ``identity.unlinked`` touchpoint
    declaring the two sides different people; the identity stage re-resolves their evidence and the
    view re-folds the events of each side. Nothing is deleted; the split shows in ``/merges``."""
    if body.identifier is not None:
        try:
            named = normalize(body.identifier.kind, body.identifier.value, settings.default_region, settings.blocked)
        except InvalidIdentifier as exc:
            raise HTTPException(400, f"identifier: {exc}") from None
    named_key = None
    if body.identifier is not None:
        found = await run_in_threadpool(pseudonym_keys, db, vault, [named])
        if not found:
            raise HTTPException(409, f"{body.identifier.kind} {body.identifier.value!r} does not belong to "
                                     f"customer {customer_id!r}")
        named_key = found[0]
    survivor, pair = await run_in_threadpool(_unlink_pair, db, customer_id, body.alias, named_key)
    raw = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": UNMERGE_SOURCE, "type": "identity.unlinked",
           "time": datetime.now(timezone.utc).isoformat(), "subject": survivor,
           "data": {"identifiers": [{"kind": k.partition(":")[0], "value": k.partition(":")[2]} for k in pair],
                    "reason": body.reason, **({"operator": body.operator} if body.operator else {})}}
    try:
        tp = validate(raw, received_at=datetime.now(timezone.utc), default_region=settings.default_region,
                      sealed=True)  # it names identifiers by their pseudonyms
    except InvalidEvent as exc:  # the body passed UnmergeIn; whatever the event refuses beyond it is still a 400
        raise HTTPException(400, f"the unmerge is not a valid identity.unlinked event: {exc}") from None
    try:
        await publisher.send_all([(TOUCHPOINTS, tp.primary_identifier.key.encode(), tp.to_json(),
                                   list(structured_headers()))])
    except KafkaUnavailable as exc:
        raise HTTPException(503, f"the unmerge could not be published: {exc}", headers={"Retry-After": "5"}) from None
    log.info("unmerge requested", extra={"customer_id": survivor, "alias": body.alias, "unlinked": pair,
                                         "event_id": tp.id, "operator": body.operator})
    await run_in_threadpool(audit.record, writer, caller, "customer.unmerge", survivor,
                            {"alias": body.alias, "by_identifier": body.identifier is not None,
                             "event_id": tp.id})  # the reason and operator are on that event
    return UnmergeOut(customer_id=survivor, event_id=tp.id, source=UNMERGE_SOURCE, unlinked=list(pair))


def _unlink_pair(db, customer_id: str, alias: str | None, identifier: str | None) -> tuple[str, tuple[str, str]]:
    """The live customer and the two identifiers to declare different people."""
    with db.cursor() as cur:
        survivor = _resolve(cur, customer_id)
        if survivor is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        cur.execute("SELECT anchor_key FROM identity_customer WHERE customer_id = %s", (survivor,))
        row = cur.fetchone()
        if row is None:
            raise HTTPException(409, f"customer {survivor!r} is not in the identity graph yet; retry shortly")
        anchor = row[0]
        if alias is not None:
            if alias == survivor or _resolve(cur, alias) != survivor:
                raise HTTPException(409, f"{alias!r} is not merged into customer {survivor!r}; "
                                         f"see GET /v1/customers/{survivor}/merges")
            cur.execute("SELECT anchor_key FROM identity_customer WHERE customer_id = %s", (alias,))
            row = cur.fetchone()
            if row is None:
                raise HTTPException(409, f"{alias!r} is not in the identity graph")
            other = row[0]
        else:
            cur.execute("SELECT customer_id FROM customer_view_identifier WHERE key = %s", (identifier,))
            row = cur.fetchone()
            if row is None or row[0] != survivor:
                raise HTTPException(409, f"{identifier!r} does not belong to customer {survivor!r}")
            if identifier == anchor:
                raise HTTPException(409, f"{identifier!r} is the identifier this customer is anchored at; "
                                         "split off the other side instead (by its alias or one of its identifiers)")
            other = identifier
    return survivor, (anchor, other)


MERGE_SOURCE = MANUAL_MERGE_SOURCE


@router.post("/{customer_id}/merge", status_code=202, response_model=MergeOut,
             responses={**NOT_FOUND, 409: {"model": Problem}, 503: {"model": Problem}})
async def merge(customer_id: str, body: MergeIn, db: DatabaseDep, settings: SettingsDep,
                publisher: PublisherDep, caller: Admin, writer: WriterDep) -> MergeOut:
    """Merge two customers an operator knows to be one person. Publishes an ``identity.linked``
    touchpoint naming each customer's anchor (source ``urn:crm:api:merge``, with the reason and the
    operator); the identity stage merges them like any link, the feed announces ``customer.merged``
    and ``/merges`` explains it with the rule "manual merge by <operator>: <reason>". The merge obeys
    the identity guards: when the per-kind limits (``CRM_IDENTITY_LIMITS``) or an earlier unlink
    would refuse it, the answer is 409 naming the rule, and nothing is published. Undo it with
    ``POST /v1/customers/{id}/unmerge``."""
    operator = body.operator or caller.key.name
    survivor, other, pair = await run_in_threadpool(_link_pair, db, customer_id, body.with_, settings.identity_limits)
    raw = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": MERGE_SOURCE, "type": "identity.linked",
           "time": datetime.now(timezone.utc).isoformat(), "subject": survivor,
           "data": {"identifiers": [{"kind": k.partition(":")[0], "value": k.partition(":")[2]} for k in pair],
                    "reason": body.reason, "operator": operator}}
    try:
        tp = validate(raw, received_at=datetime.now(timezone.utc), default_region=settings.default_region,
                      sealed=True, blocked=settings.blocked)  # it names identifiers by their pseudonyms
    except InvalidEvent as exc:
        raise HTTPException(400, f"the merge is not a valid identity.linked event: {exc}") from None
    try:
        await publisher.send_all([(TOUCHPOINTS, tp.primary_identifier.key.encode(), tp.to_json(),
                                   list(structured_headers()))])
    except KafkaUnavailable as exc:
        raise HTTPException(503, f"the merge could not be published: {exc}", headers={"Retry-After": "5"}) from None
    log.info("merge requested", extra={"customer_id": survivor, "with": other, "linked": pair, "event_id": tp.id,
                                       "operator": operator})
    await run_in_threadpool(audit.record, writer, caller, "customer.merge", survivor,
                            {"with": other, "event_id": tp.id})  # the reason and operator are on that event
    return MergeOut(customer_id=survivor, merged_with=other, event_id=tp.id, source=MERGE_SOURCE, linked=list(pair))


def _link_pair(db, customer_id: str, other_id: str, limits: dict[str, int]) -> tuple[str, str, tuple[str, str]]:
    """The two live customers and their anchors, once the identity guards are known to accept the
    link: its evidence is resolved again with the link added now (as the identity stage will)."""
    with db.cursor() as cur:
        survivor, other = _resolve(cur, customer_id), _resolve(cur, other_id)
        if survivor is None or other is None:
            missing = customer_id if survivor is None else other_id
            raise HTTPException(404, f"no customer {missing!r}")
        if survivor == other:
            raise HTTPException(409, f"{customer_id!r} and {other_id!r} are one customer already ({survivor!r})")
        cur.execute("""SELECT c.customer_id, c.anchor_key, i.component FROM identity_customer c
                       JOIN identity_identifier i ON i.key = c.anchor_key WHERE c.customer_id = ANY(%s)""",
                    ([survivor, other],))
        found = {cid: (anchor, component) for cid, anchor, component in cur.fetchall()}
        if survivor not in found or other not in found:
            missing = survivor if survivor not in found else other
            raise HTTPException(409, f"customer {missing!r} is not in the identity graph yet; retry shortly")
        pair = (found[survivor][0], found[other][0])
        components = sorted({found[survivor][1], found[other][1]})
        cur.execute("SELECT key, first_seen FROM identity_identifier WHERE component = ANY(%s)", (components,))
        seen = dict(cur.fetchall())
        cur.execute("""SELECT event_key, event_id, type, event_time, identifiers, unlink FROM identity_link
                       WHERE component = ANY(%s)""", (components,))
        evidence = [Evidence(k, i, t, at, tuple(ids), u) for k, i, t, at, ids, u in cur.fetchall()]
    now = datetime.now(timezone.utc)
    if evidence:
        now = max(now, max(ev.time for ev in evidence))
    probe = Evidence("\uffff manual merge", "", "identity.linked", now, pair)
    then = resolve_evidence([*evidence, probe], limits, seen)
    refused = [link for link in then.links if link.event_key == probe.event_key and not link.accepted]
    if refused:
        raise HTTPException(409, f"the identity guards refuse to merge {survivor!r} and {other!r}: "
                                 f"{refused[0].rule} (CRM_IDENTITY_LIMITS; an unmerge declares the two different "
                                 "people for good)")
    return survivor, other, pair
