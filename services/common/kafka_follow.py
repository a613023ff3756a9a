"""Following a Kafka topic for as long as a process runs, through broker outages."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from aiokafka import AIOKafkaConsumer


async def follow(make: Callable[[], AIOKafkaConsumer], start: Callable[[AIOKafkaConsumer], Awaitable[None]],
                 handle: Callable[[dict], Awaitable[None]], lost: Callable[[str, float], None], *,
                 max_records: int = 1000) -> None:
    """Consume until cancelled: ``make`` builds a consumer, ``start`` starts (and positions) it,
    ``handle`` takes each ``getmany`` result. On any failure the consumer is stopped,
    ``lost(error, retry_in_s)`` is told, and a new one starts after a backoff of 0.5 s doubling to
    10 s (reset once started)."""
    delay = 0.5
    while True:
        consumer = make()
        try:
            await start(consumer)
            delay = 0.5
            while True:
                await handle(await consumer.getmany(timeout_ms=1000, max_records=max_records))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lost(f"{type(exc).__name__}: {exc}", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        finally:
            try:
                await consumer.stop()
            except Exception:
                pass
