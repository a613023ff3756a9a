"""Who may call the HTTP services: API keys checked against the key store, scopes per route, and
rate limits, for the collector and the query API alike.

A request names its key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (and, on the
Server-Sent Events routes only, ``?access_token=<key>``: a browser's EventSource cannot send
headers). Every route states the scope it needs with ``Depends(require(scope))``; a route with
none must be listed as open (``check_routes`` refuses to start the app otherwise), so a new route
is never public by mistake. The answers: 401 with ``WWW-Authenticate: Bearer`` when the key is
missing, unknown or revoked; 403 naming the missing scope; 429 with ``Retry-After`` naming the limit;
503 when the key store cannot be asked.

Verified keys are cached in the process for ``CRM_AUTH_CACHE_S`` seconds (default 5): a revoked key
is refused by every process within that time. While PostgreSQL is unreachable, keys verified in the
last ``CRM_AUTH_STALE_S`` seconds stay accepted (so the collector, whose durability needs only
Kafka, keeps taking events through a database restart); a key not seen before gets 503.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg2
from fastapi import Depends, FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPBearer
from starlette.concurrency import run_in_threadpool

from services.common import apikeys
from services.common.apikeys import PUBLISHABLE, SECRET, InvalidKeySpec, Key
from services.common.db import TransactionPool
from services.common.ratelimit import Limiter, Refusal, Want
from services.common.settings import Settings

log = logging.getLogger(__name__)

MISSING = "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>"
INVALID = "invalid API key: unknown, malformed or revoked"


class KeyStoreUnavailable(Exception):
    """The key store (PostgreSQL) could not be asked and no recent answer is at hand."""


class AuthProblem(Exception):
    """A refused request: status, message and headers of the answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.detail = status, message, headers or {}, detail


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request: its key, client IP and (publishable keys) origin."""

    key: Key
    ip: str | None = None
    origin: str | None = None

    @property
    def key_id(self) -> str:
        return self.key.id

    @property
    def name(self) -> str:
        """The key's public prefix and name, as the audit log records the actor."""
        return self.key.label

    def allows(self, scope: str) -> bool:
        return self.key.allows(scope)


class KeyStore:
    """Verifies presented keys against PostgreSQL, with a short in-process cache (see the module)."""

    def __init__(self, pool: TransactionPool, *, cache_s: float, stale_s: float,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000):
        self.pool, self.cache_s, self.stale_s, self.clock = pool, cache_s, stale_s, clock
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, Key | None]] = {}  # sha256 of the key -> (verified at, key)
        self._origins: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def cached(self, presented: str) -> tuple[bool, Key | None]:
        """(fresh, key): whether a recent answer is at hand, and that answer."""
        hit = self._cache.get(apikeys.hash_key(presented))
        if hit is not None and self.clock() - hit[0] < self.cache_s:
            return True, hit[1]
        return False, None

    def verify(self, presented: str) -> Key | None:
        """The live key (None: refused). Blocking: asks PostgreSQL unless the cache answers."""
        digest = apikeys.hash_key(presented)
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        try:
            with self.pool.transaction() as cur:
                key = apikeys.verify(cur, presented)
        except psycopg2.Error as exc:
            if hit is not None and hit[1] is not None and now - hit[0] < self.stale_s:
                log.warning("key store unavailable; accepting a key verified recently",
                            extra={"key": hit[1].prefix, "verified_s_ago": round(now - hit[0], 1),
                                   "error": str(exc).strip()})
                return hit[1]
            raise KeyStoreUnavailable(str(exc).strip()) from None
        with self._lock:
            self._cache.pop(digest, None)
            self._cache[digest] = (now, key)
            while len(self._cache) > self.max_entries:
                self._cache.pop(next(iter(self._cache)))
        return key

    def forget(self, presented: str) -> None:
        """Drop a key from this process's cache (a session just ended here)."""
        with self._lock:
            self._cache.pop(apikeys.hash_key(presented), None)

    def origin_allowed(self, origin: str) -> bool:
        """Whether some live publishable key allows this origin (CORS preflights carry no key)."""
        now = self.clock()
        hit = self._origins.get(origin)
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]
        try:
            with self.pool.transaction() as cur:
                known = apikeys.publishable_origin_known(cur, origin)
        except psycopg2.Error:
            return bool(hit and hit[1])
        with self._lock:
            if len(self._origins) >= self.max_entries:
                self._origins.clear()
            self._origins[origin] = (now, known)
        return known


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def presented_key(request: Request, query_token: bool = False) -> str | None:
    """The key a request presents: ``Authorization: Bearer``, else ``X-API-Key``, else (where
    allowed) the ``access_token`` query parameter."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    header = request.headers.get("x-api-key", "").strip()
    if header:
        return header
    if query_token:
        token = request.query_params.get("access_token", "").strip()
        if token:
            return token
    return None


def request_origin(request: Request) -> str | None:
    """The request's ``Origin`` normalized (None: absent or not an origin, e.g. ``null``)."""
    raw = request.headers.get("origin")
    if not raw:
        return None
    try:
        return apikeys.normalize_origin(raw)
    except InvalidKeySpec:
        return None


