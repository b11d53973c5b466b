"""Silence is an alarm: a recorder that stopped uploading is found, and ops are told once per episode.

Classify keeps each device's last upload (``SEEN#<device>``, :meth:`Store.mark_device_seen`). A scheduled
check (functions/silence) compares it with the device's expected cadence: the registered device's
``cadence_s`` (``DEVICE#`` item), else the site's ``cadence_s``, else ``SILENCE_DEFAULT_CADENCE_S``. A
device is silent once ``SILENCE_MISSED_UPLOADS`` cadences (default 2: one late upload is weather, two
are a problem) passed without an upload. The alarm is claimed with a conditional write per episode (the
episode is named by the last upload it follows), so overlapping or repeated checks text once; when
uploads resume, the episode is closed (conditionally, once) and a recovery note goes out.

Who hears it: the site lead (the ranger the site's ``lead`` names) on the first channel that reaches them
(SMS), and the ops SNS topic (``OPS_TOPIC_ARN``: e-mail subscriptions, the same topic the CloudWatch
alarms use).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sentinela.adapters.metrics import MetricSink, NullMetrics
from sentinela.domain import clock
from sentinela.domain.channel import Sender
from sentinela.domain.phone import mask_phone
from sentinela.domain.repositories import PeopleAndDevices

log = logging.getLogger(__name__)

Publish = Callable[[str, str], Any]


@dataclass
class SilenceReport:
    checked: int = 0
    silent: list[str] = field(default_factory=list)  # "<site>/<device>" currently silent
    alerted: list[str] = field(default_factory=list)  # new episodes announced by this check
    recovered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # announcements that could not be sent (retried next check)


def _local(when: datetime, tz: str | None) -> str:
    try:
        zone = ZoneInfo(tz) if tz else UTC
    except (KeyError, ValueError):
        zone = UTC
    return when.astimezone(zone).strftime("%d/%m %H:%M")


def silence_text(lang: str, device: str, site: dict[str, Any], last: datetime, now: datetime, cadence_s: float) -> str:
    hours = (now - last).total_seconds() / 3600
    name, when, every = site.get("name", site["site_id"]), _local(last, site.get("tz")), round(cadence_s / 60)
    if lang == "en":
        return (f"SENTINELA: recorder {device} at {name} has sent no audio since {when} ({hours:.1f} h; expected "
                f"every {every} min). Check power, card and signal.")
    return (f"SENTINELA: la grabadora {device} de {name} no envia audio desde {when} ({hours:.1f} h; se "
            f"esperaba cada {every} min). Revise energia, tarjeta y señal.")


def recovery_text(lang: str, device: str, site: dict[str, Any], since: datetime, back: datetime) -> str:
    hours = (back - since).total_seconds() / 3600
    name, when = site.get("name", site["site_id"]), _local(back, site.get("tz"))
    if lang == "en":
        return f"SENTINELA: recorder {device} at {name} is uploading again ({when}) after {hours:.1f} h of silence."
    return f"SENTINELA: la grabadora {device} de {name} volvio a enviar audio ({when}) tras {hours:.1f} h en silencio."


class SilenceService:
    def __init__(self, store: PeopleAndDevices, channels: Sender | Sequence[Sender] | None, publish: Publish | None, *,
                 default_cadence_s: float = 3600.0, missed_uploads: float = 2.0,
                 metrics: MetricSink | None = None) -> None:
        self.store, self.publish = store, publish
        # In order of preference, as for incidents: the lead hears it on the first that reaches them.
        channels = () if channels is None else channels
        self.channels: tuple[Sender, ...] = tuple(channels) if isinstance(channels, Sequence) else (channels,)
        self.default_cadence_s, self.missed_uploads = default_cadence_s, missed_uploads
        self.metrics: MetricSink = metrics or NullMetrics()

    def check(self, now: datetime) -> SilenceReport:
        rep = SilenceReport()
        for site in self.store.list_sites():
            self._check_site(site, now, rep)
        self.metrics.add_metric("SilentDevices", "Count", len(rep.silent))
        self.metrics.add_metric("SilenceAlertsSent", "Count", len(rep.alerted))
        self.metrics.add_metric("DevicesRecovered", "Count", len(rep.recovered))
        if rep.failed:
            self.metrics.add_metric("SilenceAlertsFailed", "Count", len(rep.failed))
        return rep

    def _check_site(self, site: dict[str, Any], now: datetime, rep: SilenceReport) -> None:
        sid = site["site_id"]
        registered = self.store.device_settings(sid)
        for seen in self.store.seen_devices(sid):
            dev, last_s = seen["device_id"], seen.get("last_upload_at")
            reg = registered.get(dev, {})
            if not last_s or reg.get("status") == "revoked":
                continue
            rep.checked += 1
            name, last = f"{sid}/{dev}", clock.parse_time(last_s)
            episode = seen.get("silence_episode")
            if episode and episode != last_s:  # it uploaded since the alarm: the episode is over
                if self.store.close_silence(sid, dev, episode, clock.iso_us(now)):
                    lang, _ = self._lead(site)
                    self._announce(site, recovery_text(lang, dev, site, clock.parse_time(episode), last),
                                   f"Sentinela: {name} is uploading again")
                    rep.recovered.append(name)
                continue
            cadence = float(reg.get("cadence_s") or site.get("cadence_s") or self.default_cadence_s)
            if (now - last).total_seconds() <= cadence * self.missed_uploads:
                continue
            rep.silent.append(name)
            if episode or not self.store.open_silence(sid, dev, last_s, clock.iso_us(now)):
                continue  # already announced (by this episode's first check, or a concurrent one)
            lang, _ = self._lead(site)
            if self._announce(site, silence_text(lang, dev, site, last, now, cadence),
                              f"Sentinela: {name} silent since {last_s}"):
                rep.alerted.append(name)
            else:
                self.store.release_silence(sid, dev, last_s)
                rep.failed.append(name)

    def _lead(self, site: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        lead_id = site.get("lead")
        if not lead_id:
            return "es", None
        lead = next((r for r in self.store.rangers(site["site_id"]) if r["ranger_id"] == lead_id), None)
        if lead is None or lead.get("number_invalid"):
            return "es", None
        return str(lead.get("lang", "es")), lead

    def _announce(self, site: dict[str, Any], text: str, subject: str) -> bool:
        """True when at least one channel took the message (or none is configured: nothing to retry)."""
        _, lead = self._lead(site)
        channels, delivered = 0, 0
        reach = next(((c, to) for c in self.channels if (to := c.address(lead))), None) if lead else None
        if reach:
            channel, to = reach
            channels += 1
            try:
                channel.send(to, text)
                delivered += 1
            except Exception as exc:  # recorded and retried next check, never a crashed sweep
                log.warning("silence %s to %s failed: %s", channel.name.upper(), mask_phone(to), exc)
        if self.publish:
            channels += 1
            try:
                self.publish(subject[:99], text)
                delivered += 1
            except Exception as exc:
                log.warning("silence notice to the ops topic failed: %s", exc)
        if channels == 0:
            log.warning("site %s has no lead and no ops topic is set: silence noted, nobody told", site["site_id"])
            return True
        return delivered > 0
