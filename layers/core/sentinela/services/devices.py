"""The device registry: which recorders may upload, to which site, how often they are expected to.

A device's secret is printed once when it is added and never stored: the table keeps a salted scrypt
hash (per-device random salt, parameters stored beside it so they can be raised later). The secret is
32 random bytes, so the hash is there against a leaked table dump, not against guessing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sentinela.domain import clock
from sentinela.domain.keys import BadKey, make_key
from sentinela.domain.repositories import DeviceRepository

DEFAULT_CADENCE_S = 600
# scrypt with n=2**14, r=8 costs 16 MiB and tens of milliseconds: fine in a 256 MB function.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class DeviceError(ValueError):
    """A registry operation that cannot be done; ``str(err)`` says why."""


@dataclass(frozen=True)
class Device:
    site_id: str
    device_id: str
    cadence_s: int
    status: str
    created_at: str
    revoked_at: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_secret(secret: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R,
                p: int = SCRYPT_P) -> dict[str, Any]:
    """The fields stored for a secret: the KDF, its parameters, the salt and the hash."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return {"kdf": "scrypt", "kdf_n": n, "kdf_r": r, "kdf_p": p, "salt": _b64(salt), "secret_hash": _b64(digest)}


def verify_secret(secret: str, stored: dict[str, Any]) -> bool:
    """Constant-time comparison against the stored hash; False for anything malformed."""
    if stored.get("kdf") != "scrypt" or not stored.get("salt") or not stored.get("secret_hash"):
        return False
    try:
        salt = base64.b64decode(stored["salt"])
        expected = base64.b64decode(stored["secret_hash"])
        got = hashlib.scrypt(secret.encode(), salt=salt, n=int(stored["kdf_n"]), r=int(stored["kdf_r"]),
                             p=int(stored["kdf_p"]), maxmem=64 * 1024 * 1024, dklen=len(expected))
    except (ValueError, TypeError, KeyError):
        return False
    return hmac.compare_digest(got, expected)


def check_ids(site_id: str, device_id: str) -> None:
    """Ids go into S3 keys: the same rules as :mod:`sentinela.domain.keys`."""
    try:
        make_key(site_id, device_id, clock.now(), "flac")
    except BadKey as exc:
        raise DeviceError(str(exc)) from exc


def check_location(lat: float | None, lon: float | None) -> None:
    if (lat is None) != (lon is None):
        raise DeviceError("give both --lat and --lon, or neither")
    if lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise DeviceError(f"no such place: lat {lat} (-90..90), lon {lon} (-180..180)")


def add_device(store: DeviceRepository, site_id: str, device_id: str, cadence_s: int = DEFAULT_CADENCE_S,
               lat: float | None = None, lon: float | None = None) -> str:
    """Register a device (or re-issue a revoked one: same id, new secret) and return its secret, the
    only time it exists outside the device. ``lat``/``lon`` put the alert's map link on the recorder
    instead of the site's centre."""
    check_ids(site_id, device_id)
    check_location(lat, lon)
    if cadence_s <= 0:
        raise DeviceError(f"cadence must be a positive number of seconds, got {cadence_s}")
    secret = new_secret()
    item = {"site_id": site_id, "device_id": device_id, "cadence_s": int(cadence_s), "status": "active",
            "created_at": clock.stamp()} | hash_secret(secret)
    if not store.put_device(item):
        raise DeviceError(f"device {device_id} is already active at site {site_id} "
                          f"(`sentinela devices revoke {site_id} {device_id}` first to issue a new secret)")
    if lat is not None and lon is not None:
        store.locate_device(site_id, device_id, lat, lon)
    return secret


def locate_device(store: DeviceRepository, site_id: str, device_id: str, lat: float, lon: float) -> None:
    check_location(lat, lon)
    if not store.locate_device(site_id, device_id, lat, lon):
        raise DeviceError(f"no device {device_id} at site {site_id}")


def revoke_device(store: DeviceRepository, site_id: str, device_id: str) -> None:
    if not store.revoke_device(site_id, device_id, clock.stamp()):
        raise DeviceError(f"no device {device_id} at site {site_id}")


def to_device(item: dict[str, Any]) -> Device:
    return Device(site_id=item["site_id"], device_id=item["device_id"], cadence_s=int(item.get("cadence_s", 0)),
                  status=str(item.get("status", "active")), created_at=str(item.get("created_at", "")),
                  revoked_at=item.get("revoked_at"),
                  lat=None if item.get("lat") is None else float(item["lat"]),
                  lon=None if item.get("lon") is None else float(item["lon"]))


def list_devices(store: DeviceRepository, site_id: str | None = None) -> list[Device]:
    return sorted((to_device(i) for i in store.list_devices(site_id)), key=lambda d: (d.site_id, d.device_id))