def rate_limited(refusal: Refusal) -> AuthProblem:
    """The 429 answer of a refusal, naming the limit."""
    want = refusal.want
    unit = want.unit
    what = {"key": f"API key {want.name}", "source": f"event source {want.name!r}",
            "ip": f"client {want.name} (requests with a publishable key)",
            "failures": f"failed authentications from client {want.name} (no key, or an unknown or revoked one)"
            }.get(want.kind, want.name)
    return AuthProblem(429, f"rate limit of {what} exceeded ({want.rate:g} {unit}/s, burst {want.burst:g}); "
                            f"retry after {refusal.retry_after} s",
                       {"Retry-After": str(refusal.retry_after)},
                       {"limit": want.kind, "name": want.name, "rate_per_s": want.rate, "burst": want.burst,
                        "retry_after": refusal.retry_after})


class Authenticator:
    """Authenticates requests for one app; ``count_requests``: charge the key's bucket one token per
    request (the query API) rather than per event (the collector does that itself)."""

    def __init__(self, store: KeyStore, settings: Settings, *, count_requests: bool, limiter: Limiter | None = None,
                 session_cookie: str | None = None):
        self.store, self.settings, self.count_requests = store, settings, count_requests
        self.limiter = limiter or Limiter()
        self.session_cookie = session_cookie  # the query API: a dashboard session's cookie, on reads only

    def key_want(self, caller: Caller, cost: float = 1, unit: str = "requests") -> Want:
        key = caller.key
        return Want("key", key.label, key.rate_per_s or self.settings.rate_limit_per_s,
                    key.burst or self.settings.rate_limit_burst, cost, unit)

    def source_want(self, source: str, cost: float) -> Want:
        return Want("source", source, self.settings.source_rate_limit_per_s, self.settings.source_rate_limit_burst,
                    cost, "events")

    def ip_want(self, ip: str | None) -> Want:
        """Requests with a publishable key (public by nature): limited per client IP."""
        return Want("ip", ip or "unknown", self.settings.ip_rate_limit_per_s, self.settings.ip_rate_limit_burst)

    def failure_want(self, ip: str | None) -> Want:
        """Failed authentications (no key, a bad one): limited per client IP, in a bucket of their
        own, so a flood of bad keys from one address never refuses a good key from it."""
        return Want("failures", ip or "unknown", self.settings.ip_rate_limit_per_s, self.settings.ip_rate_limit_burst)

    def limit(self, wants: list[Want]) -> None:
        """Charge these buckets, or raise the 429 of the one that refuses."""
        refusal = self.limiter.take(wants)
        if refusal is not None:
            raise rate_limited(refusal)

    async def authenticate(self, request: Request, *, query_token: bool = False) -> Caller:
        """The request's caller (once per request), or an ``AuthProblem`` (401, 403 origin, 429, 503)."""
        caller = getattr(request.state, "caller", None)
        if caller is not None:
            return caller
        ip = client_ip(request)
        presented = presented_key(request, query_token)
        from_cookie = False
        if presented is None and self.session_cookie and request.method in ("GET", "HEAD"):
            presented = request.cookies.get(self.session_cookie) or None
            from_cookie = presented is not None
        if presented is None:
            self.limit([self.failure_want(ip)])
            raise AuthProblem(401, MISSING, {"WWW-Authenticate": "Bearer"})
        fresh, key = self.store.cached(presented)
        if not fresh and apikeys.parse(presented) is not None:
            # asked even when the client's failures are over their limit: a valid key is never
            # refused for the bad ones sent beside it (a key that is not of our format costs nothing)
            try:
                key = await run_in_threadpool(self.store.verify, presented)
            except KeyStoreUnavailable as exc:
                log.warning("key store unavailable", extra={"error": str(exc)})
                raise AuthProblem(503, "the key store is unavailable; retry later", {"Retry-After": "5"}) from None
        if key is not None and from_cookie and key.expires_at is None:
            key = None  # a cookie holds only sessions
        if key is None:
            self.limit([self.failure_want(ip)])  # failed attempts count against the client's IP
            if from_cookie:
                raise AuthProblem(401, "session expired or ended: sign in again", {"WWW-Authenticate": "Bearer"})
            raise AuthProblem(401, INVALID, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        origin = None
        if key.kind == PUBLISHABLE:
            origin = request_origin(request)
            if origin is None:
                raise AuthProblem(403, f"publishable key {key.prefix} is accepted only from a web page on one of "
                                       "its allowed origins: the request has no Origin header")
            if origin not in key.allowed_origins:
                raise AuthProblem(403, f"origin {origin} is not allowed for publishable key {key.prefix}")
            self.limit([self.ip_want(ip)])  # a public key: limited per client IP as well
        caller = Caller(key, ip, origin)
        request.state.caller = caller
        return caller


_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer crm_sk_...`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_query = APIKeyQuery(name="access_token", auto_error=False,
                     description="an API key, for EventSource (Server-Sent Events) only")


@functools.cache
def require_secret(scope: str) -> Callable:
    """Like ``require`` but refuses a publishable key with 403: routes whose callers are servers
    (order and call webhooks, survey links) never take the public key of a web page."""
    inner = require(scope)

    async def dependency(caller: Caller = Depends(inner)) -> Caller:
        if caller.key.kind != SECRET:
            raise AuthProblem(403, f"publishable key {caller.key.prefix} cannot be used here: use a secret key "
                                   f"with {scope}", detail={"missing_scope": scope})
        return caller

    return dependency


@functools.cache
def require(scope: str, *, query_token: bool = False) -> Callable:
    """The dependency of a route needing ``scope`` (one callable per scope, so a router's and a
    route's requirement of the same scope run once). Returns the request's ``Caller``."""
    if scope not in apikeys.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    if query_token:
        async def dependency(request: Request, _b=Security(_bearer), _h=Security(_header),
                             _q=Security(_query)) -> Caller:
            return await _check(request, scope, True)
    else:
        async def dependency(request: Request, _b=Security(_bearer), _h=Security(_header)) -> Caller:
            return await _check(request, scope, False)

    dependency.crm_scope = scope
    return dependency


async def _check(request: Request, scope: str, query_token: bool) -> Caller:
    auth: Authenticator = request.app.state.auth
    caller = await auth.authenticate(request, query_token=query_token)
    if not caller.allows(scope):
        # name what the route needs in all (a router's scope is checked before a route's stronger one)
        needed = route_scopes(getattr(request.scope.get("route"), "dependant", None)) or {scope}
        missing = " and ".join(sorted(s for s in needed if not caller.allows(s))) or scope
        have = ", ".join(caller.key.scopes)
        raise AuthProblem(403, f"API key {caller.key.prefix} lacks the scope {missing} (it has: {have})",
                          detail={"missing_scope": missing})
    if auth.count_requests and not getattr(request.state, "charged", False):
        request.state.charged = True
        auth.limit([auth.key_want(caller)])
    return caller


def _routes(app: FastAPI):
    """(path, path format, methods, dependant or None, in the schema) of every route, routers'
    routes included (FastAPI 0.12x+ keeps included routers as branches of ``app.routes``)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI: included routes are flattened into app.routes
        contexts = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    for route in contexts:
        original = getattr(route, "original_route", route)
        api = isinstance(original, APIRoute)
        yield (getattr(route, "path", None), getattr(route, "path_format", None) or getattr(route, "path", None),
               set(getattr(route, "methods", None) or {"*"}), route.dependant if api else None,
               bool(api and route.include_in_schema))


def route_scopes(dependant) -> set[str]:
    """The scopes a route requires (all of them), from its dependencies."""
    found: set[str] = set()

    def walk(node) -> None:
        for dep in node.dependencies:
            scope = getattr(dep.call, "crm_scope", None)
            if scope:
                found.add(scope)
            walk(dep)

    if dependant is not None:
        walk(dependant)
    if apikeys.ADMIN in found:  # admin implies the rest
        return {apikeys.ADMIN}
    return found


def check_routes(app: FastAPI, open_routes: frozenset[str] | set[str]) -> dict[tuple[str, str], set[str]]:
    """Every route's (method, path) and the scopes it needs; raises when a route needs none and is
    not listed in ``open_routes`` (entries: a path, every method open, or ``"METHOD path"``)."""
    table: dict[tuple[str, str], set[str]] = {}
    for path, _, methods, dependant, _ in _routes(app):
        scopes = route_scopes(dependant)
        for method in sorted(methods):
            if not scopes and path not in open_routes and f"{method} {path}" not in open_routes:
                raise RuntimeError(f"route {method} {path} requires no scope and is not listed as open: add "
                                   "Depends(require(<scope>)) to it (services/common/auth.py)")
            table[(method, path)] = scopes
    return table


def document_scopes(app: FastAPI) -> None:
    """Say in the OpenAPI document which scope each operation needs (``x-required-scopes``) and
    document the refusals (401, 403, 429, 503)."""
    previous = app.openapi
    problem = {"application/json": {"schema": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"}, "detail": {}}}}}
    refusals = {"401": "no key, or an unknown or revoked one", "403": "the key lacks the scope (or origin)",
                "429": "a rate limit; retry after Retry-After seconds", "503": "the key store is unavailable"}

    def openapi() -> dict[str, Any]:
        schema = previous()
        for _, path_format, methods, dependant, in_schema in _routes(app):
            scopes = sorted(route_scopes(dependant))
            if not in_schema or not scopes:
                continue
            for method in methods:
                operation = schema.get("paths", {}).get(path_format, {}).get(method.lower())
                if operation is None or "x-required-scopes" in operation:
                    continue
                operation["x-required-scopes"] = scopes
                operation["description"] = (operation.get("description", "") +
                                            f"\n\nRequires an API key with the scope `{' and '.join(scopes)}`"
                                            + ("" if scopes == [apikeys.ADMIN] else " (or `admin`)") + ".").strip()
                for status, text in refusals.items():
                    operation.setdefault("responses", {}).setdefault(status, {"description": text,
                                                                              "content": problem})
        return schema

    app.openapi = openapi


def install(app: FastAPI, store: KeyStore, settings: Settings, *, count_requests: bool,
            session_cookie: str | None = None) -> Authenticator:
    """Wire authentication into an app: ``app.state.auth`` and the JSON answer of refusals.
    ``session_cookie``: accept a dashboard session from this cookie on GET and HEAD requests."""
    auth = Authenticator(store, settings, count_requests=count_requests, session_cookie=session_cookie)
    app.state.auth = auth

    @app.exception_handler(AuthProblem)
    async def refused(request: Request, exc: AuthProblem) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message}
        if exc.detail is not None:
            body["detail"] = exc.detail
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    return auth
