"""``crm-api``: the query API process."""
from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.common import settings as settings_mod
from services.common.structured_logging import configure


def run() -> None:
    settings = settings_mod.load()
    configure("crm-api", settings.log_level, settings.log_json)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None,
                access_log=False, server_header=False, **settings_mod.uvicorn_proxy(settings))


if __name__ == "__main__":
    run()
