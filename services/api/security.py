"""The query API's authentication: the scope each route needs and the routes open to anyone.

Routes declare their scope with ``Depends(require(scope))`` (or take the caller as one of the
annotated parameters below, to record it in the audit log). The app refuses to start when a
route needs no scope and is not in ``OPEN_ROUTES``; the README (Security and privacy) has the table.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.common.apikeys import ADMIN, CUSTOMERS_READ, FEED_MANAGE, INDICATORS_READ
from services.common.auth import Caller, require

OPEN_ROUTES = frozenset({
    "/healthz", "/metrics",                                          # operations: no customer data
    "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",     # the HTTP API's documentation
    "/v1/asyncapi.json", "/v1/asyncapi.yaml",                        # the Kafka topics' documentation
    "/dashboard", "/",                                               # the dashboard's page (its data needs a key)
    "/dashboard/assets/{name}",                                      # its vendored libraries
    "/v1/session",                                                   # signing in and out (checks its own credentials)
})
"""Routes anyone may call: none of them holds customer data."""

CustomersReader = Annotated[Caller, Depends(require(CUSTOMERS_READ))]
IndicatorsReader = Annotated[Caller, Depends(require(INDICATORS_READ))]
FeedManager = Annotated[Caller, Depends(require(FEED_MANAGE))]
Admin = Annotated[Caller, Depends(require(ADMIN))]
