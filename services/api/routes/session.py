"""Signing in to the dashboard: an operator's password (or an API key) exchanged for a session.

A session is an API key of the read scopes only (``customers:read``, ``indicators:read``; fewer if
the key it was made from had fewer) that expires after ``CRM_SESSION_HOURS``. The browser keeps it
as a cookie that is ``HttpOnly`` (the page's script never holds it), ``SameSite=Strict`` (another
site's page cannot send it) and ``Secure`` when the API is reached over HTTPS. The API accepts the
cookie on GET requests only: nothing that changes anything can be done with it. Every read made
through a session is audited under the session's key, whose name says which operator it is.
"""
from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.common import apikeys, audit, operators
from services.common.apikeys import CUSTOMERS_READ, INDICATORS_READ
from services.common.auth import AuthProblem, Caller, client_ip
from services.common.ratelimit import Want

router = APIRouter(prefix="/v1/session", tags=["session"])

COOKIE = "crm_session"
READ_SCOPES = (CUSTOMERS_READ, INDICATORS_READ)
# Sign-in attempts are limited per username (or key prefix) at an address, so guessing one
# account's password is slowed at once, and per address, more loosely, so spraying many accounts
# from one address is too; colleagues behind one proxy do not use up each other's attempts.
SIGN_IN_RATE = (0.2, 10)          # per username at an address: 10 attempts at once, then one every 5 s
SIGN_IN_ADDRESS_RATE = (0.2, 30)  # per address, every username together: 30 at once, then one every 5 s


class SignIn(BaseModel):
    username: str | None = Field(None, max_length=64, description="an operator's username (crm operators add)")
    password: str | None = Field(None, max_length=operators.MAX_PASSWORD)
    api_key: str | None = Field(None, max_length=300, description="or an API key: the session gets its read scopes only")


class SessionOut(BaseModel):
    operator: str | None = Field(description="the operator signed in (None: a session made from an API key)")
    display_name: str = ""
    name: str = Field(description="the session as the audit log names it")
    scopes: list[str]
    expires_at: datetime | None


def _out(key: apikeys.Key, display_name: str = "") -> SessionOut:
    return SessionOut(operator=key.operator, display_name=display_name, name=key.label, scopes=list(key.scopes),
                      expires_at=key.expires_at)


