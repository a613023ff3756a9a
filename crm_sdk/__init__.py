"""A small Python client for channel systems: send touchpoints to the CRM platform.

* ``Client``: HTTP to the collector (``POST /v1/events``) with retries and backoff on 429, 503 and
  connection errors (``Retry-After`` honoured), a too-large batch split in halves, and ``Batcher``
  for batching in the background (by count, bytes and time).
* ``KafkaSink``: for trusted producers inside the platform, CloudEvents written straight to
  ``crm.touchpoints`` with kafka-python, validated by the platform's own models and sealed with the
  key vault before they leave the process.
* ``event()``: builds a CloudEvent with an id, a source and a time.

    from crm_sdk import Client, event

    with Client("https://collector.example.com", api_key="crm_sk_...") as crm:
        result = crm.send([event("call.ended", {"call_id": "c-1", "phone_number": "+8613912345678",
                                                "talk_seconds": 185}, source="urn:pbx:shanghai")])
        assert result.ok, result.rejected
"""
from crm_sdk.cloudevents import event
from crm_sdk.http import Batcher, Client, SendResult, Sender, events_url, retry_after_seconds

__all__ = ["Batcher", "Client", "KafkaSink", "SendResult", "Sender", "event", "events_url", "retry_after_seconds"]


def __getattr__(name: str):  # KafkaSink needs kafka-python and the platform's models: imported on use
    if name == "KafkaSink":
        from crm_sdk.kafka import KafkaSink

        return KafkaSink
    raise AttributeError(name)
