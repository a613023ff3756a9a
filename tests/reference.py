"""The reference the read model must equal: the pure folds applied to the accepted events at once."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import orjson

from events.customer_events import CustomerEvent, resolved_cloudevent
from events.envelope import InvalidEvent, validate
from projections import customer_view
from projections.identity import IdentityInput, Snapshot, resolve


def reference_views(raw_events: list[dict], default_region: str = "CN") -> dict[str, dict]:
    """customer_id -> view, for the valid events among ``raw_events`` (each applied once)."""
    touchpoints = {}
    for raw in raw_events:
        try:
            tp = validate(raw, received_at=datetime.now(timezone.utc), default_region=default_region)
        except InvalidEvent:
            continue
        touchpoints.setdefault(tp.key, tp)
    result = resolve(Snapshot(), [IdentityInput(tp.key, tp.id, tp.type, tp.time, tuple(i.key for i in tp.identifiers))
                                  for tp in touchpoints.values()])
    grouped: dict[str, list[CustomerEvent]] = defaultdict(list)
    for tp in touchpoints.values():
        cid = result.assignments[tp.key]
        grouped[cid].append(CustomerEvent.from_cloudevent(orjson.loads(orjson.dumps(resolved_cloudevent(tp, cid)))))
    return {cid: orjson.loads(orjson.dumps(customer_view.apply_all(customer_view.empty(cid), evs)))
            for cid, evs in grouped.items()}
