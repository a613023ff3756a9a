"""Orders: each order's state and status history (the ``customer_order`` read model, a fold of the
order.* events kept by the view stage), one by id or a customer's."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from services.api.deps import DatabaseDep, WriterDep
from services.api.routes.customers import NOT_FOUND, _resolve
from services.api.schemas import Problem
from services.api.security import CustomersReader
from services.common import audit
from services.common.apikeys import CUSTOMERS_READ
from services.common.auth import require

router = APIRouter(tags=["orders"], dependencies=[Depends(require(CUSTOMERS_READ))])


class OrderStatus(BaseModel):
    status: str = Field(description="placed, paid, shipped, delivered, installation_scheduled, "
                                    "installation_completed, return_requested, returned, cancelled or refunded")
    at: datetime
    event: str = Field(description="the event's key (source + id)")
    carrier: str | None = None
    tracking_number: str | None = None
    amount: str | None = None
    total: str | None = None
    currency: str | None = None
    method: str | None = None
    promised_at: str | None = None
    scheduled_for: str | None = None


class Installation(BaseModel):
    scheduled_for: datetime | None = None
    completed_at: datetime | None = None


class OrderOut(BaseModel):
    order_id: str
    customer_id: str
    status: str | None = Field(description="the status of the latest event (event time)")
    currency: str | None = None
    total: str | None = None
    placed_at: datetime | None = None
    updated_at: datetime | None = Field(None, description="time of the latest event")
    paid: str | None = Field(None, description="sum of the payments")
    refunded: str | None = Field(None, description="sum of the refunds")
    carrier: str | None = None
    tracking_number: str | None = None
    shipped_at: datetime | None = None
    promised_at: datetime | None = Field(None, description="delivery promised by (from the shipment)")
    delivered_at: datetime | None = None
    late: bool | None = Field(None, description="delivered after the promised time; null until both are known")
    installation: Installation | None = Field(None, description="appliances: the installation appointment")
    cancelled_at: datetime | None = None
    returned_at: datetime | None = None
    history: list[OrderStatus] = Field(description="every status event, in event-time order")


class OrderList(BaseModel):
    customer_id: str
    items: list[OrderOut]


def _out(customer_id: str, state: dict[str, Any]) -> OrderOut:
    return OrderOut(customer_id=customer_id, **state)


@router.get("/v1/orders/{order_id}", response_model=OrderOut,
            responses={404: {"model": Problem, "description": "no such order"}})
def get_order(order_id: str, db: DatabaseDep, caller: CustomersReader, writer: WriterDep) -> OrderOut:
    """One order: its current status and its status history."""
    with db.cursor() as cur:
        cur.execute("SELECT customer_id, state FROM customer_order WHERE order_id = %s", (order_id,))
        row = cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no order {order_id!r}")
    audit.record(writer, caller, "order.read", row[0], {"order_id": order_id})
    return _out(row[0], row[1])


@router.get("/v1/customers/{customer_id}/orders", response_model=OrderList, responses=NOT_FOUND)
def get_customer_orders(customer_id: str, db: DatabaseDep, caller: CustomersReader, writer: WriterDep,
                        limit: Annotated[int, Query(ge=1, le=500)] = 100) -> OrderList:
    """The customer's orders, latest activity first (an alias answers with the survivor's)."""
    with db.cursor() as cur:
        survivor = _resolve(cur, customer_id)
        if survivor is None:
            raise HTTPException(404, f"no customer {customer_id!r}")
        cur.execute("""SELECT customer_id, state FROM customer_order WHERE customer_id = %s
                       ORDER BY last_event_at DESC NULLS LAST, order_id LIMIT %s""", (survivor, limit))
        rows = cur.fetchall()
    audit.record(writer, caller, "customer.orders", survivor, {"requested": customer_id, "items": len(rows)})
    return OrderList(customer_id=survivor, items=[_out(c, s) for c, s in rows])
