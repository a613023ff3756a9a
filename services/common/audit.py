"""The audit log: who looked at or changed what, append-only in PostgreSQL (``audit_log``,
migration ``008_security.sql``; a trigger refuses UPDATE, DELETE and TRUNCATE).

Recorded: lookups of a customer (by id, by identifier, the timeline), unmerges, API key and
webhook subscription changes, erasures and exports. A lookup is recorded before its answer is
sent, in the same request, so no answer leaves without its trace.

Targets are customer ids, key ids, subscription ids, never identifier values or other personal
data: an append-only table could not forget them when a customer's data is erased.
"""
from __future__ import annotations

import ipaddress
import logging
from datetime import datetime
from typing import Any

import orjson

log = logging.getLogger(__name__)

SYSTEM = "system"


def _actor(actor: Any, ip: str | None) -> tuple[str | None, str, str | None]:
    """(key id, name, request IP) of an actor: an authenticated caller (anything with ``key_id``
    and ``name``, and perhaps ``ip``), a plain name such as ``cli:alice``, or None (the platform)."""
    if actor is None:
        return None, SYSTEM, ip
    if isinstance(actor, str):
        return None, actor, ip
    return getattr(actor, "key_id", None), str(getattr(actor, "name", "") or SYSTEM), ip or getattr(actor, "ip", None)


def record(cur_or_pool, actor: Any, action: str, target: str = "", details: dict[str, Any] | None = None, *,
           ip: str | None = None) -> None:
    """Append one entry. ``cur_or_pool`` is a cursor (the entry commits with the caller's
    transaction: the change and its trace together) or a ``TransactionPool`` (a transaction of its own).
    ``actor``: the request's caller (``services.common.auth.Caller``), a name like ``cli:alice``, or None."""
    key_id, name, request_ip = _actor(actor, ip)
    try:
        request_ip = str(ipaddress.ip_address(request_ip)) if request_ip else None
    except ValueError:  # not an address (a test client, a unix socket): not recorded
        request_ip = None
    args = (key_id, name, action, target or "", orjson.dumps(details or {}, default=str).decode(), request_ip)
    sql = """INSERT INTO audit_log (actor_key_id, actor_name, action, target, details, request_ip)
             VALUES (%s, %s, %s, %s, %s::jsonb, %s)"""
    if hasattr(cur_or_pool, "transaction"):
        with cur_or_pool.transaction() as cur:
            # a read's trace in a transaction of its own: the request does not wait for the WAL
            # flush (a few ms, most of a lookup's time); PostgreSQL flushes it within a fraction of a
            # second, so only a crash of the database server itself in that moment could lose it
            cur.execute("SET LOCAL synchronous_commit TO off")
            cur.execute(sql, args)
    else:
        cur_or_pool.execute(sql, args)
    log.info("audit", extra={"audit_action": action, "audit_target": target, "actor": name, "actor_key_id": key_id})


COLUMNS = ("id", "at", "actor_key_id", "actor_name", "action", "target", "details", "request_ip")


def query(cur, *, action: str | None = None, actor: str | None = None, target: str | None = None,
          since: datetime | None = None, until: datetime | None = None, before_id: int | None = None,
          limit: int = 100) -> list[dict[str, Any]]:
    """Entries, newest first. ``action`` matches exactly or, ending in ``.``/``*``, by prefix
    (``customer.``); ``actor`` is a key id, a key prefix or an actor name; ``until`` is exclusive."""
    where, args = [], []
    if action:
        if action.endswith(("*", ".")):
            where.append("action LIKE %s")
            args.append(action.rstrip("*").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        else:
            where.append("action = %s")
            args.append(action)
    if actor:
        where.append("(actor_key_id = %s OR actor_name = %s OR split_part(actor_name, ' ', 1) = %s)")
        args += [actor, actor, actor]
    if target:
        where.append("target = %s")
        args.append(target)
    if since:
        where.append("at >= %s")
        args.append(since)
    if until:
        where.append("at < %s")
        args.append(until)
    if before_id is not None:
        where.append("id < %s")
        args.append(before_id)
    cur.execute(f"SELECT id, at, actor_key_id, actor_name, action, target, details, host(request_ip) "
                f"FROM audit_log {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT %s",
                (*args, limit))
    out = []
    for row in cur.fetchall():
        entry = dict(zip(COLUMNS, row))
        if isinstance(entry["details"], (str, bytes)):
            entry["details"] = orjson.loads(entry["details"])
        out.append(entry)
    return out
