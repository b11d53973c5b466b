"""Presigned uploads for recorders: a device proves who it is and gets a POST it can use for one clip only.

The request (JSON)::

    {"site": "nahuelbuta-norte", "device": "rec-01", "secret": "...",
     "recorded_at": "20261128T131400Z" (or ISO 8601 in UTC), "ext": "flac",
     "size": 123456, "md5": "<hex>", "sha256": "<hex>"}

The answer is a presigned S3 POST whose policy pins (S3 checks each of these on the upload):
  - the key to exactly ``clips/<site>/<device>/<T>.<ext>`` (``{"key": ...}`` exact match),
  - the Content-Type for that format,
  - the size: ``content-length-range`` [size, size], and size <= MAX_CLIP_BYTES,
  - the content: ``Content-MD5`` (S3 refuses a body whose MD5 differs) and ``x-amz-meta-sha256`` (kept
    with the object for end-to-end checks later; S3 does not verify that one),
  - a short expiry.
The role that signs can only s3:PutObject under clips/, so the policy can never reach further.

Refusals carry a reason and a code (a metric ``UploadRefused_<code>``): 400 bad request (malformed,
format not allowed, time in the future, too large), 401 unknown device or wrong secret, 403 revoked,
409 a different recording already exists under that key, 429 too many requests this minute, or too
many failed attempts (in fixed windows) before the secret is even checked: per device id from one source
address (so a stranger guessing from elsewhere cannot lock the real recorder out), per device id from all
addresses together (a higher ceiling against guessing from many), and per source address.
A clip that already exists with the same MD5 (the object's ETag) is answered 200 ``{"duplicate": true}``
so the recorder does not send it again.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sentinela.adapters.metrics import MetricSink, NullMetrics
from sentinela.domain.keys import AUDIO_EXTENSIONS, TIMESTAMP_FORMAT, BadKey, make_key
from sentinela.domain.repositories import DeviceRepository
from sentinela.services.devices import SCRYPT_N, SCRYPT_P, SCRYPT_R, verify_secret

CONTENT_TYPES = {"flac": "audio/flac", "wav": "audio/wav", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PresignAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    def __init__(self, status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.headers = status, code, reason, headers or {}


def parse_recorded_at(value: Any) -> datetime:
    """``YYYYMMDDTHHMMSSZ`` (the key's own form) or ISO 8601 with a zone; always UTC out."""
    if not isinstance(value, str) or not value:
        raise Refused(400, "bad_time", "recorded_at is missing (a UTC time, YYYYMMDDTHHMMSSZ)")
    try:
        when = datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise Refused(400, "bad_time", f"recorded_at {value!r} is not a time (YYYYMMDDTHHMMSSZ)") from None
        if when.tzinfo is None:
            raise Refused(400, "bad_time", f"recorded_at {value!r} has no time zone (end it with Z)") from None
    try:
        return when.astimezone(UTC).replace(microsecond=0)
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is past the last representable UTC time
        raise Refused(400, "bad_time", f"recorded_at {value[:40]!r} is out of range") from None


# What an unknown device is checked against, so that it costs the same scrypt as a known one: the hash of
# a random secret that was thrown away (no secret matches it), with the parameters devices are given.
_DUMMY_HASH = {"kdf": "scrypt", "kdf_n": SCRYPT_N, "kdf_r": SCRYPT_R, "kdf_p": SCRYPT_P,
               "salt": "uuxp2kStRM0dVAtdYtDTzw==", "secret_hash": "vdaFZNEaoJD8x/OlfJqp6qUzPH991C5m+bo2cqYdD+Y="}


class PresignService:
    def __init__(self, store: DeviceRepository, s3: Any, bucket: str, *, max_bytes: int, ttl_s: int = 600,
                 skew_s: int = 300, per_minute: int = 30, metrics: MetricSink | None = None,
                 clock: Callable[[], float] = time.time, failures_per_device: int = 10,
                 failures_per_ip: int = 20, failure_window_s: int = 600,
                 failures_per_device_all: int = 100) -> None:
        self.store, self.s3, self.bucket = store, s3, bucket
        self.max_bytes, self.ttl_s, self.skew_s, self.per_minute = max_bytes, ttl_s, skew_s, per_minute
        self.failures_per_device, self.failures_per_ip = failures_per_device, failures_per_ip
        self.failures_per_device_all = failures_per_device_all
        self.failure_window_s = failure_window_s
        self.metrics: MetricSink = metrics or NullMetrics()
        self.clock = clock

    def handle(self, payload: Any, source_ip: str | None = None) -> PresignAnswer:
        try:
            answer = self._handle(payload, source_ip or "unknown")
        except Refused as r:
            self.metrics.add_metric(f"UploadRefused_{r.code}", "Count", 1)
            return PresignAnswer(r.status, {"error": r.code, "reason": r.reason}, r.headers)
        self.metrics.add_metric("UploadDuplicate" if answer.body.get("duplicate") else "UploadPresigned", "Count", 1)
        return answer

    def _handle(self, payload: Any, source_ip: str) -> PresignAnswer:
        if not isinstance(payload, Mapping):
            raise Refused(400, "bad_request", "the body must be a JSON object")
        site, device, secret = payload.get("site"), payload.get("device"), payload.get("secret")
        if not all(isinstance(v, str) and v for v in (site, device, secret)):
            raise Refused(400, "bad_request", "site, device and secret are required strings")
        assert isinstance(site, str) and isinstance(device, str) and isinstance(secret, str)
        if len(site) > 64 or len(device) > 64 or len(secret) > 256:
            raise Refused(400, "bad_request", "site and device are at most 64 characters, the secret 256")
        now = self.clock()
        window = int(now // self.failure_window_s)
        counters = [(f"AUTHFAIL#{site}/{device}@{source_ip}", str(window), self.failures_per_device,
                     f"device {device} from this address"),
                    (f"AUTHFAIL#{site}/{device}", str(window), self.failures_per_device_all,
                     f"device {device} from all addresses"),
                    (f"AUTHFAIL#ip/{source_ip}", str(window), self.failures_per_ip, "this address")]
        for pk, sk, limit, who in counters:
            if self.store.auth_failures(pk, sk) >= limit:
                retry = self.failure_window_s - int(now) % self.failure_window_s
                raise Refused(429, "rate_limited", f"too many failed attempts for {who}; retry in {retry} s",
                              {"Retry-After": str(retry)})
        item = self.store.get_device(site, device)
        # Unknown device and wrong secret read the same and cost the same (an unknown device is checked
        # against a dummy hash), so neither the answer nor its timing tells which ids exist.
        ok = verify_secret(secret, item if item is not None else _DUMMY_HASH)
        if item is None or not ok:
            expires = (window + 2) * self.failure_window_s
            for pk, sk, _, _ in counters:
                self.store.add_auth_failure(pk, sk, expires)
            self.metrics.add_metric("UploadAuthFailed", "Count", 1)
            raise Refused(401, "unauthorized", "unknown device or wrong secret")
        if item.get("status") != "active":
            raise Refused(403, "revoked", f"device {device} at {site} is revoked; ask for a new secret")
        minute = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M")
        if not self.store.count_upload_request(site, device, minute, self.per_minute, int(now) + 120):
            retry = 60 - int(now) % 60
            raise Refused(429, "rate_limited", f"more than {self.per_minute} upload requests this minute; "
                          f"retry in {retry} s", {"Retry-After": str(retry)})
        when = parse_recorded_at(payload.get("recorded_at"))
        if when.timestamp() > now + self.skew_s:
            raise Refused(400, "future_time", f"recorded_at {when:%Y-%m-%dT%H:%M:%SZ} is in the future "
                          f"(more than {self.skew_s} s ahead of the server clock); check the recorder's clock")
        ext = str(payload.get("ext", "")).lower().lstrip(".")
        if ext not in AUDIO_EXTENSIONS:
            raise Refused(400, "bad_format", f"format {ext!r} is not allowed (one of {', '.join(AUDIO_EXTENSIONS)})")
        size, md5, sha256 = payload.get("size"), str(payload.get("md5", "")).lower(), str(payload.get("sha256", ""))
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise Refused(400, "bad_size", "size must be the file's length in bytes (> 0)")
        if size > self.max_bytes:
            raise Refused(400, "too_large", f"{size} bytes is over the {self.max_bytes}-byte limit per clip")
        if not _HEX32.match(md5) or not _HEX64.match(sha256.lower()):
            raise Refused(400, "bad_checksum",
                          "md5 (32 hex digits) and sha256 (64 hex digits) of the file are required")
        try:
            key = make_key(site, device, when, ext)
        except BadKey as exc:
            raise Refused(400, "bad_key", str(exc)) from None
        existing = self._existing_etag(key)
        if existing == md5:
            return PresignAnswer(200, {"duplicate": True, "key": key})
        if existing is not None:
            raise Refused(409, "conflict", f"a different recording is already stored as {key}; "
                          "a clip is never overwritten (check the recorder's clock or file names)")
        return PresignAnswer(200, self._post(key, ext, size, md5, sha256.lower(), now))

    def _existing_etag(self, key: str) -> str | None:
        """The stored clip's MD5, from its ETag: with SSE-S3 and a single-request upload the ETag is the
        body's MD5. A listing needs only s3:ListBucket (names, sizes, ETags; never the audio)."""
        res = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        for obj in res.get("Contents", []):
            if obj["Key"] == key:
                return str(obj.get("ETag", "")).strip('"').lower()
        return None

    def _post(self, key: str, ext: str, size: int, md5: str, sha256: str, now: float) -> dict[str, Any]:
        md5_b64 = base64.b64encode(binascii.unhexlify(md5)).decode()
        fields = {"Content-Type": CONTENT_TYPES[ext], "Content-MD5": md5_b64, "x-amz-meta-sha256": sha256}
        conditions: list[Any] = [{k: v} for k, v in fields.items()] + [["content-length-range", size, size]]
        post = self.s3.generate_presigned_post(self.bucket, key, Fields=fields, Conditions=conditions,
                                               ExpiresIn=self.ttl_s)
        return {"duplicate": False, "key": key, "url": post["url"], "fields": post["fields"],
                "expires_at": datetime.fromtimestamp(now + self.ttl_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
