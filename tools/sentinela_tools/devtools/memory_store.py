"""An in-memory fake of the store, for fast unit tests: every repository protocol of
``sentinela.domain.repositories``, no network, no moto.

It keeps the table's items as DynamoDB would (the same pk/sk and gsi1 attributes, numbers as Decimal
through ``to_ddb``, None dropped from puts, TTL attributes kept as data) and gives them back as the
store does (``from_ddb``), with the semantics the services rely on: conditional writes that return
False and write nothing, all-or-nothing transactions with a cancellation code per item, queries in sort
key order, the sparse gsi1 index (escalation, phone, site and send lookups). The contract suite
(tests/unit/test_repositories_contract.py) runs the same checks on it and on ``Store`` over moto.

Not a stand-in for the end-to-end path: the local stack and the integration tests run on moto's server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from sentinela.adapters.store import clip_item, from_ddb, legacy_sms_key, to_ddb
from sentinela.domain import clock
from sentinela.domain.alert import Alert
from sentinela.domain.keys import ClipRef
from sentinela.domain.repositories import Item, Repositories

if TYPE_CHECKING:
    from sentinela.domain.detect import Detection

Key = tuple[str, str]
Raw = dict[str, Any]  # an item as the table holds it (to_ddb form)
Write = tuple[Key, Callable[[Raw | None], bool], Callable[[Raw | None], Raw]]
FAILED = "ConditionalCheckFailed"


def _number(v: Any) -> bool:
    return isinstance(v, int | Decimal) and not isinstance(v, bool)


def same(a: Any, b: Any) -> bool:
    """DynamoDB's ``=``: values of different types are never equal (1 is not true, "1" is not 1)."""
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def less(a: Any, b: Any) -> bool:
    """DynamoDB's ``<``: numbers with numbers, strings with strings; anything else is false."""
    if _number(a) and _number(b):
        return bool(a < b)
    return isinstance(a, str) and isinstance(b, str) and a < b


def exists(raw: Raw | None) -> bool:
    return raw is not None


def absent(raw: Raw | None) -> bool:
    return raw is None


def updated(key: Key, *, put: Mapping[str, Any] | None = None, remove: Iterable[str] = (),
            add: Mapping[str, int] | None = None) -> Callable[[Raw | None], Raw]:
    """An UpdateItem: SET ``put`` (values already in table form), REMOVE, ADD; creates the item if absent."""
    def apply(raw: Raw | None) -> Raw:
        item: Raw = dict(raw) if raw is not None else {"pk": key[0], "sk": key[1]}
        item.update(put or {})
        for k in remove:
            item.pop(k, None)
        for k, n in (add or {}).items():
            item[k] = item.get(k, 0) + n
        return item
    return apply


def replaced(item: Mapping[str, Any]) -> Callable[[Raw | None], Raw]:
    """A PutItem: the whole item, as to_ddb leaves it (None dropped)."""
    new = to_ddb(dict(item))
    return lambda _raw: dict(new)


