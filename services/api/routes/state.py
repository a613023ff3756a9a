"""Customer state: one customer's snapshot (as on crm.customer-state), the configured segments and
the lifecycle stages with how many customers each holds."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from events.feed import LIFECYCLE_STAGES, CustomerSnapshot
from services.api.deps import DatabaseDep, SettingsDep, state_rules
from services.api.routes.customers import NOT_FOUND, _resolve
from services.common.apikeys import CUSTOMERS_READ
from services.common.auth import require

router = APIRouter(tags=["customer state"], dependencies=[Depends(require(CUSTOMERS_READ))])

STAGE_LABELS = {
    "prospect": {"en": "Prospect", "zh": "潜在客户"},
    "intent": {"en": "Showing intent", "zh": "有意向客户"},
    "customer": {"en": "Customer", "zh": "购买客户"},
    "loyal": {"en": "Loyal", "zh": "忠实客户"},
    "at_risk": {"en": "At risk", "zh": "有流失风险的客户"},
    "churned": {"en": "Churned (lost)", "zh": "流失客户"},
}


class SegmentOut(BaseModel):
    name: str
    label: dict[str, str] = Field(description="display names by language (en, zh)")
    purpose: str = Field("service", description="what the audience is used for; all but service hold only "
                                                "customers who consent to it")
    channel: str | None = Field(None, description="the channel that consent must cover (all: every channel); "
                                                  "null for service")
    customers: int = Field(description="customers in the segment now")


class SegmentList(BaseModel):
    items: list[SegmentOut]


class StageOut(BaseModel):
    stage: str
    label: dict[str, str]
    customers: int
    rule: str | None = Field(description="the configured rule that puts customers in the stage")


class StageList(BaseModel):
    items: list[StageOut]


@router.get("/v1/customers/{customer_id}/state", response_model=CustomerSnapshot, responses=NOT_FOUND)
def get_state(customer_id: str, db: DatabaseDep) -> dict:
    """The customer's latest state snapshot (the record on crm.customer-state); an alias answers
    with the survivor's."""
    with db.cursor() as cur:
        live = _resolve(cur, customer_id)
        cur.execute("SELECT snapshot FROM customer_state WHERE customer_id = %s AND live", (live or customer_id,))
        row = cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no customer state for {customer_id!r}")
    return row[0]


@router.get("/v1/segments", response_model=SegmentList)
def list_segments(db: DatabaseDep, settings: SettingsDep) -> SegmentList:
    """The configured segments (config/customer-state.toml) with their current size."""
    rules = state_rules(settings)
    with db.cursor() as cur:
        cur.execute("SELECT s, count(*) FROM customer_state, unnest(segments) AS s WHERE live GROUP BY s")
        counts = dict(cur.fetchall())
    return SegmentList(items=[SegmentOut(name=s.name, label=s.label or {"en": s.name}, purpose=s.purpose,
                                         channel=s.channel if s.purpose != "service" else None,
                                         customers=counts.get(s.name, 0))
                              for s in rules.segments])


@router.get("/v1/lifecycle", response_model=StageList)
def list_stages(db: DatabaseDep, settings: SettingsDep) -> StageList:
    """The lifecycle stages (客户生命周期) with how many customers are in each now."""
    rules = {s.stage: s.rule for s in reversed(state_rules(settings).stages)}
    with db.cursor() as cur:
        cur.execute("SELECT lifecycle, count(*) FROM customer_state WHERE live GROUP BY lifecycle")
        counts = dict(cur.fetchall())
    return StageList(items=[StageOut(stage=s, label=STAGE_LABELS[s], customers=counts.get(s, 0),
                                     rule=rules.get(s, "no rule matched" if s == "prospect" else None))
                            for s in LIFECYCLE_STAGES])
