"""``crm-mail``: the email channel's SMTP receiver (``CRM_MAIL_HOST:CRM_MAIL_PORT``) beside its
``/healthz`` and ``/metrics`` (``CRM_MAIL_WEB_PORT``), in one process and one event loop.

Wiring only: settings → the SDK client to the collector → the handler (services.mail.receiver) →
aiosmtpd. SIGTERM (uvicorn's handler) stops taking connections, lets messages already in DATA get
their answer, then exits.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from aiosmtpd.smtp import SMTP
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common import settings as settings_mod
from services.common.settings import Settings
from services.common.structured_logging import configure
from services.mail.receiver import MailHandler, Relay

log = logging.getLogger("services.mail")

DRAIN_S = 20.0


def _client(settings: Settings):
    from crm_sdk import Client

    # few retries: the SMTP client retries the whole message itself after a 451
    return Client(settings.collector_url, api_key=settings.api_key.get_secret_value() or None, timeout=15.0,
                  max_retries=2, backoff=0.2, max_backoff=1.0, max_retry_after=2.0, user_agent="crm-mail/1")


def create_app(settings: Settings) -> FastAPI:
    name = settings.mail_source_name.strip() or socket.gethostname()
    client = _client(settings)
    handler = MailHandler(
        domains=settings.mail_domains.split(","), capture_address=settings.mail_capture_address,
        source=f"urn:crm:mail:{name}", max_event_bytes=settings.max_event_bytes,
        relay=Relay.parse(settings.mail_relay_host), fax_senders=settings.mail_fax_senders.split(","),
        deliver=lambda events: asyncio.to_thread(client.send, events))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(handler, data_size_limit=settings.mail_max_bytes, hostname=name, ident="crm-mail",
                         enable_SMTPUTF8=True, loop=loop),
            host=settings.mail_host, port=settings.mail_port)
        app.state.smtp = server
        log.info("crm-mail listening", extra={"smtp": f"{settings.mail_host}:{settings.mail_port}",
                                              "domains": sorted(handler.domains), "source": handler.source,
                                              "relay": settings.mail_relay_host or None})
        try:
            yield
        finally:
            server.close()
            if not await handler.drain(DRAIN_S):
                log.warning("stopped with messages still in DATA", extra={"in_flight": handler.in_flight})
            await asyncio.to_thread(client.close)
            log.info("crm-mail stopped")

    app = FastAPI(title="crm-mail", lifespan=lifespan, openapi_url=None)

    @app.get("/healthz")
    async def healthz(response: Response) -> dict[str, Any]:
        server = getattr(app.state, "smtp", None)
        serving = bool(server is not None and server.is_serving())
        response.status_code = 200 if serving else 503
        return {"status": "ok" if serving else "starting", "service": "crm-mail",
                "smtp": f"{settings.mail_host}:{settings.mail_port}", "in_flight": handler.in_flight}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def run() -> None:
    settings = settings_mod.load()
    configure("crm-mail", settings.log_level, settings.log_json)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command and address
    uvicorn.run(create_app(settings), host=settings.mail_host, port=settings.mail_web_port, log_config=None,
                access_log=False, server_header=False)


if __name__ == "__main__":
    run()
