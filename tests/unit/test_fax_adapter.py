"""The fax gateway webhook's generic form mapped to fax.received."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from events.envelope import validate
from services.ingest.adapters import _fax_map as m

NOW = datetime(2026, 11, 20, 3, 0, tzinfo=timezone.utc)


def test_a_gateway_callback_maps_to_fax_received_with_the_sender_as_phone():
    fax = m.GenericFax.model_validate({
        "fax_id": "FX-20261120-0012", "from": "+86 21 6666 8888", "to": "+86 532 8888 0000", "pages": 3,
        "document": {"filename": "purchase-order.pdf", "content_type": "application/pdf", "size": 48213},
        "source": "efax", "at": "2026-11-20T10:15:02+08:00"})
    event = m.generic_event(fax)
    assert event["id"] == "fax:efax:FX-20261120-0012" and event["source"] == "urn:fax:efax"
    assert event["type"] == "fax.received" and event["time"] == "2026-11-20T10:15:02+08:00"
    assert event["data"] == {"fax_id": "FX-20261120-0012", "from_number": "+86 21 6666 8888",
                             "to_number": "+86 532 8888 0000", "pages": 3, "gateway": "efax",
                             "document": {"filename": "purchase-order.pdf", "content_type": "application/pdf",
                                          "size": 48213}}
    tp = validate(event, received_at=NOW)
    assert tp.primary_identifier.key == "phone:+862166668888"
    assert m.generic_event(fax) == event  # the same callback again: the same event id


@pytest.mark.parametrize("body, field", [
    ({"from": "+8621666688"}, "fax_id"),
    ({"fax_id": "1"}, "from"),
    ({"fax_id": "1", "from": "+8621666688", "pages": -1}, "pages"),
    ({"fax_id": "1", "from": "+8621666688", "document": {"filename": "a.pdf"}}, "document.size"),
    ({"fax_id": "1", "from": "+8621666688", "content": "JVBERi0="}, "content"),
    ({"fax_id": "1", "from": "+8621666688", "at": "2026-11-20T10:15:02"}, "at"),
])
def test_the_form_names_the_wrong_field(body, field):
    with pytest.raises(ValidationError) as err:
        m.GenericFax.model_validate(body)
    assert field in str(err.value), str(err.value)
