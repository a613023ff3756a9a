"""Inbound faxes as fax gateways deliver them by webhook, mapped to ``fax.received`` (pure: no I/O).

The generic JSON form (POST /v1/hooks/fax) takes what every fax service's "fax received" callback
carries: the fax's id, the sender's and the receiving number, the page count and the document's
name, type and size. The document itself is never sent to the platform, nor kept.
"""
from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from events.touchpoints import Str200

DOCUMENT_TYPES = ("application/pdf", "image/tiff", "image/tif")


class FaxDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    filename: Str200 | None = None
    content_type: Str200 = Field("application/pdf", description="application/pdf or image/tiff")
    size: int = Field(ge=0, description="bytes")


class GenericFax(BaseModel):
    """One received fax, from any fax gateway (POST /v1/hooks/fax)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    fax_id: Str200 = Field(min_length=1, description="the gateway's id of the fax")
    from_number: Str200 = Field(alias="from", min_length=1, description="the sender's fax number")
    to_number: Str200 | None = Field(None, alias="to", description="the number it reached")
    pages: int | None = Field(None, ge=0, le=100_000)
    document: FaxDocument | None = None
    at: AwareDatetime | None = Field(None, description="when it was received (RFC 3339 with an offset)")
    source: str = Field("fax", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="the gateway's name, e.g. efax")
    properties: dict[str, Any] = Field(default_factory=dict)


def generic_event(fax: GenericFax) -> dict[str, Any]:
    """The ``fax.received`` CloudEvent of one gateway callback (its id derived from the gateway's)."""
    data: dict[str, Any] = {"fax_id": fax.fax_id, "from_number": fax.from_number, "to_number": fax.to_number,
                            "pages": fax.pages, "gateway": fax.source,
                            "document": fax.document.model_dump(exclude_none=True) if fax.document else None,
                            "properties": fax.properties or None}
    event = {"specversion": "1.0", "id": f"fax:{fax.source}:{fax.fax_id}"[:256], "source": f"urn:fax:{fax.source}",
             "type": "fax.received", "data": {k: v for k, v in data.items() if v is not None}}
    if fax.at:
        event["time"] = fax.at.isoformat()
    return event
