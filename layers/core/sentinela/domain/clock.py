"""The one clock, and the two ways Sentinela writes a time.

- :func:`now`: when a decision is made (incidents, escalation, replies, silence): UTC now, unless pinned
  (:func:`pin`, for tests and replays; the local stack runs the real handlers in one process, so a pinned
  clock moves them all).
- :func:`stamp`: when a record was written (``created_at``, ``updated_at``): always the wall clock, pinned
  or not, with microseconds, so two writes in one second still sort in order.
- :func:`iso`: seconds, ``2026-11-28T14:00:00Z``: the times people read and keys sort by (incidents,
  escalation, recorded_at, upload expiry). :func:`iso_us`: the same with microseconds (silence episodes).
- :func:`parse_time` reads any of them (and ``+00:00`` offsets); :func:`epoch` is DynamoDB's TTL unit.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_pinned: datetime | None = None


def now() -> datetime:
    return _pinned if _pinned is not None else datetime.now(UTC)


def pin(when: datetime | str | None) -> None:
    """Pin the clock at ``when`` (an aware datetime or ISO text); ``None`` lets it run again."""
    global _pinned
    _pinned = parse_time(when) if isinstance(when, str) else when


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_us(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stamp() -> str:
    """A record's write time: the wall clock (never pinned), :func:`iso_us`."""
    return iso_us(datetime.now(UTC))


def epoch() -> int:
    """Seconds since 1970 on the wall clock (DynamoDB TTL attributes)."""
    return int(time.time())


def parse_time(text: str) -> datetime:
    """UTC ISO 8601 as Sentinela writes it (``...Z``, with or without fractions) -> aware datetime (UTC)."""
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
