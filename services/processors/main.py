"""``crm-processor``: one worker process running the identity and customer-view stages."""
from __future__ import annotations

import argparse
import faust

from services.common import settings as settings_mod
from services.common.structured_logging import dict_config
from services.processors.app import STAGES, build_app


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crm-processor", description=__doc__)
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated stages to run, of: {', '.join(STAGES)} (default: CRM_PROCESSOR_STAGES)")
    parser.add_argument("--web-port", type=int, default=None, help="port of /healthz and /metrics")
    args = parser.parse_args(argv)
    settings = settings_mod.load()
    if args.web_port is not None:
        settings.processor_web_port = args.web_port
    stages = [s.strip() for s in (args.stages or settings.processor_stages).split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages: {', '.join(sorted(unknown))}")
    app = build_app(settings, stages)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                          logging_config=dict_config("crm-processor", settings.log_level, settings.log_json))
    worker.execute_from_commandline()


if __name__ == "__main__":
    run()
