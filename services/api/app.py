"""The query API: a thin FastAPI app over the PostgreSQL read models. It never writes them; an
operator action (unmerge) is published as a touchpoint and takes effect through the processors."""
from __future__ import annotations

import time
from pathlib import Path
from contextlib import asynccontextmanager
from typing import Any

import psycopg2
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.deps import Database, refuse_nul
from services.common.db import TransactionPool
from services.common.publisher import KafkaPublisher
from services.common.kafka_security import KafkaSecurity
from services.api.live import Hub
from services.api.routes import customers, docs, indicators, ops, privacy, session, state, webhooks
from services.api.routes import audit as audit_routes, keys as key_routes, orders as orders_routes
from services.api.security import OPEN_ROUTES
from services.common import auth
from services.common.vault import from_settings as vault_from_settings
from services.api.schemas import Problem, ValidationProblem
from services.common.settings import Settings

REQUESTS = Counter("crm_api_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram("crm_api_request_seconds", "request latency", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1))


def create_app(settings: Settings, db: Database | None = None, publisher: KafkaPublisher | None = None) -> FastAPI:
    """The query API wired with its settings, database pool and publisher (connected on first use)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.vault.listen(settings.pg_dsn)
        await app.state.hub.start()
        yield
        await app.state.hub.stop()
        app.state.db.close()
        app.state.writer.close()
        app.state.keys_pool.close()
        app.state.publisher.close()
        app.state.pipeline.close()

    app = FastAPI(title="CRM query API", version="1", lifespan=lifespan, dependencies=[Depends(refuse_nul)],
                  description="The unified customer view and its timeline, and the satisfaction indicators "
                              "(values, per-minute series, a live stream), read from the projections.",
                  responses={400: {"model": Problem, "description": "a parameter or body no query can use "
                                                                    "(e.g. text holding U+0000), or a body "
                                                                    "that is not JSON"},
                             422: {"model": ValidationProblem, "description": "parameters or body of the "
                                                                              "wrong shape, by field"}})
    app.state.settings = settings
    app.state.db = db or Database(settings.pg_dsn)
    kafka_security = KafkaSecurity.from_settings(settings)
    app.state.publisher = publisher or KafkaPublisher(settings.kafka_bootstrap, client_id="crm-api",
                                                      ack_timeout_s=settings.kafka_ack_timeout_s,
                                                      security=kafka_security)
    app.state.hub = Hub(settings.kafka_bootstrap, security=kafka_security)
    # the API writes only the tables it owns (webhook subscriptions), through a pool of its own
    app.state.writer = TransactionPool(settings.pg_dsn, maxconn=4, application_name="crm-api-writer")
    # API keys, scopes and rate limits (services/common/auth.py); keys are checked through a small
    # pool of their own, never waiting behind the writes
    app.state.keys_pool = TransactionPool(settings.pg_dsn, maxconn=2, application_name="crm-api-auth")
    auth.install(app, auth.KeyStore(app.state.keys_pool, cache_s=settings.auth_cache_s,
                                    stale_s=settings.auth_stale_s), settings, count_requests=True,
                 session_cookie=session.COOKIE)
    app.state.pipeline = ops.PipelineHealth(settings, app.state.db)
    app.include_router(customers.router)
    app.include_router(indicators.router)
    app.include_router(state.router)
    app.include_router(orders_routes.router)
    app.include_router(docs.router)
    app.include_router(webhooks.router)
    app.include_router(key_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(session.router)
    app.include_router(ops.router)
    app.state.vault = vault_from_settings(settings)  # refuses to start without a master key
    app.include_router(privacy.router)
    privacy.install_reveal(app)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        LATENCY.labels(path).observe(time.perf_counter() - started)
        REQUESTS.labels(path, str(response.status_code)).inc()
        return response

    @app.exception_handler(StarletteHTTPException)  # also the routing's 404 and 405 and an unparsable body
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": errors}, status_code=422)

    @app.exception_handler(psycopg2.OperationalError)
    async def db_down(request: Request, exc: psycopg2.OperationalError) -> JSONResponse:
        return JSONResponse({"error": "read model database unavailable; retry later"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, Any]:
        try:
            with app.state.db.cursor() as cur:
                cur.execute("SELECT 1")
            database = "ok"
        except psycopg2.Error as exc:
            database = f"unavailable: {exc}".strip()
        hub = app.state.hub
        live = "ok" if hub.ready.is_set() else f"connecting: {hub.error or 'not yet'}"
        return {"status": "ok", "service": "crm-api", "database": database, "live_stream": live}

    static = Path(__file__).parent / "static"
    dashboard = (static / "dashboard.html").read_bytes()
    assets = {p.name: p.read_bytes() for p in (static / "vendor").iterdir() if p.suffix in (".js", ".css")}
    page_headers = {"Cache-Control": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                               "frame-ancestors 'none'"}

    @app.get("/dashboard", include_in_schema=False)
    def get_dashboard() -> Response:
        """The operations dashboard: live satisfaction, pipeline health and customer lookup, in
        English and Simplified Chinese, for signed-in operators."""
        return Response(dashboard, media_type="text/html; charset=utf-8", headers=page_headers)

    @app.get("/dashboard/assets/{name}", include_in_schema=False)
    def get_asset(name: str) -> Response:
        """The vendored libraries of the dashboard (uPlot)."""
        if name not in assets:
            return JSONResponse({"error": f"no asset {name!r}"}, status_code=404)
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(assets[name], media_type=f"{kind}; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    auth.document_scopes(app)
    auth.check_routes(app, OPEN_ROUTES)  # every route needs a scope unless it is listed as open
    return app
