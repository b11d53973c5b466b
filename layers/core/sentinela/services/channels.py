"""Sending through any channel (``sentinela.domain.channel``) with bounded retries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from sentinela.domain.channel import ChannelError, Receipt, Sender


class Retrying:
    """A :class:`Sender` that tries ``attempts`` times what may succeed later (a permanent error is
    raised at once), with exponential backoff and full jitter: rangers' phones share one account."""

    def __init__(self, channel: Sender, *, attempts: int = 3, backoff_s: float = 0.5,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.channel = channel
        self.attempts, self.backoff_s = max(1, attempts), backoff_s
        self._sleep = sleep

    @property
    def name(self) -> str:
        return self.channel.name

    def address(self, person: Mapping[str, Any]) -> str | None:
        return self.channel.address(person)

    def send(self, to: str, body: str, status_callback: str | None = None) -> Receipt:
        for attempt in range(1, self.attempts + 1):
            try:
                return self.channel.send(to, body, status_callback)
            except ChannelError as exc:
                if exc.permanent or attempt == self.attempts:
                    raise
                self._sleep(random.uniform(0, self.backoff_s * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")
