"""Response models of the query API (kept apart from the stored rows)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    error: str
    detail: Any | None = None


class StampedValue(BaseModel):
    value: Any
    at: str = Field(description="event time the value was observed at")
    event: str = Field(description="key of the event that set it")
    source: str = Field(description="channel or source of that event")


class Contact(BaseModel):
    at: str
    type: str
    channel: str


class Orders(BaseModel):
    count: int
    revenue: dict[str, str] = Field(description="gross order value per currency")
    refunded: dict[str, str]
    net_revenue: dict[str, str]
    first_at: str | None
    last_at: str | None


class Ticket(BaseModel):
    status: str
    kind: str
    at: str


class Satisfaction(BaseModel):
    answers: int
    csat: StampedValue | None
    nps: StampedValue | None


class CustomerOut(BaseModel):
    customer_id: str
    requested_id: str | None = Field(None, description="the id asked for, when it is an alias of this customer")
    aliases: list[str] = Field(description="earlier customer ids merged into this one")
    display_name: str | None
    identities: dict[str, list[str]]
    traits: dict[str, StampedValue]
    contacts: dict[str, int] = Field(description="touchpoints per channel")
    contacts_total: int
    first_contact: Contact | None
    last_contact: Contact | None
    orders: Orders
    tickets: dict[str, Ticket]
    open_tickets: list[str]
    open_complaints: list[str]
    satisfaction: Satisfaction
    consent: dict[str, StampedValue]
    event_count: int
    last_event_at: str | None
    updated_at: datetime


class CustomerList(BaseModel):
    items: list[CustomerOut]


class TimelineItem(BaseModel):
    event_id: str
    source: str
    type: str
    channel: str
    time: datetime
    summary: str
    data: dict[str, Any]


class Timeline(BaseModel):
    customer_id: str
    items: list[TimelineItem]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null at the end")