class MemoryStore(Repositories):
    """One table in a dict, (pk, sk) -> item. ``name`` stands in for the table's name in messages."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.items: dict[Key, Raw] = {}
        self._lock = threading.RLock()

    # --- the table ----------------------------------------------------------------------------
    def _transact(self, writes: list[Write]) -> list[str] | None:
        """All or nothing: None when every condition held (and all were written), else each item's code."""
        with self._lock:
            codes = ["None" if when(self.items.get(key)) else FAILED for key, when, _ in writes]
            if FAILED in codes:
                return codes
            for key, _, then in writes:
                self.items[key] = then(self.items.get(key))
            return None

    def _write(self, key: Key, when: Callable[[Raw | None], bool], then: Callable[[Raw | None], Raw]) -> bool:
        return self._transact([(key, when, then)]) is None

    def _always(self, key: Key, then: Callable[[Raw | None], Raw]) -> None:
        self._write(key, lambda _raw: True, then)

    def _get(self, pk: str, sk: str) -> Item | None:
        with self._lock:
            raw = self.items.get((pk, sk))
            return from_ddb(raw) if raw is not None else None

    def _query_pk(self, pk: str, prefix: str = "") -> list[Item]:
        with self._lock:
            return [from_ddb(self.items[k]) for k in sorted(self.items) if k[0] == pk and k[1].startswith(prefix)]

    def _query_index(self, gpk: str, *, prefix: str = "", low: str | None = None, high: str | None = None,
                     newest_first: bool = False, limit: int | None = None) -> list[Item]:
        """gsi1: only items that carry both gsi1pk and gsi1sk (a sparse index), in gsi1sk order."""
        with self._lock:
            hits = [r for r in self.items.values() if r.get("gsi1pk") == gpk and isinstance(r.get("gsi1sk"), str)
                    and r["gsi1sk"].startswith(prefix) and (low is None or r["gsi1sk"] >= low)
                    and (high is None or r["gsi1sk"] <= high)]
            hits.sort(key=lambda r: (r["gsi1sk"], r["pk"], r["sk"]), reverse=newest_first)
            return [from_ddb(r) for r in hits[:limit]]

    def scan_all(self) -> list[Item]:
        with self._lock:
            return [from_ddb(r) for r in self.items.values()]

    # --- clips --------------------------------------------------------------------------------
    def mark_processing(self, ref: ClipRef, received_at: str) -> int:
        fields = to_ddb(clip_item(ref) | {"status": "processing", "received_at": received_at,
                                                "updated_at": clock.stamp()})
        key = (fields.pop("pk"), fields.pop("sk"))
        with self._lock:
            self._always(key, updated(key, put=fields, remove=["reason"], add={"attempts": 1}))
            return int(self.items[key]["attempts"])

    def mark_failed_if_processing(self, ref: ClipRef, reason: str, attempts: int) -> bool:
        key = (f"CLIP#{ref.clip_id}", "CLIP")
        return self._write(key, lambda raw: raw is not None and same(raw.get("status"), "processing"),
                           updated(key, put={"status": "failed", "reason": reason, "attempts": attempts,
                                             "updated_at": clock.stamp()}))

    def note_clip_error(self, clip_id: str, error: str, attempt: int) -> None:
        key = (f"CLIP#{clip_id}", "CLIP")
        self._always(key, updated(key, put={"last_error": error, "last_error_attempt": attempt,
                                            "updated_at": clock.stamp()}))

    def mark_rejected(self, ref: ClipRef, reason: str, extra: Mapping[str, Any] | None = None) -> None:
        item = clip_item(ref) | {"status": "rejected", "reason": reason, "updated_at": clock.stamp()}
        self._always((item["pk"], item["sk"]), replaced(item | dict(extra or {})))

    def mark_processed(self, ref: ClipRef, summary: Mapping[str, Any]) -> None:
        item = clip_item(ref) | {"status": "processed", "updated_at": clock.stamp()} | dict(summary)
        self._always((item["pk"], item["sk"]), replaced(item))

    def write_detections(self, clip_id: str, dets: Iterable[Detection], model_id: str) -> int:
        n = 0
        for d in dets:
            item: dict[str, Any] = {
                "pk": f"CLIP#{clip_id}", "sk": f"DET#{round(d.start_s * 1000):09d}#{d.label}",
                "type": "detection", "clip_id": clip_id, "label": d.label, "kind": d.kind,
                "confidence": d.confidence, "start_s": d.start_s, "end_s": d.end_s,
                "windows": d.windows, "alerting_windows": d.alerting_windows, "alerting": d.alert,
                "model_id": model_id,
            }
            self._always((item["pk"], item["sk"]), replaced(item))
            n += 1
        return n

    def detections(self, clip_id: str) -> list[Item]:
        return self._query_pk(f"CLIP#{clip_id}", "DET#")

    def put_alert(self, alert: Alert) -> bool:
        item = alert.to_item() | {"pk": f"CLIP#{alert.clip_id}", "sk": f"ALERT#{alert.threat}",
                                  "gsi1pk": f"SITE#{alert.site_id}", "gsi1sk": f"ALERT#{alert.recorded_at}"}
        return self._write((item["pk"], item["sk"]), absent, replaced(item))

    def alerts(self, clip_id: str) -> list[Alert]:
        return [Alert.from_item(a) for a in self.alert_records(clip_id)]

    def alert_records(self, clip_id: str) -> list[Item]:
        return self._query_pk(f"CLIP#{clip_id}", "ALERT#")

    def alerts_between(self, site_id: str, start: str, end: str) -> list[Alert]:
        return [Alert.from_item(a) for a in self._query_index(f"SITE#{site_id}", low=f"ALERT#{start}",
                                                               high=f"ALERT#{end}~")]

    def annotate_alert(self, clip_id: str, threat: str, fields: Mapping[str, Any]) -> None:
        key = (f"CLIP#{clip_id}", f"ALERT#{threat}")
        self._always(key, updated(key, put={k: to_ddb(v) for k, v in fields.items()}))

    def label_clip(self, clip_id: str, label: str, by: str, at: str, incident_id: str) -> None:
        key = (f"CLIP#{clip_id}", "CLIP")
        if not self._write(key, exists, updated(key, put={"label": label, "label_by": by, "label_at": at,
                                                          "label_incident": incident_id})):
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException",
                                         "Message": "The conditional request failed"}}, "UpdateItem")

    # --- sites and rangers --------------------------------------------------------------------
    def put_site(self, site: Mapping[str, Any]) -> None:
        sid = site["site_id"]
        item: dict[str, Any] = dict(site) | {"pk": f"SITE#{sid}", "sk": "SITE", "type": "site",
                                             "gsi1pk": "SITES", "gsi1sk": sid}
        self._always((item["pk"], item["sk"]), replaced(item))

    def get_site(self, site_id: str) -> Item | None:
        return self._get(f"SITE#{site_id}", "SITE")

    def list_sites(self) -> list[Item]:
        return self._query_index("SITES")

    def put_ranger(self, site_id: str, ranger: Mapping[str, Any]) -> None:
        rid = ranger["ranger_id"]
        item: dict[str, Any] = dict(ranger) | {
            "pk": f"SITE#{site_id}", "sk": f"RANGER#{rid}", "type": "ranger", "site_id": site_id,
            "gsi1pk": f"PHONE#{ranger['phone']}", "gsi1sk": f"SITE#{site_id}#{rid}"}
        self._always((item["pk"], item["sk"]), replaced(item))

    def rangers(self, site_id: str) -> list[Item]:
        return sorted(self._query_pk(f"SITE#{site_id}", "RANGER#"), key=lambda r: (r.get("order", 99), r["ranger_id"]))

    def delete_ranger(self, site_id: str, ranger_id: str) -> bool:
        key = (f"SITE#{site_id}", f"RANGER#{ranger_id}")
        with self._lock:
            if key not in self.items:
                return False
            del self.items[key]
            return True

    def rangers_by_phone(self, phone: str) -> list[Item]:
        return self._query_index(f"PHONE#{phone}")

    def mark_number_invalid(self, phone: str, code: int | None, reason: str) -> int:
        n = 0
        for r in self.rangers_by_phone(phone):
            key = (r["pk"], r["sk"])
            self._always(key, updated(key, put={"number_invalid": True, "number_error": reason,
                                                "number_error_code": code or 0, "number_checked_at": clock.stamp()}))
            n += 1
        return n

    # --- messages -----------------------------------------------------------------------------
    @staticmethod
    def _send_key(pk: str, channel: str, ranger_id: str, step: str) -> tuple[str, str]:
        return (pk, f"SEND#{channel}#{step}#{ranger_id}")

    def claim_send(self, pk: str, channel: str, ranger_id: str, step: str, record: Mapping[str, Any]) -> bool:
        legacy = legacy_sms_key(pk, channel, ranger_id, step)
        key = self._send_key(pk, channel, ranger_id, step)
        item = dict(record) | {"pk": key[0], "sk": key[1], "type": "send", "channel": channel, "status": "sending",
                               "attempts": 1, "created_at": clock.stamp()}
        with self._lock:
            if legacy is not None:
                old = self.items.get((legacy["pk"], legacy["sk"]))
                if old is not None and old.get("status") in ("sent", "failed_permanent"):
                    return False
            if self._write(key, absent, replaced(item)):
                return True
            if self.items[key].get("status") in ("sent", "failed_permanent"):
                return False
            self._always(key, updated(key, add={"attempts": 1}))
            return True

    def record_send(self, pk: str, channel: str, ranger_id: str, step: str, fields: Mapping[str, Any]) -> None:
        key = self._send_key(pk, channel, ranger_id, step)
        self._always(key, updated(key, put={k: to_ddb(v) for k, v in fields.items()} | {"updated_at": clock.stamp()}))

    def record_delivery(self, pk: str, channel: str, ranger_id: str, step: str, fields: Mapping[str, Any]) -> bool:
        legacy = legacy_sms_key(pk, channel, ranger_id, step)
        keys = [self._send_key(pk, channel, ranger_id, step)] + ([(legacy["pk"], legacy["sk"])] if legacy else [])
        put = {k: to_ddb(v) for k, v in fields.items()} | {"updated_at": clock.stamp()}
        return any(self._write(k, exists, updated(k, put=put)) for k in keys)

    def sends(self, pk: str) -> list[Item]:
        current = self._query_pk(pk, "SEND#")
        taken = {(s.get("channel"), s.get("step"), s.get("ranger_id")) for s in current}
        legacy = [s | {"channel": "sms"} for s in self._query_pk(pk, "SMS#")]
        return current + [s for s in legacy if ("sms", s.get("step"), s.get("ranger_id")) not in taken]

    def sends_to(self, phone: str, limit: int = 20) -> list[Item]:
        return self._query_index(f"TO#{phone}", newest_first=True, limit=limit)

    # --- devices ------------------------------------------------------------------------------
    def put_device(self, device: Mapping[str, Any]) -> bool:
        site, dev = device["site_id"], device["device_id"]
        item = dict(device) | {"pk": f"SITE#{site}", "sk": f"DEVICE#{dev}", "type": "device",
                               "gsi1pk": "DEVICES", "gsi1sk": f"{site}#{dev}"}
        return self._write((item["pk"], item["sk"]),
                           lambda raw: raw is None or same(raw.get("status"), "revoked"), replaced(item))

    def get_device(self, site_id: str, device_id: str) -> Item | None:
        return self._get(f"SITE#{site_id}", f"DEVICE#{device_id}")

    def revoke_device(self, site_id: str, device_id: str, at: str) -> bool:
        key = (f"SITE#{site_id}", f"DEVICE#{device_id}")
        return self._write(key, exists, updated(key, put={"status": "revoked", "revoked_at": at}))

    def locate_device(self, site_id: str, device_id: str, lat: float, lon: float) -> bool:
        key = (f"SITE#{site_id}", f"DEVICE#{device_id}")
        return self._write(key, exists, updated(key, put={"lat": Decimal(f"{lat:.6f}"), "lon": Decimal(f"{lon:.6f}")}))

    def list_devices(self, site_id: str | None = None) -> list[Item]:
        if site_id:
            return [d for d in self._query_pk(f"SITE#{site_id}", "DEVICE#") if d.get("type") == "device"]
        return self._query_index("DEVICES")

    def count_upload_request(self, site_id: str, device_id: str, minute: str, limit: int, expires_at: int) -> bool:
        key = (f"SITE#{site_id}", f"UPLOADRATE#{device_id}#{minute}")
        return self._write(key, lambda raw: raw is None or "n" not in raw or less(raw["n"], limit),
                           updated(key, put={"type": "upload_rate", "expires_at": expires_at}, add={"n": 1}))

    def auth_failures(self, pk: str, window: str) -> int:
        item = self._get(pk, window)
        return int(item.get("n", 0)) if item else 0

    def add_auth_failure(self, pk: str, window: str, expires_at: int) -> None:
        key = (pk, window)
        self._always(key, updated(key, put={"type": "auth_failures", "expires_at": expires_at}, add={"n": 1}))

    def mark_device_seen(self, site_id: str, device_id: str, at: str, key: str) -> bool:
        k = (f"SITE#{site_id}", f"SEEN#{device_id}")
        return self._write(k, lambda raw: raw is None or "last_upload_at" not in raw or less(raw["last_upload_at"], at),
                           updated(k, put={"type": "device_seen", "site_id": site_id, "device_id": device_id,
                                           "last_upload_at": at, "last_clip_key": key}, add={"uploads": 1}))

    def seen_devices(self, site_id: str) -> list[Item]:
        return self._query_pk(f"SITE#{site_id}", "SEEN#")

    def device_settings(self, site_id: str) -> dict[str, Item]:
        return {d["device_id"]: d for d in self._query_pk(f"SITE#{site_id}", "DEVICE#") if "device_id" in d}

    def open_silence(self, site_id: str, device_id: str, episode: str, at: str) -> bool:
        key = (f"SITE#{site_id}", f"SEEN#{device_id}")
        return self._write(key, lambda raw: raw is not None and same(raw.get("last_upload_at"), episode) and (
            "silence_episode" not in raw or not same(raw["silence_episode"], episode)),
            updated(key, put={"silence_episode": episode, "silence_alerted_at": at}, remove=["recovered_at"]))

    def close_silence(self, site_id: str, device_id: str, episode: str, at: str) -> bool:
        key = (f"SITE#{site_id}", f"SEEN#{device_id}")
        return self._write(key, lambda raw: raw is not None and same(raw.get("silence_episode"), episode),
                           updated(key, put={"recovered_at": at}, remove=["silence_episode"]))

    def release_silence(self, site_id: str, device_id: str, episode: str) -> bool:
        key = (f"SITE#{site_id}", f"SEEN#{device_id}")
        return self._write(key, lambda raw: raw is not None and same(raw.get("silence_episode"), episode),
                           updated(key, remove=["silence_episode", "silence_alerted_at"]))

    # --- incidents, replies and escalation ----------------------------------------------------
    def open_slot(self, site_id: str, group: str) -> Item | None:
        return self._get(f"SITE#{site_id}", f"OPEN#{group}")

    def get_incident(self, incident_id: str) -> Item | None:
        return self._get(f"INC#{incident_id}", "INCIDENT")

    def incident_link(self, clip_id: str, threat: str) -> Item | None:
        return self._get(f"CLIP#{clip_id}", f"INCIDENT#{threat}")

    def _member_writes(self, incident_id: str, alert: Alert, role: str) -> list[Write]:
        clip_id, threat = alert.clip_id, alert.threat
        common: dict[str, Any] = {"incident_id": incident_id, "clip_id": clip_id, "threat": threat, "role": role,
                  "recorded_at": alert.recorded_at, "confidence": alert.confidence,
                  "device_id": alert.device_id, "created_at": clock.stamp()}
        link = common | {"pk": f"CLIP#{clip_id}", "sk": f"INCIDENT#{threat}", "type": "incident_link"}
        member = common | {"pk": f"INC#{incident_id}", "sk": f"MEMBER#{clip_id}#{threat}", "type": "incident_member"}
        return [((link["pk"], link["sk"]), absent, replaced(link)),
                ((member["pk"], member["sk"]), absent, replaced(member))]

    def create_incident(self, incident: Mapping[str, Any], alert: Alert, replaces: str | None) -> str:
        iid = incident["incident_id"]
        slot = {"pk": f"SITE#{incident['site_id']}", "sk": f"OPEN#{incident['group']}", "type": "incident_slot",
                "incident_id": iid, "updated_at": clock.stamp()}
        inc = dict(incident) | {"pk": f"INC#{iid}", "sk": "INCIDENT", "type": "incident"}

        def slot_free(raw: Raw | None) -> bool:
            if replaces is None:
                return raw is None
            return raw is not None and same(raw.get("incident_id"), replaces)

        codes = self._transact([
            *self._member_writes(iid, alert, "opened"),
            ((slot["pk"], slot["sk"]), slot_free, replaced(slot)),
            ((inc["pk"], inc["sk"]), absent, replaced(inc)),
        ])
        if codes is None:
            return "opened"
        return "linked" if codes[0] == FAILED else "taken"

    def join_incident(self, incident_id: str, alert: Alert, heard_at: str) -> str:
        key = (f"INC#{incident_id}", "INCIDENT")
        codes = self._transact([
            *self._member_writes(incident_id, alert, "joined"),
            (key, lambda raw: raw is not None and any(same(raw.get("state"), s) for s in ("open", "acknowledged")),
             updated(key, put={"updated_at": clock.stamp()}, add={"alerts": 1})),
        ])
        if codes is None:
            for attr, value in (("last_heard", heard_at), ("max_confidence", to_ddb(alert.confidence))):
                self._raise_to(key, attr, value)
            return "joined"
        return "linked" if codes[0] == FAILED else "closed"

    def _raise_to(self, key: Key, attr: str, value: Any) -> None:
        """Set ``attr`` to ``value`` only if that raises it (clips may land out of order)."""
        self._write(key, lambda raw: raw is not None and attr in raw and less(raw[attr], value),
                    updated(key, put={attr: value}))

    def update_incident(self, incident_id: str, fields: Mapping[str, Any], *, remove: Iterable[str] = (),
                        expect: Mapping[str, Any] | None = None, append_trace: Iterable[str] = ()) -> bool:
        key = (f"INC#{incident_id}", "INCIDENT")
        expected = dict(expect or {})
        trace = list(append_trace)
        put = {k: to_ddb(v) for k, v in fields.items()} | {"updated_at": clock.stamp()}

        def holds(raw: Raw | None) -> bool:
            if raw is None:
                return False
            for k, v in expected.items():
                if isinstance(v, tuple):
                    if k not in raw or not any(same(raw[k], to_ddb(one)) for one in v):
                        return False
                elif v is None:
                    if k in raw:
                        return False
                elif k not in raw or not same(raw[k], to_ddb(v)):
                    return False
            return True

        def apply(raw: Raw | None) -> Raw:
            item = updated(key, put=put, remove=remove)(raw)
            if trace:
                item["trace"] = list((raw or {}).get("trace", [])) + trace
            return item

        return self._write(key, holds, apply)

    def incident_members(self, incident_id: str) -> list[Item]:
        return self._query_pk(f"INC#{incident_id}", "MEMBER#")

    def incidents_due(self, now: str) -> list[Item]:
        return self._query_index("ESCALATE", high=f"{now}~")

    def list_incidents(self) -> list[Item]:
        return [i for i in self.scan_all() if i.get("type") == "incident"]

    def claim_reply(self, message_sid: str, record: Mapping[str, Any], expires_at: int) -> bool:
        item = dict(record) | {"pk": f"REPLY#{message_sid}", "sk": "REPLY", "type": "sms_reply",
                               "message_sid": message_sid, "expires_at": expires_at, "reply_status": "claimed",
                               "created_at": clock.stamp()}
        return self._write((item["pk"], item["sk"]),
                           lambda raw: raw is None or same(raw.get("reply_status"), "released"), replaced(item))

    def get_reply(self, message_sid: str) -> Item | None:
        return self._get(f"REPLY#{message_sid}", "REPLY")

    def finish_reply(self, message_sid: str, fields: Mapping[str, Any]) -> None:
        key = (f"REPLY#{message_sid}", "REPLY")
        self._always(key, updated(key, put={k: to_ddb(v) for k, v in fields.items()}))

    def release_reply(self, message_sid: str) -> None:
        self.finish_reply(message_sid, {"reply_status": "released"})
