"""``crm-webhooks``: the webhook dispatcher process (run several: they share the partitions and the deliveries)."""
from __future__ import annotations

import uvicorn

from services.common import settings as settings_mod
from services.common.structured_logging import configure
from services.webhooks.app import create_app


def run() -> None:
    settings = settings_mod.load()
    configure("crm-webhooks", settings.log_level, settings.log_json)
    uvicorn.run(create_app(settings), host=settings.webhooks_host, port=settings.webhooks_port, log_config=None,
                access_log=False, server_header=False)


if __name__ == "__main__":
    run()
