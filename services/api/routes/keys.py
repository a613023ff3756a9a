"""``/v1/keys``: API keys, managed over HTTP by an admin key (``crm keys`` does the same from the
command line). A new key is shown once, in the answer that creates it; lists never hold secrets
(the store has none). Every change is in the audit log."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import DatabaseDep, WriterDep
from services.api.schemas import Problem, RequestBody
from services.api.security import Admin
from services.common import apikeys, audit

router = APIRouter(prefix="/v1/keys", tags=["API keys"])


class KeyIn(RequestBody):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="who or what uses the key")
    scopes: list[str] = Field(min_length=1, max_length=len(apikeys.SCOPES),
                              description=f"of: {', '.join(apikeys.SCOPES)} (admin implies every scope)")
    kind: Literal["secret", "publishable"] = Field(
        "secret", description="publishable: for web pages; events:write only, web.* events only, from the "
                              "allowed origins only")
    allowed_origins: list[str] = Field([], max_length=50, description="publishable keys: https://host[:port] "
                                                                       "pages that may use it")
    rate_per_s: float | None = Field(None, gt=0, le=1e6, description="sustained rate (requests/s on the API, "
                                                                     "events/s on the collector); null: default")
    burst: int | None = Field(None, ge=1, le=10_000_000, description="burst; null: the default")


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="the key's public part: crm_sk_<prefix>_...")
    kind: str
    scopes: list[str]
    allowed_origins: list[str]
    rate_per_s: float | None
    burst: int | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None
    last_used_at: datetime | None = Field(description="last use, noted at most once a minute")


class KeyCreated(KeyOut):
    key: str = Field(description="the key; shown only in this answer, never stored (only a hash is)")


class KeyList(BaseModel):
    items: list[KeyOut]


@router.post("", status_code=201, response_model=KeyCreated, responses={400: {"model": Problem}})
def create_key(body: KeyIn, writer: WriterDep, caller: Admin) -> dict[str, Any]:
    """Create a key. The answer holds the key, once: store it now."""
    try:
        with writer.transaction() as cur:
            key, secret = apikeys.create(cur, name=body.name, scopes=body.scopes, kind=body.kind,
                                         origins=body.allowed_origins, rate_per_s=body.rate_per_s, burst=body.burst,
                                         created_by=caller.name)
            audit.record(cur, caller, "key.create", key.id, {"prefix": key.prefix, "name": key.name,
                                                             "kind": key.kind, "scopes": list(key.scopes)})
    except apikeys.InvalidKeySpec as exc:
        raise HTTPException(400, str(exc)) from None
    return {**key.as_dict(), "key": secret}


@router.get("", response_model=KeyList)
def list_keys(db: DatabaseDep, caller: Admin, revoked: bool = True) -> KeyList:
    """Every key, oldest first, without secrets (``revoked=false``: the live ones only)."""
    with db.cursor() as cur:
        return KeyList(items=[k.as_dict() for k in apikeys.list_keys(cur, include_revoked=revoked)])


@router.delete("/{key_id}", status_code=204, responses={404: {"model": Problem, "description": "no such key"}})
def revoke_key(key_id: str, writer: WriterDep, caller: Admin) -> Response:
    """Revoke a key (by id or prefix). Every process refuses it within ``CRM_AUTH_CACHE_S`` seconds.
    Revoking a revoked key changes nothing."""
    with writer.transaction() as cur:
        key, revoked = apikeys.revoke(cur, key_id, revoked_by=caller.name)
        if key is None:
            raise HTTPException(404, f"no API key {key_id!r}")
        if revoked:
            audit.record(cur, caller, "key.revoke", key.id, {"prefix": key.prefix, "name": key.name})
    return Response(status_code=204)
