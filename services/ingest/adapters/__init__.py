"""Channel adapters: the call center, the web shop, the mailbox and the survey speak to us as they are.

Each module here turns a channel system's own requests (a tracker's beacon, a Twilio callback, a
Shopify webhook, a survey answer) into the platform's CloudEvents and hands them to the collector's
``Intake`` (services/ingest/intake.py): the same validation, limits, sealing and "2xx means durable"
answer as ``POST /v1/events``.

A module takes part by defining ``install(app, intake, settings)``, which adds its routes, and
``OPEN_ROUTES``: the routes it authenticates itself (a platform's signature, a signed survey link, a
publishable key in the URL) rather than by an API key scope. Modules are found by name, in order.
"""
from __future__ import annotations

import importlib
import pkgutil

from fastapi import FastAPI

from services.common.settings import Settings


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def install_all(app: FastAPI, intake, settings: Settings) -> frozenset[str]:
    """Install every adapter; returns the routes they declare open (``check_routes`` form)."""
    open_routes: set[str] = set()
    for name in modules():
        module = importlib.import_module(f"{__name__}.{name}")
        install = getattr(module, "install", None)
        if install is None:
            continue
        install(app, intake, settings)
        open_routes |= set(getattr(module, "OPEN_ROUTES", ()))
    return frozenset(open_routes)
