"""When a failed delivery is tried again (pure: the random source is passed in)."""
from __future__ import annotations

import random
from collections.abc import Sequence


def retry_delay(tries: int, schedule: Sequence[float], jitter: float, rng: random.Random,
                retry_after_s: float | None = None) -> float | None:
    """Seconds to wait after the ``tries``-th failed attempt, or ``None`` when that was the last.

    The wait is the schedule's, spread by ``±jitter`` (a fraction) so that deliveries failed
    together do not come back together; a receiver's ``Retry-After`` lengthens it, up to the
    schedule's longest wait.
    """
    if tries < 1:
        raise ValueError("tries counts failed attempts, from 1")
    if tries > len(schedule):
        return None
    delay = schedule[tries - 1] * rng.uniform(1 - jitter, 1 + jitter)
    if retry_after_s is not None and retry_after_s > delay:
        delay = min(retry_after_s, max(schedule))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header given in seconds (an HTTP date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
