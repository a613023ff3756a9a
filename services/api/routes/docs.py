"""``/v1/asyncapi.json`` and ``/v1/asyncapi.yaml``: the AsyncAPI 3 document of every Kafka topic, with this
deployment's partition count and replication factor (the committed ``docs/asyncapi.yaml`` has the defaults)."""
from __future__ import annotations

from functools import lru_cache

import orjson
from fastapi import APIRouter, Response

from events.asyncapi import document, to_yaml
from services.api.deps import SettingsDep

router = APIRouter(prefix="/v1", tags=["documentation"])


@lru_cache(maxsize=4)
def _rendered(partitions: int, replication_factor: int) -> tuple[bytes, bytes]:
    doc = document(partitions, replication_factor)
    return orjson.dumps(doc), to_yaml(doc).encode()


@router.get("/asyncapi.json", response_class=Response,
            responses={200: {"content": {"application/json": {}}, "description": "an AsyncAPI 3.0.0 document"}})
def asyncapi_json(settings: SettingsDep) -> Response:
    """The AsyncAPI 3.0.0 document of every topic (keys, message schemas, partitions, cleanup policy), as JSON."""
    body, _ = _rendered(settings.partitions, settings.replication_factor)
    return Response(body, media_type="application/json")


@router.get("/asyncapi.yaml", response_class=Response,
            responses={200: {"content": {"application/yaml": {}}, "description": "an AsyncAPI 3.0.0 document"}})
def asyncapi_yaml(settings: SettingsDep) -> Response:
    """The same document as YAML."""
    _, body = _rendered(settings.partitions, settings.replication_factor)
    return Response(body, media_type="application/yaml; charset=utf-8")
