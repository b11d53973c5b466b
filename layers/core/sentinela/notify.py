"""Alert record -> on-call rangers -> one SMS each, idempotent per (alert, ranger, step)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .messages import render_alert
from .metrics import MetricSink, NullMetrics
from .sms import SmsError, SmsGateway, mask_phone
from .store import Store

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """A send that may succeed later (Twilio 429/5xx, timeouts): the stream record is retried."""


@dataclass
class NotifyResult:
    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def alert_ref(alert: dict[str, Any]) -> str:
    """A short reference a ranger can read out on the radio."""
    import hashlib

    return hashlib.sha1(f"{alert['clip_id']}|{alert['threat']}".encode()).hexdigest()[:6].upper()


def on_call(rangers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rangers if r.get("on_call", True) and not r.get("number_invalid")]


class NotifyService:
    def __init__(self, store: Store, gateway: Callable[[], SmsGateway], *, metrics: MetricSink | None = None,
                 attempts: int = 3, backoff_s: float = 0.5) -> None:
        self.store = store
        self._gateway = gateway
        self.metrics: MetricSink = metrics or NullMetrics()
        self.attempts, self.backoff_s = attempts, backoff_s

    def handle_alert(self, alert: dict[str, Any]) -> NotifyResult:
        res = NotifyResult()
        if alert.get("alert") is not True:
            return res  # the stream filter should not have let it through; re-checked on purpose
        site = self.store.get_site(alert["site_id"])
        rangers = on_call(self.store.rangers(alert["site_id"]))
        pk = f"CLIP#{alert['clip_id']}"
        if not rangers:
            self.metrics.add_metric("AlertsWithoutRanger", "Count", 1)
            log.warning("no on-call ranger for site %s", alert["site_id"])
            return res
        ref = alert_ref(alert)
        retry = False
        for r in rangers:
            body = render_alert(alert, site, r.get("lang", "es"), ref)
            record = {"to": r["phone"], "body": body, "ranger_id": r["ranger_id"], "threat": alert["threat"],
                      "site_id": alert["site_id"], "ref": ref}
            if not self.store.claim_send(pk, r["ranger_id"], alert["threat"], record):
                res.skipped.append(r["ranger_id"])
                continue
            try:
                sent = self._send(r["phone"], body)
            except SmsError as exc:
                status = "failed_permanent" if exc.permanent else "failed_retry"
                self.store.record_send(pk, r["ranger_id"], alert["threat"],
                                       {"status": status, "error_code": exc.code, "error": str(exc)})
                self.metrics.add_metric("SmsFailed", "Count", 1)
                log.warning("SMS to %s failed: %s", mask_phone(r["phone"]), exc)
                res.failed.append(r["ranger_id"])
                retry = retry or exc.retryable
                continue
            self.store.record_send(pk, r["ranger_id"], alert["threat"], {"status": "sent", "sid": sent.sid})
            self.metrics.add_metric("SmsSent", "Count", 1)
            res.sent.append(r["ranger_id"])
        if retry:
            raise RetryLater(f"{len(res.failed)} send(s) failed and may succeed later")
        return res

    def _send(self, to: str, body: str) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return self._gateway().send(to, body)
            except SmsError as exc:
                if exc.permanent or attempt == self.attempts:
                    raise
                # Exponential backoff with full jitter: rangers' phones share one Twilio account.
                time.sleep(random.uniform(0, self.backoff_s * 2 ** (attempt - 1)))
        raise AssertionError("unreachable")