def _problem(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@router.post("", response_model=SessionOut, responses={401: {}, 403: {}, 422: {}, 429: {}})
async def sign_in(body: SignIn, request: Request, response: Response):
    """Sign in with an operator's username and password, or with an API key; sets the session cookie."""
    app = request.app
    ip = client_ip(request)
    by_password = bool(body.username) and body.password is not None and not body.api_key
    by_key = bool(body.api_key) and not body.username
    if not (by_password or by_key):  # a malformed request is no attempt: it uses none up
        return _problem(422, "give either username and password, or api_key")
    who = (f"operator {body.username.strip().lower()[:64]}" if by_password
           else f"key {_prefix(body.api_key)}")
    refusal = app.state.auth.limiter.take([
        Want("sign-in", f"{who} at {ip or 'unknown'}", *SIGN_IN_RATE, unit="sign-in attempts"),
        Want("sign-in-address", ip or "unknown", *SIGN_IN_ADDRESS_RATE, unit="sign-in attempts")])
    if refusal is not None:
        what = f"for {who} from {ip}" if refusal.want.kind == "sign-in" else f"from {ip}, every username together"
        return JSONResponse({"error": f"too many sign-in attempts {what}; retry after {refusal.retry_after} s",
                             "detail": {"limit": refusal.want.kind, "retry_after": refusal.retry_after}},
                            status_code=429, headers={"Retry-After": str(refusal.retry_after)})
    if by_password:
        key, display = await run_in_threadpool(_operator_session, app, body.username, body.password, ip)
        if key is None:
            return _problem(401, "unknown username or wrong password (or the operator is disabled)")
    else:
        try:
            key = await run_in_threadpool(_key_session, app, body.api_key.strip(), ip)
        except AuthProblem as exc:
            return _problem(exc.status, exc.message)
        display = ""
    ttl = int(app.state.settings.session_hours * 3600)
    response.set_cookie(COOKIE, key[1], max_age=ttl, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return _out(key[0], display)


def _operator_session(app, username: str, password: str, ip: str | None):
    with app.state.writer.transaction() as cur:
        operator = operators.authenticate(cur, username, password)
        if operator is None:
            audit.record(cur, f"operator:{username.strip().lower()[:64]}", "session.refused", ip=ip)
            return None, ""
        made = apikeys.create_session(cur, scopes=READ_SCOPES, operator=operator.username,
                                      hours=app.state.settings.session_hours, created_by=f"operator:{operator.username}")
        audit.record(cur, f"operator:{operator.username}", "session.create", made[0].id,
                     {"scopes": list(READ_SCOPES)}, ip=ip)
    return made, operator.display_name


def _prefix(presented: str) -> str:
    """The public prefix of a presented key, as the audit log and the limits name it."""
    parsed = apikeys.parse(presented)
    return parsed.prefix if parsed else "(malformed)"


def _key_session(app, presented: str, ip: str | None):
    key = app.state.auth.store.verify(presented)
    refusal = None
    if key is None or key.kind != apikeys.SECRET:
        refusal = AuthProblem(401, "invalid API key: unknown, malformed, revoked or not a secret key")
    elif key.expires_at is not None:
        # a session is never exchanged for another: it would outlive its operator's sign-out and
        # belong to no one (sessions are made from a password or a lasting key only)
        refusal = AuthProblem(403, "a dashboard session cannot be exchanged for a session: sign in with a "
                                   "password or an API key")
    scopes = [s for s in READ_SCOPES if key.allows(s)] if refusal is None else []
    if refusal is None and not scopes:
        refusal = AuthProblem(403, f"API key {key.prefix} has no read scope ({', '.join(READ_SCOPES)})")
    if refusal is not None:  # audited like a wrong password: who tried, from where, never the key
        with app.state.writer.transaction() as cur:
            audit.record(cur, Caller(key, ip) if key is not None else f"key:{_prefix(presented)}", "session.refused",
                         details={"by": "api_key", "status": refusal.status}, ip=ip)
        raise refusal
    with app.state.writer.transaction() as cur:
        made = apikeys.create_session(cur, scopes=scopes, operator=None, hours=app.state.settings.session_hours,
                                      created_by=key.label, name=f"dashboard session of key {key.prefix}",
                                      session_of=key.id)
        audit.record(cur, key.label, "session.create", made[0].id, {"scopes": scopes, "from_key": key.id}, ip=ip)
    return made


async def _cookie_session(request: Request) -> tuple[str | None, apikeys.Key | None]:
    """The cookie's value and the live session it names (None: no cookie, or not a live session)."""
    presented = request.cookies.get(COOKIE)
    key = await run_in_threadpool(request.app.state.auth.store.verify, presented) if presented else None
    return presented, key if key is not None and key.expires_at is not None else None


@router.get("", response_model=SessionOut, responses={401: {}})
async def who_am_i(request: Request):
    """The session the cookie holds (401: none, expired or ended)."""
    presented, key = await _cookie_session(request)
    if key is None:
        return _problem(401, "not signed in")
    return _out(key)


@router.delete("", status_code=204, responses={204: {"description": "signed out"}})
async def sign_out(request: Request) -> Response:
    """End the session of the cookie (if any) and clear the cookie."""
    presented, key = await _cookie_session(request)
    if key is not None:
        def end() -> None:
            with request.app.state.writer.transaction() as cur:
                apikeys.revoke(cur, key.id, revoked_by=f"{key.label}: signed out")
                audit.record(cur, key.label, "session.end", key.id, ip=client_ip(request))
        await run_in_threadpool(end)
        request.app.state.auth.store.forget(presented)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
