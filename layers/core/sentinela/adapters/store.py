"""All DynamoDB access, in one place. One table (pk/sk + gsi1) holds clips, detections, alerts,
sites, rangers and sent messages; the item shapes are documented in README ("Data model")."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from sentinela.domain import clock
from sentinela.domain.alert import Alert
from sentinela.domain.keys import ClipRef as ClipRef  # re-exported: it used to live here
from sentinela.domain.repositories import Repositories

if TYPE_CHECKING:  # detect pulls in numpy, which the notify function does not carry
    from sentinela.domain.detect import Detection


def to_ddb(value: Any) -> Any:
    """DynamoDB wants Decimal, not float; round so that stored figures stay readable. NaN and infinity are
    not numbers DynamoDB stores (the whole write would fail, and with it the clip's record): they become
    None, which a mapping drops."""
    if isinstance(value, float):
        return Decimal(str(round(value, 4))) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        converted = {k: to_ddb(v) for k, v in value.items()}
        return {k: v for k, v in converted.items() if v is not None}
    if isinstance(value, list | tuple):
        return [to_ddb(v) for v in value]
    return value


def from_ddb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {k: from_ddb(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_ddb(v) for v in value]
    return value


def conditional(op: Any, **kw: Any) -> bool:
    """Run a conditional write; False (not an error) when its condition does not hold."""
    try:
        op(**kw)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise


def clip_item(ref: ClipRef) -> dict[str, Any]:
    """A clip item's keys and identity (the store and the in-memory fake write the same shape)."""
    item: dict[str, Any] = {
        "pk": f"CLIP#{ref.clip_id}", "sk": "CLIP", "type": "clip", "clip_id": ref.clip_id,
        "bucket": ref.bucket, "key": ref.key, "version_id": ref.version_id,
        "site_id": ref.site_id, "device_id": ref.device_id, "recorded_at": ref.recorded_at,
    }
    if ref.site_id:
        item["gsi1pk"] = f"SITE#{ref.site_id}"
        item["gsi1sk"] = f"CLIP#{ref.recorded_at}#{ref.device_id}#{ref.clip_id}"
    else:
        item["gsi1pk"] = "REJECTED"
        item["gsi1sk"] = f"CLIP#{clock.stamp()}#{ref.clip_id}"
    return item


class Store(Repositories):
    """Every repository protocol (sentinela.domain.repositories) on the one DynamoDB table."""

    def __init__(self, table_name: str, resource: Any | None = None) -> None:
        self.table = (resource or boto3.resource("dynamodb")).Table(table_name)

    # --- clips --------------------------------------------------------------------------------
    def mark_processing(self, ref: ClipRef, received_at: str) -> int:
        """The clip is being processed; returns which attempt this is (1, 2, ... across retries and
        replays), so that the last one can leave a terminal status instead of ``processing``."""
        item = to_ddb(clip_item(ref) | {"status": "processing", "received_at": received_at,
                                              "updated_at": clock.stamp()})
        key = {"pk": item.pop("pk"), "sk": item.pop("sk")}
        names = {f"#a{i}": k for i, k in enumerate(item)}
        values = {f":a{i}": v for i, v in enumerate(item.values())}
        sets = ", ".join(f"#a{i} = :a{i}" for i in range(len(item)))
        res = self.table.update_item(
            Key=key, UpdateExpression=f"SET {sets} REMOVE reason ADD attempts :one",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values | {":one": 1},
            ReturnValues="UPDATED_NEW")
        return int(res.get("Attributes", {}).get("attempts", 1))

    def mark_failed_if_processing(self, ref: ClipRef, reason: str, attempts: int) -> bool:
        """``failed`` with the reason, unless the clip left ``processing`` meanwhile (then False)."""
        return conditional(
            self.table.update_item, Key={"pk": f"CLIP#{ref.clip_id}", "sk": "CLIP"},
            UpdateExpression="SET #s = :failed, reason = :r, attempts = :n, updated_at = :u",
            ConditionExpression="#s = :processing", ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":failed": "failed", ":r": reason, ":n": attempts, ":u": clock.stamp(),
                                       ":processing": "processing"})

    def note_clip_error(self, clip_id: str, error: str, attempt: int) -> None:
        """An attempt failed and will be retried: the error is on the record meanwhile."""
        self.table.update_item(Key={"pk": f"CLIP#{clip_id}", "sk": "CLIP"},
                               UpdateExpression="SET last_error = :e, last_error_attempt = :n, updated_at = :u",
                               ExpressionAttributeValues={":e": error, ":n": attempt, ":u": clock.stamp()})

    def mark_rejected(self, ref: ClipRef, reason: str, extra: Mapping[str, Any] | None = None) -> None:
        item = clip_item(ref) | {"status": "rejected", "reason": reason, "updated_at": clock.stamp()}
        self.table.put_item(Item=to_ddb(item | dict(extra or {})))

    def mark_processed(self, ref: ClipRef, summary: Mapping[str, Any]) -> None:
        item = clip_item(ref) | {"status": "processed", "updated_at": clock.stamp()} | dict(summary)
        self.table.put_item(Item=to_ddb(item))

    def write_detections(self, clip_id: str, dets: Iterable[Detection], model_id: str) -> int:
        """Deterministic keys: a retried classify overwrites, it never duplicates."""
        n = 0
        with self.table.batch_writer(overwrite_by_pkeys=["pk", "sk"]) as bw:
            for d in dets:
                bw.put_item(Item=to_ddb({
                    "pk": f"CLIP#{clip_id}", "sk": f"DET#{round(d.start_s * 1000):09d}#{d.label}",
                    "type": "detection", "clip_id": clip_id, "label": d.label, "kind": d.kind,
                    "confidence": d.confidence, "start_s": d.start_s, "end_s": d.end_s,
                    "windows": d.windows, "alerting_windows": d.alerting_windows, "alerting": d.alert,
                    "model_id": model_id,
                }))
                n += 1
        return n

    def detections(self, clip_id: str) -> list[dict[str, Any]]:
        return self._query_pk(f"CLIP#{clip_id}", "DET#")

    def put_alert(self, alert: Alert) -> bool:
        """One alert item per clip and threat class; it alone carries ``alert = true`` (the stream filter).
        Conditional, so a redelivered clip never inserts it twice. Returns False when it existed."""
        item = alert.to_item() | {"pk": f"CLIP#{alert.clip_id}", "sk": f"ALERT#{alert.threat}",
                                  "gsi1pk": f"SITE#{alert.site_id}", "gsi1sk": f"ALERT#{alert.recorded_at}"}
        return conditional(
            self.table.put_item,
            Item=to_ddb(item), ConditionExpression="attribute_not_exists(pk)"
        )

    def alerts(self, clip_id: str) -> list[Alert]:
        """The clip's alerts, in class order."""
        return [Alert.from_item(a) for a in self.alert_records(clip_id)]

    def alert_records(self, clip_id: str) -> list[dict[str, Any]]:
        """The clip's alert items as stored: the alert with what notify annotated (outcome, incident_id,
        decision_trace, policy). For ops and tests."""
        return self._query_pk(f"CLIP#{clip_id}", "ALERT#")

    # --- sites and rangers --------------------------------------------------------------------
    def put_site(self, site: Mapping[str, Any]) -> None:
        sid = site["site_id"]
        self.table.put_item(Item=to_ddb(dict(site) | {"pk": f"SITE#{sid}", "sk": "SITE", "type": "site",
                                                       "gsi1pk": "SITES", "gsi1sk": sid}))

    def get_site(self, site_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": f"SITE#{site_id}", "sk": "SITE"}).get("Item")
        return from_ddb(item) if item else None

    def list_sites(self) -> list[dict[str, Any]]:
        return self._query_index("SITES")

    def put_ranger(self, site_id: str, ranger: Mapping[str, Any]) -> None:
        rid = ranger["ranger_id"]
        self.table.put_item(Item=to_ddb(dict(ranger) | {
            "pk": f"SITE#{site_id}", "sk": f"RANGER#{rid}", "type": "ranger", "site_id": site_id,
            # By phone number: an SMS reply names only its sender (sentinela.services.incidents).
            "gsi1pk": f"PHONE#{ranger['phone']}", "gsi1sk": f"SITE#{site_id}#{rid}",
        }))

    def rangers(self, site_id: str) -> list[dict[str, Any]]:
        return sorted(self._query_pk(f"SITE#{site_id}", "RANGER#"), key=lambda r: (r.get("order", 99), r["ranger_id"]))

    def delete_ranger(self, site_id: str, ranger_id: str) -> bool:
        """Take a ranger off a site's roster; False when they were not on it. Their SMS records stay
        (the incidents' history keeps who was texted)."""
        return conditional(self.table.delete_item, Key={"pk": f"SITE#{site_id}", "sk": f"RANGER#{ranger_id}"},
                           ConditionExpression="attribute_exists(pk)")

    # --- messages -----------------------------------------------------------------------------
    # A send is ``SEND#<channel>#<step>#<ranger>`` under its incident's pk, so the same ranger and step on
    # two channels are two claims. Before channels, SMS sends were ``SMS#<step>#<ranger>`` (type "sms"):
    # those of incidents still in flight at a deploy are read as "sms" sends, and one recorded as done
    # is never sent again under the new key (:func:`legacy_sms_key`).
    @staticmethod
    def _send_key(pk: str, channel: str, ranger_id: str, step: str) -> dict[str, str]:
        return {"pk": pk, "sk": f"SEND#{channel}#{step}#{ranger_id}"}

    def claim_send(self, pk: str, channel: str, ranger_id: str, step: str, record: Mapping[str, Any]) -> bool:
        """Claim the right to text ``ranger_id`` on ``channel`` for (incident ``pk``, ``step``). False when
        a send was already recorded as ``sent`` (or failed permanently): the caller must not text again."""
        legacy = legacy_sms_key(pk, channel, ranger_id, step)
        if legacy is not None:
            old = self.table.get_item(Key=legacy, ConsistentRead=True).get("Item")
            if old is not None and from_ddb(old).get("status") in ("sent", "failed_permanent"):
                return False
        key = self._send_key(pk, channel, ranger_id, step)
        try:
            self.table.put_item(
                Item=to_ddb(dict(record) | key | {"type": "send", "channel": channel, "status": "sending",
                                                   "attempts": 1, "created_at": clock.stamp()}),
                ConditionExpression="attribute_not_exists(pk)",
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        existing = from_ddb(self.table.get_item(Key=key, ConsistentRead=True)["Item"])
        if existing.get("status") in ("sent", "failed_permanent"):
            return False
        self.table.update_item(Key=key, UpdateExpression="ADD attempts :one", ExpressionAttributeValues={":one": 1})
        return True

    def record_send(self, pk: str, channel: str, ranger_id: str, step: str, fields: Mapping[str, Any]) -> None:
        self._update_send(self._send_key(pk, channel, ranger_id, step), fields, must_exist=False)

    def record_delivery(self, pk: str, channel: str, ranger_id: str, step: str, fields: Mapping[str, Any]) -> bool:
        """A channel's delivery report on a send, which may predate the channel key (a legacy SMS item);
        False when no such send exists (nothing is written)."""
        keys = [self._send_key(pk, channel, ranger_id, step), legacy_sms_key(pk, channel, ranger_id, step)]
        return any(self._update_send(k, fields, must_exist=True) for k in keys if k is not None)

    def _update_send(self, key: Mapping[str, str], fields: Mapping[str, Any], *, must_exist: bool) -> bool:
        names = {f"#{k}": k for k in fields}
        values = {f":{k}": to_ddb(v) for k, v in fields.items()}
        kw: dict[str, Any] = {"ConditionExpression": "attribute_exists(pk)"} if must_exist else {}
        return conditional(
            self.table.update_item, Key=dict(key),
            UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in fields) + ", updated_at = :u",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values | {":u": clock.stamp()}, **kw,
        )

    def sends(self, pk: str) -> list[dict[str, Any]]:
        """Every send of incident ``pk``, each with its ``channel``; a legacy SMS item counts unless a
        send under the channel key took its place (it was retried after the deploy)."""
        current = self._query_pk(pk, "SEND#")
        taken = {(s.get("channel"), s.get("step"), s.get("ranger_id")) for s in current}
        legacy = [s | {"channel": "sms"} for s in self._query_pk(pk, "SMS#")]
        return current + [s for s in legacy if ("sms", s.get("step"), s.get("ranger_id")) not in taken]

    # --- devices (recorder uploads: sentinela.services.devices, sentinela.services.presign) -----------------------
    # A device is ``SITE#<site>`` / ``DEVICE#<device>``, type "device": cadence_s (read by the silence
    # alarm), status active|revoked, and only a salted hash of its secret. Listed through gsi1 "DEVICES".
    # Upload rate counters are ``SITE#<site>`` / ``UPLOADRATE#<device>#<minute>`` (TTL expires_at), kept
    # out of the DEVICE# range so that a query for devices never meets them.
    def put_device(self, device: Mapping[str, Any]) -> bool:
        """Register a device, or re-issue a revoked one; False when an active device has that id."""
        site, dev = device["site_id"], device["device_id"]
        item = dict(device) | {"pk": f"SITE#{site}", "sk": f"DEVICE#{dev}", "type": "device",
                               "gsi1pk": "DEVICES", "gsi1sk": f"{site}#{dev}"}
        return conditional(
            self.table.put_item,
            Item=to_ddb(item), ConditionExpression="attribute_not_exists(pk) OR #s = :revoked",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":revoked": "revoked"}
        )

    def get_device(self, site_id: str, device_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": f"SITE#{site_id}", "sk": f"DEVICE#{device_id}"},
                                   ConsistentRead=True).get("Item")
        return from_ddb(item) if item else None

    def revoke_device(self, site_id: str, device_id: str, at: str) -> bool:
        """Mark a device revoked (its secret stops working); False when there is no such device."""
        return conditional(
            self.table.update_item,
            Key={"pk": f"SITE#{site_id}", "sk": f"DEVICE#{device_id}"},
            UpdateExpression="SET #s = :revoked, revoked_at = :at",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":revoked": "revoked", ":at": at},
        )

    def locate_device(self, site_id: str, device_id: str, lat: float, lon: float) -> bool:
        """Set where a recorder is (the alert's map link); False when there is no such device."""
        return conditional(
            self.table.update_item,
            Key={"pk": f"SITE#{site_id}", "sk": f"DEVICE#{device_id}"},
            UpdateExpression="SET lat = :lat, lon = :lon",
            ConditionExpression="attribute_exists(pk)",
            # Six decimals (~0.1 m), not to_ddb's four (~11 m): a ranger walks to this point.
            ExpressionAttributeValues={":lat": Decimal(f"{lat:.6f}"), ":lon": Decimal(f"{lon:.6f}")},
        )

    def list_devices(self, site_id: str | None = None) -> list[dict[str, Any]]:
        if site_id:
            return [d for d in self._query_pk(f"SITE#{site_id}", "DEVICE#") if d.get("type") == "device"]
        return self._query_index("DEVICES")

    def count_upload_request(self, site_id: str, device_id: str, minute: str, limit: int, expires_at: int) -> bool:
        """Count one upload request in the device's current minute; False (not counted) once ``limit``
        requests were counted in that minute. One conditional update: no read-modify-write race."""
        return conditional(
            self.table.update_item,
            Key={"pk": f"SITE#{site_id}", "sk": f"UPLOADRATE#{device_id}#{minute}"},
            UpdateExpression="ADD n :one SET #t = :type, expires_at = :exp",
            ConditionExpression="attribute_not_exists(n) OR n < :limit",
            ExpressionAttributeNames={"#t": "type"},
            ExpressionAttributeValues={":one": 1, ":limit": limit, ":type": "upload_rate", ":exp": expires_at},
        )

    # Failed presign attempts, ``AUTHFAIL#<site>/<device>`` and ``AUTHFAIL#ip/<address>`` / ``<window>``
    # (TTL expires_at): counted whether or not the device exists, so the limit cannot tell either.
    def auth_failures(self, pk: str, window: str) -> int:
        item = self.table.get_item(Key={"pk": pk, "sk": window}, ConsistentRead=True).get("Item")
        return int(item.get("n", 0)) if item else 0

    def add_auth_failure(self, pk: str, window: str, expires_at: int) -> None:
        self.table.update_item(Key={"pk": pk, "sk": window},
                               UpdateExpression="ADD n :one SET #t = :type, expires_at = :exp",
                               ExpressionAttributeNames={"#t": "type"},
                               ExpressionAttributeValues={":one": 1, ":type": "auth_failures", ":exp": expires_at})

    # --- device last-seen and silence episodes (issue 6: silence is an alarm; sentinela.services.silence) -------
    # ``SITE#<site>`` / ``SEEN#<device>``, type "device_seen": last_upload_at (when classify received the
    # device's latest clip), last_clip_key, uploads; and the open silence episode, if any
    # (silence_episode = the last_upload_at the alarm was raised for). Kept apart from the registered
    # ``DEVICE#`` item so that classify never creates or overwrites a registration. One conditional
    # UpdateItem per clip, monotonic under concurrent or replayed deliveries.
    def mark_device_seen(self, site_id: str, device_id: str, at: str, key: str) -> bool:
        return conditional(
            self.table.update_item,
            Key={"pk": f"SITE#{site_id}", "sk": f"SEEN#{device_id}"},
            UpdateExpression="SET #t = :type, site_id = :site, device_id = :dev, last_upload_at = :at, "
                             "last_clip_key = :key ADD uploads :one",
            ConditionExpression="attribute_not_exists(last_upload_at) OR last_upload_at < :at",
            ExpressionAttributeNames={"#t": "type"},
            ExpressionAttributeValues={":type": "device_seen", ":site": site_id, ":dev": device_id,
                                       ":at": at, ":key": key, ":one": 1},
        )

    def seen_devices(self, site_id: str) -> list[dict[str, Any]]:
        return self._query_pk(f"SITE#{site_id}", "SEEN#")

    def device_settings(self, site_id: str) -> dict[str, dict[str, Any]]:
        """Registered devices of a site by id (their ``cadence_s`` overrides the site's)."""
        return {d["device_id"]: d for d in self._query_pk(f"SITE#{site_id}", "DEVICE#") if "device_id" in d}

    def open_silence(self, site_id: str, device_id: str, episode: str, at: str) -> bool:
        """Claim the one alarm of a silence episode; False when it was already raised (or the device
        uploaded meanwhile)."""
        return self._conditional_update(
            site_id, device_id, "SET silence_episode = :ep, silence_alerted_at = :at REMOVE recovered_at",
            "last_upload_at = :ep AND (attribute_not_exists(silence_episode) OR silence_episode <> :ep)",
            {":ep": episode, ":at": at})

    def close_silence(self, site_id: str, device_id: str, episode: str, at: str) -> bool:
        """End an episode once (the device uploaded again); False when another check already did."""
        return self._conditional_update(site_id, device_id, "SET recovered_at = :at REMOVE silence_episode",
                                        "silence_episode = :ep", {":ep": episode, ":at": at})

    def release_silence(self, site_id: str, device_id: str, episode: str) -> bool:
        """Give back a claimed alarm whose message could not be sent, so the next check tries again."""
        return self._conditional_update(site_id, device_id, "REMOVE silence_episode, silence_alerted_at",
                                        "silence_episode = :ep", {":ep": episode})

    # What `sentinela status` reads (sentinela_tools.ops_cli).
    def site_items(self, site_id: str) -> list[dict[str, Any]]:
        """Everything under a site's partition: site, rangers, devices, last-seen, open-incident slots."""
        return self._all(self.table.query, {"KeyConditionExpression": Key("pk").eq(f"SITE#{site_id}")})

    def incident_item(self, incident_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": f"INC#{incident_id}", "sk": "INCIDENT"}).get("Item")
        return from_ddb(item) if item else None

    def clips_since(self, site_id: str, since: str) -> list[dict[str, Any]]:
        """A site's clips recorded at or after ``since`` (ISO UTC), through gsi1."""
        return self._query_range(f"SITE#{site_id}", f"CLIP#{since}", "CLIP#~")

    def unsited_clips(self, since: str) -> list[dict[str, Any]]:
        """Clips whose key named no site (rejected as bad keys), received at or after ``since``."""
        return self._query_range("REJECTED", f"CLIP#{since}", "CLIP#~")

    def _query_range(self, pk: str, low: str, high: str) -> list[dict[str, Any]]:
        cond = Key("gsi1pk").eq(pk) & Key("gsi1sk").between(low, high)
        return self._all(self.table.query, {"IndexName": "gsi1", "KeyConditionExpression": cond})

    def _conditional_update(self, site_id: str, device_id: str, update: str, condition: str,
                            values: dict[str, Any]) -> bool:
        return conditional(
            self.table.update_item,
            Key={"pk": f"SITE#{site_id}", "sk": f"SEEN#{device_id}"},
            UpdateExpression=update, ConditionExpression=condition,
            ExpressionAttributeValues=values
        )

    # --- incidents, replies and escalation (alerts rangers trust: sentinela.services.incidents) ------------
    # incident   pk INC#<id>  sk INCIDENT      state, counters, who/when; gsi1 ESCALATE/<due>#<id> while open
    # member     pk INC#<id>  sk MEMBER#<clip>#<threat>      one per alert that joined (or opened) it
    # link       pk CLIP#<clip> sk INCIDENT#<threat>         which incident an alert went to (redelivery)
    # open slot  pk SITE#<site> sk OPEN#<group>              the site's current incident for that group
    # Sends of an incident live under its pk, with gsi1 TO#<address>/<time>#<id> (replies find them).
    def _transact(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Write all or nothing; None on success, else the cancellation code of each item."""
        try:
            self.table.meta.client.transact_write_items(TransactItems=items)
            return None
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            return [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])]

    def open_slot(self, site_id: str, group: str) -> dict[str, Any] | None:
        key = {"pk": f"SITE#{site_id}", "sk": f"OPEN#{group}"}
        item = self.table.get_item(Key=key, ConsistentRead=True).get("Item")
        return from_ddb(item) if item else None

    def get_incident(self, incident_id: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": f"INC#{incident_id}", "sk": "INCIDENT"}, ConsistentRead=True).get("Item")
        return from_ddb(item) if item else None

    def incident_link(self, clip_id: str, threat: str) -> dict[str, Any] | None:
        key = {"pk": f"CLIP#{clip_id}", "sk": f"INCIDENT#{threat}"}
        item = self.table.get_item(Key=key, ConsistentRead=True).get("Item")
        return from_ddb(item) if item else None

    def _member_items(self, incident_id: str, alert: Alert, role: str) -> list[dict[str, Any]]:
        clip_id, threat, name = alert.clip_id, alert.threat, self.table.name
        common = {"incident_id": incident_id, "clip_id": clip_id, "threat": threat, "role": role,
                  "recorded_at": alert.recorded_at, "confidence": alert.confidence,
                  "device_id": alert.device_id, "created_at": clock.stamp()}
        return [
            {"Put": {"TableName": name, "ConditionExpression": "attribute_not_exists(pk)", "Item": to_ddb(
                common | {"pk": f"CLIP#{clip_id}", "sk": f"INCIDENT#{threat}", "type": "incident_link"})}},
            {"Put": {"TableName": name, "ConditionExpression": "attribute_not_exists(pk)", "Item": to_ddb(
                common | {"pk": f"INC#{incident_id}", "sk": f"MEMBER#{clip_id}#{threat}", "type": "incident_member"})}},
        ]

    def create_incident(self, incident: Mapping[str, Any], alert: Alert, replaces: str | None) -> str:
        """Open an incident and take the site's slot for its group, in one transaction: the slot must still
        be empty (or still hold ``replaces``, the stale incident the caller saw). Returns "opened", "taken"
        (another alert opened one first: join that) or "linked" (this alert already went to an incident)."""
        iid, name = incident["incident_id"], self.table.name
        cond = "attribute_not_exists(pk)" if replaces is None else "incident_id = :prev"
        slot: dict[str, Any] = {"TableName": name, "ConditionExpression": cond, "Item": to_ddb({
            "pk": f"SITE#{incident['site_id']}", "sk": f"OPEN#{incident['group']}", "type": "incident_slot",
            "incident_id": iid, "updated_at": clock.stamp()})}
        if replaces is not None:
            slot["ExpressionAttributeValues"] = {":prev": replaces}
        codes = self._transact([
            *self._member_items(iid, alert, "opened"),
            {"Put": slot},
            {"Put": {"TableName": name, "ConditionExpression": "attribute_not_exists(pk)",
                     "Item": to_ddb(dict(incident) | {"pk": f"INC#{iid}", "sk": "INCIDENT", "type": "incident"})}},
        ])
        if codes is None:
            return "opened"
        return "linked" if codes[0] == "ConditionalCheckFailed" else "taken"

    def join_incident(self, incident_id: str, alert: Alert, heard_at: str) -> str:
        """Add an alert to an active incident (open or acknowledged). Returns "joined", "linked" (this alert
        had joined before: a redelivery) or "closed" (the incident is no longer active)."""
        codes = self._transact([
            *self._member_items(incident_id, alert, "joined"),
            {"Update": {"TableName": self.table.name, "Key": {"pk": f"INC#{incident_id}", "sk": "INCIDENT"},
                        "UpdateExpression": "ADD alerts :one SET updated_at = :u",
                        "ConditionExpression": "#s IN (:open, :ack)",
                        "ExpressionAttributeNames": {"#s": "state"},
                        "ExpressionAttributeValues": {":one": 1, ":u": clock.stamp(), ":open": "open",
                                                      ":ack": "acknowledged"}}},
        ])
        if codes is None:
            for attr, value in (("last_heard", heard_at), ("max_confidence", to_ddb(alert.confidence))):
                self._raise_to(incident_id, attr, value)
            return "joined"
        return "linked" if codes[0] == "ConditionalCheckFailed" else "closed"

    def _raise_to(self, incident_id: str, attr: str, value: Any) -> None:
        """Set ``attr`` to ``value`` only if that raises it (clips may land out of order)."""
        try:
            self.table.update_item(Key={"pk": f"INC#{incident_id}", "sk": "INCIDENT"},
                                   UpdateExpression="SET #a = :v", ConditionExpression="#a < :v",
                                   ExpressionAttributeNames={"#a": attr}, ExpressionAttributeValues={":v": value})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def update_incident(self, incident_id: str, fields: Mapping[str, Any], *, remove: Iterable[str] = (),
                        expect: Mapping[str, Any] | None = None, append_trace: Iterable[str] = ()) -> bool:
        """Conditional update: ``expect`` maps attribute -> required value (a tuple: any of). False when
        the condition failed (someone else changed the incident first)."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {":u": clock.stamp()}
        sets = ["updated_at = :u"]
        for i, (k, v) in enumerate(fields.items()):
            names[f"#f{i}"] = k
            values[f":f{i}"] = to_ddb(v)
            sets.append(f"#f{i} = :f{i}")
        trace = list(append_trace)
        if trace:
            names["#tr"] = "trace"
            values[":tr"], values[":empty"] = trace, []
            sets.append("#tr = list_append(if_not_exists(#tr, :empty), :tr)")
        expr = "SET " + ", ".join(sets)
        rem = list(remove)
        if rem:
            for i, k in enumerate(rem):
                names[f"#r{i}"] = k
            expr += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(rem)))
        conds = ["attribute_exists(pk)"]
        for i, (k, v) in enumerate((expect or {}).items()):
            names[f"#c{i}"] = k
            if isinstance(v, tuple):
                for j, one in enumerate(v):
                    values[f":c{i}_{j}"] = to_ddb(one)
                conds.append(f"#c{i} IN ({', '.join(f':c{i}_{j}' for j in range(len(v)))})")
            elif v is None:
                conds.append(f"attribute_not_exists(#c{i})")
            else:
                values[f":c{i}"] = to_ddb(v)
                conds.append(f"#c{i} = :c{i}")
        return conditional(
            self.table.update_item,
            Key={"pk": f"INC#{incident_id}", "sk": "INCIDENT"}, UpdateExpression=expr,
            ConditionExpression=" AND ".join(conds), ExpressionAttributeNames=names,
            ExpressionAttributeValues=values
        )

    def incident_members(self, incident_id: str) -> list[dict[str, Any]]:
        return self._query_pk(f"INC#{incident_id}", "MEMBER#")

    def incidents_due(self, now: str) -> list[dict[str, Any]]:
        """Open incidents whose escalation time has come (the sparse ESCALATE index entries)."""
        cond = Key("gsi1pk").eq("ESCALATE") & Key("gsi1sk").lte(f"{now}~")
        return self._all(self.table.query, {"IndexName": "gsi1", "KeyConditionExpression": cond})

    def alerts_between(self, site_id: str, start: str, end: str) -> list[Alert]:
        """The site's alerts recorded in [start, end] (UTC ISO), via gsi1 SITE#<site> / ALERT#<time>."""
        cond = Key("gsi1pk").eq(f"SITE#{site_id}") & Key("gsi1sk").between(f"ALERT#{start}", f"ALERT#{end}~")
        return [Alert.from_item(a) for a in self._all(self.table.query, {"IndexName": "gsi1",
                                                                          "KeyConditionExpression": cond})]

    def annotate_alert(self, clip_id: str, threat: str, fields: Mapping[str, Any]) -> None:
        """The decision trace and outcome on the alert item (an update: a stream MODIFY, which the notify
        filter does not pass)."""
        names = {f"#{k}": k for k in fields}
        values = {f":{k}": to_ddb(v) for k, v in fields.items()}
        self.table.update_item(Key={"pk": f"CLIP#{clip_id}", "sk": f"ALERT#{threat}"},
                               UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in fields),
                               ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def rangers_by_phone(self, phone: str) -> list[dict[str, Any]]:
        return self._query_index(f"PHONE#{phone}")

    def mark_number_invalid(self, phone: str, code: int | None, reason: str) -> int:
        """Twilio said this number cannot be texted (21211, 21610 ...): flag every ranger item with it."""
        n = 0
        for r in self.rangers_by_phone(phone):
            self.table.update_item(Key={"pk": r["pk"], "sk": r["sk"]},
                                   UpdateExpression="SET number_invalid = :t, number_error = :e, "
                                                    "number_error_code = :c, number_checked_at = :u",
                                   ExpressionAttributeValues={":t": True, ":e": reason, ":c": code or 0,
                                                              ":u": clock.stamp()})
            n += 1
        return n

    def sends_to(self, phone: str, limit: int = 20) -> list[dict[str, Any]]:
        """The latest sends to ``phone`` (an address on any channel), newest first."""
        page = self.table.query(IndexName="gsi1", KeyConditionExpression=Key("gsi1pk").eq(f"TO#{phone}"),
                                ScanIndexForward=False, Limit=limit)
        return [from_ddb(i) for i in page.get("Items", [])]

    def label_clip(self, clip_id: str, label: str, by: str, at: str, incident_id: str) -> None:
        """A verdict on a clip, kept for retraining (``label: false_alarm``)."""
        self.table.update_item(Key={"pk": f"CLIP#{clip_id}", "sk": "CLIP"},
                               UpdateExpression="SET #l = :l, label_by = :b, label_at = :a, label_incident = :i",
                               ConditionExpression="attribute_exists(pk)", ExpressionAttributeNames={"#l": "label"},
                               ExpressionAttributeValues={":l": label, ":b": by, ":a": at, ":i": incident_id})

    # Inbound SMS replies, one item per Twilio MessageSid (``REPLY#<sid>`` / ``REPLY``, TTL expires_at):
    # the claim that lets a reply act at most once, and the answer it got (a replay gets the same one).
    def claim_reply(self, message_sid: str, record: Mapping[str, Any], expires_at: int) -> bool:
        return conditional(
            self.table.put_item,
            Item=to_ddb(dict(record) | {"pk": f"REPLY#{message_sid}", "sk": "REPLY", "type": "sms_reply",
                                        "message_sid": message_sid, "expires_at": expires_at,
                                        "reply_status": "claimed", "created_at": clock.stamp()}),
            ConditionExpression="attribute_not_exists(pk) OR reply_status = :released",
            ExpressionAttributeValues={":released": "released"},
        )

    def get_reply(self, message_sid: str) -> dict[str, Any] | None:
        item = self.table.get_item(Key={"pk": f"REPLY#{message_sid}", "sk": "REPLY"}, ConsistentRead=True).get("Item")
        return from_ddb(item) if item else None

    def finish_reply(self, message_sid: str, fields: Mapping[str, Any]) -> None:
        names = {f"#{k}": k for k in fields}
        values = {f":{k}": to_ddb(v) for k, v in fields.items()}
        self.table.update_item(Key={"pk": f"REPLY#{message_sid}", "sk": "REPLY"},
                               UpdateExpression="SET " + ", ".join(f"#{k} = :{k}" for k in fields),
                               ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def release_reply(self, message_sid: str) -> None:
        """Give a claim back when acting on the reply failed, so that Twilio's retry can act (an update,
        not a delete: the function is not allowed to delete)."""
        self.finish_reply(message_sid, {"reply_status": "released"})

    def list_incidents(self) -> list[dict[str, Any]]:
        """Every incident (a scan: for the demo and small tables, not for a hot path)."""
        return self._all(self.table.scan, {"FilterExpression": "#t = :t", "ExpressionAttributeNames": {"#t": "type"},
                                           "ExpressionAttributeValues": {":t": "incident"}})

    # --- scans for the local stack and the CLI ------------------------------------------------
    @staticmethod
    def _all(op: Any, kw: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a query or scan, page after page."""
        out: list[dict[str, Any]] = []
        while True:
            page = op(**kw)
            out.extend(from_ddb(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return out
            kw = kw | {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def _query_pk(self, pk: str, prefix: str) -> list[dict[str, Any]]:
        cond = Key("pk").eq(pk) & Key("sk").begins_with(prefix)
        return self._all(self.table.query, {"KeyConditionExpression": cond, "ConsistentRead": True})

    def _query_index(self, pk: str, prefix: str = "") -> list[dict[str, Any]]:
        cond = Key("gsi1pk").eq(pk)
        if prefix:
            cond = cond & Key("gsi1sk").begins_with(prefix)
        return self._all(self.table.query, {"IndexName": "gsi1", "KeyConditionExpression": cond})

    def scan_all(self) -> list[dict[str, Any]]:
        return self._all(self.table.scan, {})


def legacy_sms_key(pk: str, channel: str, ranger_id: str, step: str) -> dict[str, str] | None:
    """Where an SMS send was claimed before sends were keyed by channel (None for other channels). The
    reads of it can go once no incident opened before that deploy is still active."""
    return {"pk": pk, "sk": f"SMS#{step}#{ranger_id}"} if channel == "sms" else None

