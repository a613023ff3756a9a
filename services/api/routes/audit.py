"""``/v1/audit``: the audit log (append-only), newest first, for admin keys."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from services.api.deps import DatabaseDep, refuse_time_out_of_range
from services.api.schemas import Problem
from services.api.security import Admin
from services.common import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor_key_id: str | None = Field(description="the API key that acted; null: the command line or the platform")
    actor_name: str = Field(description="the key's prefix and name, or cli:<login>")
    action: str
    target: str
    details: dict[str, Any]
    request_ip: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next (older) page; null at the end")


def _utc(name: str, value: datetime | None) -> datetime | None:
    refuse_time_out_of_range(name, value)
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


@router.get("", response_model=AuditPage, responses={400: {"model": Problem}})
def list_audit(
    db: DatabaseDep, caller: Admin,
    action: Annotated[str | None, Query(max_length=100, description="an action (customer.read), or a prefix "
                                                                    "ending in . or * (customer.)")] = None,
    actor: Annotated[str | None, Query(max_length=300, description="a key id, a key prefix or an actor name")] = None,
    target: Annotated[str | None, Query(max_length=300, description="a customer id, key id, subscription id")] = None,
    since: Annotated[datetime | None, Query(description="from this time on")] = None,
    until: Annotated[datetime | None, Query(description="before this time")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> AuditPage:
    """Audit entries, newest first: customer lookups, unmerges, erasures and exports, key and webhook changes."""
    try:
        before = int(cursor) if cursor is not None else None
    except ValueError:
        raise HTTPException(400, "invalid cursor; use the next_cursor of a previous page") from None
    with db.cursor() as cur:
        rows = audit.query(cur, action=action, actor=actor, target=target, since=_utc("since", since),
                           until=_utc("until", until), before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(items=rows, next_cursor=str(rows[-1]["id"]) if more else None)
