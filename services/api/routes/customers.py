"""``/v1/customers``: the unified customer view, identifier lookups and the timeline."""
from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query

from events.identifiers import InvalidIdentifier, normalize
from projections import customer_view
from services.api.deps import DatabaseDep, SettingsDep
from services.api.schemas import CustomerList, CustomerOut, Merge, Merges, Problem, Timeline, TimelineItem
from services.common.timeline import EVENT_COLUMNS, to_event

router = APIRouter(prefix="/v1/customers", tags=["customers"])

NOT_FOUND = {404: {"model": Problem, "description": "no such customer"}}


def _resolve(cur, customer_id: str) -> str:
    cur.execute("SELECT resolved FROM customer_view_alias WHERE alias = %s", (customer_id,))
    row = cur.fetchone()
    return row[0] if row else customer_id


def _aliases(cur, survivor: str) -> list[str]:
    cur.execute("SELECT alias FROM customer_view_alias WHERE resolved = %s AND alias <> %s ORDER BY alias",
                (survivor, survivor))
    return [r[0] for r in cur.fetchall()]


def _load_many(cur, customer_ids: list[str]) -> list[CustomerOut]:
    """The views of these customers (aliases answered by their survivor), by customer id, in two queries."""
    cur.execute("""SELECT v.customer_id, v.state, v.updated_at FROM customer_view v
                   WHERE v.customer_id IN (SELECT coalesce(a.resolved, x) FROM unnest(%s::text[]) AS x
                                           LEFT JOIN customer_view_alias a ON a.alias = x)
                   ORDER BY v.customer_id""", (customer_ids,))
    rows = cur.fetchall()
    cur.execute("""SELECT resolved, alias FROM customer_view_alias
                   WHERE resolved = ANY(%s) AND alias <> resolved ORDER BY alias""", ([r[0] for r in rows],))
    aliases: dict[str, list[str]] = {}
    for survivor, alias in cur.fetchall():
        aliases.setdefault(survivor, []).append(alias)
    return [_out(state, updated_at, aliases.get(cid, []), requested=None) for cid, state, updated_at in rows]


def _load(cur, customer_id: str) -> CustomerOut | None:
    found = _load_many(cur, [customer_id])
    if not found:
        return None
    view = found[0]
    view.requested_id = customer_id if customer_id != view.customer_id else None
    return view


def _load_as_of(cur, customer_id: str, as_of: datetime) -> CustomerOut | None:
    """The view as it stood at ``as_of``: the customer's events up to then, folded again."""
    survivor = _resolve(cur, customer_id)
    cur.execute(f"SELECT {EVENT_COLUMNS} FROM customer_timeline WHERE customer_id = %s AND event_time <= %s",
                (survivor, as_of))
    events = [to_event(row) for row in cur.fetchall()]
    if not events:
        return None
    state = customer_view.apply_all(customer_view.empty(survivor), events)
    out = _out(orjson.loads(orjson.dumps(state)), as_of, _aliases(cur, survivor),
               requested=customer_id if customer_id != survivor else None)
    out.as_of = as_of
    return out


def _out(state: dict[str, Any], updated_at: datetime, aliases: list[str], requested: str | None) -> CustomerOut:
    derived = customer_view.summary(state)
    return CustomerOut(
        customer_id=state["customer_id"], requested_id=requested, aliases=aliases,
        display_name=derived["display_name"], identities={k: v for k, v in state["identities"].items() if v},
        traits=state["traits"], contacts=state["contacts"], contacts_total=derived["contacts_total"],
        first_contact=state["first_contact"], last_contact=state["last_contact"],
        orders={**state["orders"], "net_revenue": derived["net_revenue"],
                "average_order_value": derived["average_order_value"]},
        tickets=state["tickets"], open_tickets=derived["open_tickets"],
        open_complaints=derived["open_complaints"], satisfaction=state["satisfaction"],
        consent=state["consent"], event_count=state["event_count"], last_event_at=state["last_event_at"],
        updated_at=updated_at,
    )


@router.get("", response_model=CustomerList, responses={400: {"model": Problem}})
def find_customers(
    db: DatabaseDep, settings: SettingsDep,
    email: Annotated[str | None, Query(max_length=254)] = None,
    phone: Annotated[str | None, Query(max_length=64)] = None,
    account_id: Annotated[str | None, Query(max_length=200)] = None,
    anonymous_id: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=100,
                                   description="prefix of a name or company, or of one of their words "
                                               "(any script, case-insensitive)")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> CustomerList:
    """Find customers by an identifier (normalized as on ingest: emails lower-cased, phones to E.164
    with the default region) or search them by name or company (``q``, paginated)."""
    given = {k: v for k, v in (("email", email), ("phone", phone), ("account_id", account_id),
                               ("anonymous_id", anonymous_id)) if v is not None}
    if not given and q is None:
        raise HTTPException(400, "give one of: email, phone, account_id, anonymous_id, q")
    if given and q is not None:
        raise HTTPException(400, "search by identifier or by q, not both")
    if q is not None:
        return _search(db, q, limit, cursor)
    keys = []
    for kind, raw in given.items():
        try:
            keys.append(normalize(kind, raw, settings.default_region).key)
        except InvalidIdentifier as exc:
            raise HTTPException(400, f"{kind}: {exc}") from None
    with db.cursor() as cur:
        cur.execute("SELECT DISTINCT customer_id FROM customer_view_identifier WHERE key = ANY(%s)", (keys,))
        return CustomerList(items=_load_many(cur, [r[0] for r in cur.fetchall()]))


