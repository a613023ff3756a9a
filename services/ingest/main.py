"""``crm-ingest``: the collector process."""
from __future__ import annotations

import uvicorn

from services.common import settings as settings_mod
from services.common.structured_logging import configure
from services.ingest.app import create_app
from services.common.publisher import KafkaPublisher
from services.common.kafka_security import KafkaSecurity


def run() -> None:
    settings = settings_mod.load()
    configure("crm-ingest", settings.log_level, settings.log_json)
    publisher = KafkaPublisher(settings.kafka_bootstrap, ack_timeout_s=settings.kafka_ack_timeout_s,
                               security=KafkaSecurity.from_settings(settings))
    app = create_app(settings, publisher)
    uvicorn.run(app, host=settings.ingest_host, port=settings.ingest_port, log_config=None,
                access_log=False, server_header=False, **settings_mod.uvicorn_proxy(settings))


if __name__ == "__main__":
    run()
