"""What the services need from storage, per kind of item, as protocols.

Two implementations keep the same item shapes and the same semantics: ``sentinela.adapters.store.Store``
(DynamoDB, one table: the deployed one and the local stack's) and the in-memory fake of the unit tests
(``sentinela_tools.devtools.memory_store``); ``tests/unit/test_repositories_contract.py`` runs one suite
against both. Items go in and come out as plain mappings with the attribute names of README's "Data
model"; a write that returns ``bool`` is conditional (False: its condition did not hold, nothing was
written), which is what makes redelivered events and concurrent handlers safe.

Kinds, and who uses them:

- :class:`ClipRepository`: a clip's own records, the clip item, its detections and its alert items (all
  under ``CLIP#<clip>``; classify writes them, notify reads and annotates them).
- :class:`IncidentRepository`: incidents and what hangs off them: the site's open-incident slots, the
  create/join transactions, the alert -> incident links, members, the escalation index, the SMS sends
  (claimed before they go out) and the inbound replies (claimed before they act).
- :class:`PeopleRepository`: sites, rangers on a site's roster, and their numbers.
- :class:`DeviceRepository`: the recorder registry, upload and failed-attempt counters, last uploads and
  silence episodes.

A service takes one object typed with what it uses (:class:`Repositories`, :class:`ClipsAndDevices`,
:class:`PeopleAndDevices`, or one kind): one table holds every kind and the incident transactions cross
kinds (a link under the clip, the slot under the site), so one object implements them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sentinela.domain.alert import Alert

if TYPE_CHECKING:  # detect pulls in numpy, which the notify function does not carry
    from sentinela.domain.detect import Detection
    from sentinela.domain.keys import ClipRef

Item = dict[str, Any]


class ClipRepository(Protocol):
    def mark_processing(self, ref: ClipRef, received_at: str) -> int:
        """The clip is being processed; returns which attempt this is (1, 2, ...)."""
        ...

    def mark_failed_if_processing(self, ref: ClipRef, reason: str, attempts: int) -> bool:
        """``failed`` with the reason, unless the clip left ``processing`` meanwhile (then False)."""
        ...

    def note_clip_error(self, clip_id: str, error: str, attempt: int) -> None: ...

    def mark_rejected(self, ref: ClipRef, reason: str, extra: Mapping[str, Any] | None = None) -> None: ...

    def mark_processed(self, ref: ClipRef, summary: Mapping[str, Any]) -> None: ...

    def write_detections(self, clip_id: str, dets: Iterable[Detection], model_id: str) -> int:
        """Deterministic keys: writing a clip's detections again overwrites, never duplicates."""
        ...

    def detections(self, clip_id: str) -> list[Item]:
        """The clip's detections, by start time."""
        ...

    def put_alert(self, alert: Alert) -> bool:
        """One alert item per clip and threat class (it alone carries ``alert = true``); False when it existed."""
        ...

    def alerts(self, clip_id: str) -> list[Alert]:
        """The clip's alerts, by threat class."""
        ...

    def alert_records(self, clip_id: str) -> list[Item]:
        """The clip's alert items as stored, with what notify annotated (outcome, incident_id, trace)."""
        ...

    def alerts_between(self, site_id: str, start: str, end: str) -> list[Alert]:
        """The site's alerts recorded in [start, end] (UTC ISO), by recorded time."""
        ...

    def annotate_alert(self, clip_id: str, threat: str, fields: Mapping[str, Any]) -> None: ...

    def label_clip(self, clip_id: str, label: str, by: str, at: str, incident_id: str) -> None:
        """A verdict on a clip, kept for retraining; raises when there is no such clip."""
        ...