def _search(db, q: str, limit: int, cursor: str | None) -> CustomerList:
    term = " ".join(q.lower().split())
    pattern = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    after = cursor or ""
    with db.cursor() as cur:
        cur.execute("""SELECT DISTINCT customer_id FROM customer_view_search
                       WHERE term LIKE %s AND customer_id > %s ORDER BY customer_id LIMIT %s""",
                    (pattern, after, limit + 1))
        ids = [r[0] for r in cur.fetchall()]
        items = _load_many(cur, ids[:limit])
    return CustomerList(items=items, next_cursor=ids[limit - 1] if len(ids) > limit else None)


@router.get("/{customer_id}", response_model=CustomerOut, responses=NOT_FOUND)
def get_customer(
    customer_id: str, db: DatabaseDep,
    as_of: Annotated[datetime | None, Query(description="RFC 3339 time: the view as it stood then")] = None,
) -> CustomerOut:
    """The unified view of one customer; an alias (a merged-away id) answers with the survivor."""
    if as_of is not None and as_of.tzinfo is None:
        raise HTTPException(400, "as_of needs a time zone offset, e.g. 2026-11-01T10:00:00Z")
    with db.cursor() as cur:
        view = _load(cur, customer_id) if as_of is None else _load_as_of(cur, customer_id, as_of)
    if view is None:
        raise HTTPException(404, f"no customer {customer_id!r}" + (f" with touchpoints by {as_of.isoformat()}"
                                                                    if as_of else ""))
    return view


@router.get("/{customer_id}/merges", response_model=Merges, responses=NOT_FOUND)
def get_merges(customer_id: str, db: DatabaseDep) -> Merges:
    """Every merge that formed this customer: which touchpoint, identifier and rule linked which ids."""
    with db.cursor() as cur:
        survivor = _resolve(cur, customer_id)
        cur.execute("SELECT 1 FROM customer_view WHERE customer_id = %s", (survivor,))
        if cur.fetchone() is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        ids = [survivor, *_aliases(cur, survivor)]
        cur.execute("""SELECT m.seq, m.survivor, m.alias, m.event_id, m.identifier, m.rule, m.event_time,
                              a.seq IS NOT NULL AS current
                       FROM customer_view_merge m
                       LEFT JOIN customer_view_alias a ON a.alias = m.alias AND a.seq = m.seq
                       WHERE m.survivor = ANY(%s) OR m.alias = ANY(%s) ORDER BY m.seq""", (ids, ids))
        items = [Merge(seq=r[0], survivor=r[1], alias=r[2], event_id=r[3], identifier=r[4], rule=r[5],
                       event_time=r[6], current=r[7]) for r in cur.fetchall()]
    return Merges(customer_id=survivor, items=items)


def _encode_cursor(time: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([time.isoformat(), key])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        time, key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(time), str(key)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise HTTPException(400, "invalid cursor; use the next_cursor of a previous page") from None


@router.get("/{customer_id}/timeline", response_model=Timeline, responses={**NOT_FOUND, 400: {"model": Problem}})
def get_timeline(
    customer_id: str, db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    order: Literal["asc", "desc"] = "asc",
) -> Timeline:
    """Every touchpoint of the customer in event-time order (oldest first unless order=desc)."""
    after = _decode_cursor(cursor) if cursor else None
    with db.cursor() as cur:
        survivor = _resolve(cur, customer_id)
        cur.execute("SELECT 1 FROM customer_view WHERE customer_id = %s", (survivor,))
        if cur.fetchone() is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where = f"AND (event_time, event_key) {op} (%s, %s)" if after else ""
        cur.execute(f"""SELECT event_id, source, type, channel, event_time, summary, data, event_key
                        FROM customer_timeline WHERE customer_id = %s {where}
                        ORDER BY event_time {direction}, event_key {direction} LIMIT %s""",
                    (survivor, *(after or ()), limit + 1))
        rows = cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [TimelineItem(event_id=r[0], source=r[1], type=r[2], channel=r[3], time=r[4], summary=r[5], data=r[6])
             for r in rows]
    next_cursor = _encode_cursor(rows[-1][4], rows[-1][7]) if more else None
    return Timeline(customer_id=survivor, items=items, next_cursor=next_cursor)
