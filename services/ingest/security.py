"""The collector's side of authentication (``services/common/auth.py``): its key store, rate limits
counted in events, publishable keys and CORS.

* ``POST /v1/events`` needs ``events:write``. The key's bucket and each CloudEvent ``source``'s
  bucket are charged the request's number of events, all or nothing: a batch over a limit is
  refused whole (429, nothing accepted, Retry-After), so a retry after the wait is exact.
* Publishable keys (browsers) are accepted only with an ``Origin`` they allow, and only for
  ``web.*`` events: any other event of the batch is rejected with reason ``forbidden``.
* CORS: a preflight (``OPTIONS /v1/events``) is answered for an origin some live publishable key
  allows; answers to a publishable key's requests carry ``Access-Control-Allow-Origin``.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from services.common import auth
from services.common.apikeys import PUBLISHABLE
from services.common.auth import AuthProblem, Caller, KeyStore
from services.common.db import TransactionPool
from services.common.settings import Settings

OPEN_ROUTES = frozenset({"/healthz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                         "OPTIONS /v1/events"})
"""Routes anyone may call: health, metrics, the API's documentation, the CORS preflight."""

WEB_EVENTS = "web."
ALLOW_HEADERS = "Authorization, X-API-Key, Content-Type"


async def preflight(request: Request, store: KeyStore) -> Response:
    """A CORS preflight's answer: allowed for an origin some live publishable key names, else 403."""
    origin = auth.request_origin(request)
    if origin is None or not await run_in_threadpool(store.origin_allowed, origin):
        return JSONResponse({"error": "origin not allowed: no live publishable key names it"},
                            status_code=403, headers={"Vary": "Origin"})
    return Response(status_code=204, headers={
        "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600", "Vary": "Origin"})


class CollectorGuard:
    def __init__(self, app: FastAPI, settings: Settings, on_refusal: Callable[[int], None],
                 pool: TransactionPool | None = None):
        self.pool = pool or TransactionPool(settings.pg_dsn, maxconn=2, application_name="crm-ingest-auth")
        self.store = KeyStore(self.pool, cache_s=settings.auth_cache_s, stale_s=settings.auth_stale_s)
        self.auth = auth.install(app, self.store, settings, count_requests=False)

        @app.exception_handler(AuthProblem)
        async def refused(request: Request, exc: AuthProblem) -> JSONResponse:
            on_refusal(exc.status)
            body: dict[str, Any] = {"error": exc.message}
            if exc.detail is not None:
                body["detail"] = exc.detail
            return JSONResponse(body, status_code=exc.status, headers=exc.headers)

        @app.options("/v1/events", include_in_schema=False)
        async def events_preflight(request: Request) -> Response:
            return await preflight(request, self.store)

        app.add_middleware(_CorsForPublishableKeys)

    def limit_events(self, caller: Caller | None, items: list[Any]):
        """None when the key's and the sources' buckets take these events, else the 429 ``Outcome``
        (``caller`` None: a request a platform signed, charged to its sources only)."""
        from services.ingest.intake import Outcome

        sources = Counter(str(i.get("source"))[:200] if isinstance(i, dict) and isinstance(i.get("source"), str)
                          else "" for i in items)
        wants = [*([self.auth.key_want(caller, len(items), "events")] if caller is not None else []),
                 *(self.auth.source_want(source, n) for source, n in sources.items())]
        try:
            self.auth.limit(wants)
        except AuthProblem as exc:
            return Outcome(exc.status, error=exc.message, detail=exc.detail, headers=exc.headers)
        return None

    @staticmethod
    def forbidden(caller: Caller, item: Any) -> dict[str, Any] | None:
        """The rejection of an event this caller may not send (a publishable key: web.* only)."""
        if caller.key.kind != PUBLISHABLE:
            return None
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(kind, str) and kind.startswith(WEB_EVENTS):
            return None
        return {"reason": "forbidden", "errors": [{"field": "type", "message": (
            f"publishable key {caller.key.prefix} may send web.* events only, not {kind!r}: "
            "send other events from a server, with a secret key")}]}

    def close(self) -> None:
        self.pool.close()


class _CorsForPublishableKeys:
    """Adds ``Access-Control-Allow-Origin`` to the answers of requests made with a publishable key
    from an origin it allows (set by the authentication as ``request.state.caller``)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                state = scope.get("state") or {}
                caller = state.get("caller") if isinstance(state, dict) else getattr(state, "caller", None)
                if caller is not None and caller.origin:
                    headers = list(message.get("headers", []))
                    headers += [(b"access-control-allow-origin", caller.origin.encode()), (b"vary", b"Origin"),
                                (b"access-control-expose-headers", b"Retry-After")]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)
