"""Alert record -> the site's incident (sentinela.services.incidents) -> SMS, idempotent per (incident, ranger, step);
here: the send with its bounded retries."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sentinela.adapters.metrics import MetricSink, NullMetrics
from sentinela.adapters.sms import SmsError, SmsGateway
from sentinela.domain.alert import Alert
from sentinela.domain.repositories import Repositories
from sentinela.services.incidents import IncidentService, NotifyResult

log = logging.getLogger(__name__)


class NotifyService:
    def __init__(self, store: Repositories, gateway: Callable[[], SmsGateway], *, metrics: MetricSink | None = None,
                 attempts: int = 3, backoff_s: float = 0.5, policy: dict[str, Any] | None = None,
                 status_callback: str | None = None, presign: Callable[[Any], str] | None = None,
                 link_minutes: int = 60) -> None:
        self.store = store
        self._gateway = gateway
        self.metrics: MetricSink = metrics or NullMetrics()
        self.attempts, self.backoff_s = attempts, backoff_s
        self.policy, self.status_callback = policy, status_callback
        self.presign, self.link_minutes = presign, link_minutes

    def handle_alert(self, alert: Alert) -> NotifyResult:
        """Policy, then the site's incident: only an incident's opening texts (sentinela.services.incidents)."""
        return IncidentService(self.store, self._send, metrics=self.metrics, policy=self.policy,
                               status_callback=self.status_callback, presign=self.presign,
                               link_minutes=self.link_minutes).on_alert(alert)

    def _send(self, to: str, body: str, status_callback: str | None = None) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return self._gateway().send(to, body, status_callback)
            except SmsError as exc:
                if exc.permanent or attempt == self.attempts:
                    raise
                # Exponential backoff with full jitter: rangers' phones share one Twilio account.
                time.sleep(random.uniform(0, self.backoff_s * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")