class IncidentRepository(Protocol):
    def open_slot(self, site_id: str, group: str) -> Item | None:
        """The site's current incident for a class group (``incident_id``), if any."""
        ...

    def get_incident(self, incident_id: str) -> Item | None: ...

    def incident_link(self, clip_id: str, threat: str) -> Item | None:
        """Which incident an alert went to, and its ``role`` (opened | joined): redelivery finds it here."""
        ...

    def create_incident(self, incident: Mapping[str, Any], alert: Alert, replaces: str | None) -> str:
        """Open ``incident`` and take the site's slot, all or nothing: "opened"; "taken" (the slot is no longer
        empty, or no longer holds ``replaces``: join that); "linked" (this alert already went to an incident)."""
        ...

    def join_incident(self, incident_id: str, alert: Alert, heard_at: str) -> str:
        """Add an alert to an open or acknowledged incident: "joined" (alerts + 1; last_heard and max_confidence
        raised, never lowered); "linked" (it had joined before); "closed" (no longer active)."""
        ...

    def update_incident(self, incident_id: str, fields: Mapping[str, Any], *, remove: Iterable[str] = (),
                        expect: Mapping[str, Any] | None = None, append_trace: Iterable[str] = ()) -> bool:
        """Set ``fields``, remove ``remove``, append to ``trace``, if the incident exists and every ``expect``
        holds (attribute -> value; a tuple: any of them; None: the attribute is absent); else False."""
        ...

    def incident_members(self, incident_id: str) -> list[Item]: ...

    def incidents_due(self, now: str) -> list[Item]:
        """Incidents on the escalation index (``gsi1pk`` ESCALATE) due at or before ``now``, soonest first."""
        ...

    def claim_send(self, pk: str, channel: str, ranger_id: str, step: str, record: Mapping[str, Any]) -> bool:
        """The right to text ``ranger_id`` on ``channel`` for (``pk``, ``step``); False once that send is
        ``sent`` or ``failed_permanent`` (an SMS recorded under the key from before channels counts too):
        the caller must not text again."""
        ...

    def record_send(self, pk: str, channel: str, ranger_id: str, step: str, fields: Mapping[str, Any]) -> None: ...

    def record_delivery(self, pk: str, channel: str, ranger_id: str, step: str, fields: Mapping[str, Any]) -> bool:
        """A channel's delivery report on an existing send (under either key); False, and nothing written,
        when there is no such send."""
        ...

    def sends(self, pk: str) -> list[Item]:
        """The sends under an incident (``INC#<id>``), each with its ``channel``."""
        ...

    def sends_to(self, phone: str, limit: int = 20) -> list[Item]:
        """The latest SMS items sent to ``phone``, newest first (the ``TO#<phone>`` index)."""
        ...

    def claim_reply(self, message_sid: str, record: Mapping[str, Any], expires_at: int) -> bool:
        """An inbound message acts at most once: False when it was claimed and not released."""
        ...

    def get_reply(self, message_sid: str) -> Item | None: ...

    def finish_reply(self, message_sid: str, fields: Mapping[str, Any]) -> None: ...

    def release_reply(self, message_sid: str) -> None: ...


class PeopleRepository(Protocol):
    def put_site(self, site: Mapping[str, Any]) -> None: ...

    def get_site(self, site_id: str) -> Item | None: ...

    def list_sites(self) -> list[Item]:
        """Every site, by id."""
        ...

    def put_ranger(self, site_id: str, ranger: Mapping[str, Any]) -> None: ...

    def rangers(self, site_id: str) -> list[Item]:
        """The site's roster by ``order`` (99 when unset), then id."""
        ...

    def delete_ranger(self, site_id: str, ranger_id: str) -> bool: ...

    def rangers_by_phone(self, phone: str) -> list[Item]:
        """Every roster entry (one per site) with this number."""
        ...

    def mark_number_invalid(self, phone: str, code: int | None, reason: str) -> int:
        """Flag every roster entry with this number as not textable; returns how many."""
        ...


class DeviceRepository(Protocol):
    def put_device(self, device: Mapping[str, Any]) -> bool:
        """Register a device, or re-issue a revoked one; False when an active device has that id."""
        ...

    def get_device(self, site_id: str, device_id: str) -> Item | None: ...

    def revoke_device(self, site_id: str, device_id: str, at: str) -> bool: ...

    def locate_device(self, site_id: str, device_id: str, lat: float, lon: float) -> bool: ...

    def list_devices(self, site_id: str | None = None) -> list[Item]: ...

    def count_upload_request(self, site_id: str, device_id: str, minute: str, limit: int, expires_at: int) -> bool:
        """Count one upload request in the device's minute; False (not counted) once ``limit`` were."""
        ...

    def auth_failures(self, pk: str, window: str) -> int: ...

    def add_auth_failure(self, pk: str, window: str, expires_at: int) -> None: ...

    def mark_device_seen(self, site_id: str, device_id: str, at: str, key: str) -> bool:
        """The device's latest upload; monotonic (False for an upload older than the one recorded)."""
        ...

    def seen_devices(self, site_id: str) -> list[Item]: ...

    def device_settings(self, site_id: str) -> dict[str, Item]: ...

    def open_silence(self, site_id: str, device_id: str, episode: str, at: str) -> bool: ...

    def close_silence(self, site_id: str, device_id: str, episode: str, at: str) -> bool: ...

    def release_silence(self, site_id: str, device_id: str, episode: str) -> bool: ...


class ClipsAndDevices(ClipRepository, DeviceRepository, Protocol):
    """Classify: a clip's records, and its device's last upload."""


class PeopleAndDevices(PeopleRepository, DeviceRepository, Protocol):
    """The silence alarm: sites and their leads; devices' last uploads and silence episodes."""


class Repositories(ClipRepository, IncidentRepository, PeopleRepository, DeviceRepository, Protocol):
    """Every kind: what the incidents need (policy reads the clip's detections and alerts; an incident's
    texts go to the roster and name the recorder's place), and what both implementations provide."""
