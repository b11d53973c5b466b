"""The S3 key scheme, parsed and validated in one place.

``clips/<site_id>/<device_id>/<YYYYMMDDTHHMMSSZ>.<ext>``; S3 event keys arrive URL-encoded
(``site 1`` as ``site+1``), so every entry point hands the raw event key to :func:`parse_event_key`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus

PREFIX = "clips"
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# Ids are what a field technician types on a recorder: ASCII letters, digits, '-' and '_', so that
# they are safe in S3 keys, DynamoDB keys, log lines, tag values and SMS alike.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_STAMP = re.compile(r"^\d{8}T\d{6}Z$")


class BadKey(ValueError):
    """A key that does not fit the scheme; ``str(err)`` is the reason a person can act on."""


@dataclass(frozen=True)
class ClipKey:
    site_id: str
    device_id: str
    recorded_at: datetime
    ext: str

    @property
    def key(self) -> str:
        return f"{PREFIX}/{self.site_id}/{self.device_id}/{self.recorded_at.strftime(TIMESTAMP_FORMAT)}.{self.ext}"

    @property
    def recorded_iso(self) -> str:
        return self.recorded_at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ClipRef:
    """One clip: the S3 object version it is, and what its key says (no site, device or time: a bad key)."""
    bucket: str
    key: str
    version_id: str | None
    clip_id: str
    site_id: str | None = None
    device_id: str | None = None
    recorded_at: str | None = None


def _check_id(kind: str, value: str) -> str:
    if not value:
        raise BadKey(f"missing {kind}")
    if value in (".", ".."):
        raise BadKey(f"{kind} may not be '{value}'")
    if not _ID.match(value):
        shown = unicodedata.normalize("NFC", value)
        raise BadKey(
            f"{kind} {shown!r} has characters outside A-Z a-z 0-9 - _ (or is longer than 64)"
        )
    return value


def parse_key(key: str) -> ClipKey:
    """Parse an already-decoded object key; raise :class:`BadKey` with the reason if it does not fit."""
    if not key:
        raise BadKey("empty key")
    parts = key.split("/")
    if parts[0] != PREFIX:
        raise BadKey(f"key must start with '{PREFIX}/'")
    if len(parts) != 4:
        raise BadKey(
            f"key must be {PREFIX}/<site_id>/<device_id>/<YYYYMMDDTHHMMSSZ>.<ext>, got {len(parts)} parts"
        )
    _, site, device, name = parts
    _check_id("site_id", site)
    _check_id("device_id", device)
    stem, dot, ext = name.rpartition(".")
    if not dot:
        raise BadKey("file name has no extension")
    ext = ext.lower()
    if ext not in AUDIO_EXTENSIONS:
        raise BadKey(f"extension '.{ext}' is not one of {', '.join('.' + e for e in AUDIO_EXTENSIONS)}")
    if not _STAMP.match(stem):
        raise BadKey(f"file name {stem!r} is not a UTC time YYYYMMDDTHHMMSSZ")
    try:
        when = datetime.strptime(stem, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadKey(f"file name {stem!r} is not a valid time ({exc})") from exc
    return ClipKey(site_id=site, device_id=device, recorded_at=when, ext=ext)


def decode_event_key(raw: str) -> str:
    """S3 notifications URL-encode keys with '+' for spaces."""
    return unquote_plus(raw)


def parse_event_key(raw: str) -> ClipKey:
    return parse_key(decode_event_key(raw))


def make_key(site_id: str, device_id: str, recorded_at: datetime, ext: str) -> str:
    """Build a key and validate it by the same rules that parse it."""
    when = recorded_at.astimezone(UTC) if recorded_at.tzinfo else recorded_at.replace(tzinfo=UTC)
    key = f"{PREFIX}/{site_id}/{device_id}/{when.strftime(TIMESTAMP_FORMAT)}.{ext.lower().lstrip('.')}"
    parse_key(key)
    return key


def clip_id_for(key: str, version_id: str | None) -> str:
    """A new object version is a new clip; the same version delivered twice is the same clip."""
    base = key[len("clips/"):] if key.startswith("clips/") else "badkey/" + hashlib.sha1(key.encode()).hexdigest()[:16]
    base = base.rsplit(".", 1)[0] if key.startswith("clips/") else base
    return f"{base}@{version_id}" if version_id and version_id != "null" else base
