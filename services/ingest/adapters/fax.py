"""Fax gateways: ``POST /v1/hooks/fax``, the generic JSON form of a received fax (``events:write``,
a secret key: a publishable key gets 403). Faxes that arrive as mail from a fax-to-mail gateway
(HylaFAX ``faxrcvd``) are recognized by crm-mail (services/mail/parse.py)."""
from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from services.common.apikeys import EVENTS_WRITE
from services.common.auth import Caller, require_secret
from services.common.settings import Settings
from services.ingest.adapters._fax_map import GenericFax, generic_event
from services.ingest.intake import ADAPTER_REQUESTS, Intake, read_body

PATH = "/v1/hooks/fax"
OPEN_ROUTES: frozenset[str] = frozenset()


def _refuse(status: int, message: str, **extra) -> JSONResponse:
    ADAPTER_REQUESTS.labels("fax", str(status)).inc()
    return JSONResponse({"error": message, **extra}, status_code=status)


def install(app: FastAPI, intake: Intake, settings: Settings) -> None:
    @app.post(PATH, tags=["channel adapters"], summary="A received fax, from any fax gateway", status_code=202,
              responses={202: {"description": "the fax is durable"},
                         400: {"description": "not JSON, or not a fax object / array of them"},
                         413: {"description": "the request is over the size limit"},
                         422: {"description": "a field of the form is missing or wrong; nothing accepted"}})
    async def fax(request: Request, caller: Annotated[Caller, Depends(require_secret(EVENTS_WRITE))]) -> Response:
        body = await read_body(request, settings.max_batch_bytes)
        if body is None:
            return _refuse(413, f"request body is over the limit of {settings.max_batch_bytes} bytes")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _refuse(400, f"the body is not JSON: {exc}")
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            return _refuse(400, "the body must be a fax object or a non-empty array of them")
        faxes, problems = [], []
        for index, item in enumerate(items):
            try:
                faxes.append(GenericFax.model_validate(item))
            except ValidationError as exc:
                problems += [{"index": index, "field": ".".join(str(p) for p in e["loc"]) or "(fax)",
                              "message": e["msg"]} for e in exc.errors(include_url=False)]
        if problems:
            first = problems[0]
            return _refuse(422, f"invalid fax: {first['field']}: {first['message']}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), detail=problems)
        outcome = await intake.accept(caller, [generic_event(f) for f in faxes], single=single, adapter="fax")
        return outcome.response()
