"""Recorder uploads on the local stack: the real presign handler behind real HTTP, moto's S3 for the POSTs,
the real uploader (urllib), then the real classify handler.

moto 5.2.5's server does not check POST policies at all (measured in test_moto_does_not_enforce_post_
policies: a tampered key, an oversize body, a wrong Content-MD5 and a bad signature are all stored).
So what S3 enforces is tested on the policy document presign signs, with an evaluator of the documented
POST policy rules (every form field must match a condition; eq / starts-with / content-length-range).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from sentinela import runtime
from sentinela.adapters.store import Store
from sentinela.services.devices import add_device, revoke_device
from sentinela_tools.local.stack import LocalStack
from sentinela_tools.uploader import AuthError, Uploader
from tests.conftest import SR, impulse, noise

pytestmark = pytest.mark.integration

# Form fields S3 does not require a policy condition for (AWS docs, "Creating a POST policy").
_EXEMPT = {"policy", "x-amz-signature", "file", "signature", "awsaccesskeyid"}


def post_policy_allows(fields: dict[str, str], body_len: int) -> tuple[bool, str]:
    """S3's POST policy rules applied to a form: each condition must hold, and each form field must be
    named by a condition. Returns (allowed, why not)."""
    doc = json.loads(base64.b64decode(fields["policy"]))
    if datetime.strptime(doc["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) < datetime.now(UTC):
        return False, "policy expired"
    covered = set()
    lower = {k.lower(): v for k, v in fields.items()}
    for cond in doc["conditions"]:
        if isinstance(cond, dict):
            ((name, want),) = cond.items()
            covered.add(name.lower())
            got = "bkt" if name == "bucket" else lower.get(name.lower())
            if name != "bucket" and got != want:
                return False, f"{name}: {got!r} != {want!r}"
        elif cond[0] == "content-length-range":
            if not cond[1] <= body_len <= cond[2]:
                return False, f"size {body_len} outside {cond[1]}..{cond[2]}"
        elif cond[0] in ("eq", "starts-with"):
            name = cond[1].lstrip("$").lower()
            covered.add(name)
            got = lower.get(name, "")
            if (cond[0] == "eq" and got != cond[2]) or (cond[0] == "starts-with" and not got.startswith(cond[2])):
                return False, f"{name}: {got!r} fails {cond}"
    extra = {k for k in lower if k not in covered and k not in _EXEMPT}
    return (not extra, f"fields without a condition: {sorted(extra)}" if extra else "")


def wav16(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def ask(stack: LocalStack, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(stack.uploads_url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def request_for(site: str, device: str, secret: str, data: bytes, when: str = "20261001T120000Z",
                ext: str = "flac") -> dict[str, Any]:
    return {"site": site, "device": device, "secret": secret, "recorded_at": when, "ext": ext, "size": len(data),
            "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


def versions(stack: LocalStack, prefix: str) -> list[dict[str, Any]]:
    res = stack.client("s3").list_object_versions(Bucket=stack.names["ClipsBucket"], Prefix=prefix)
    return list(res.get("Versions", []))


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "recorder"
    d.mkdir()
    return d


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------------ the happy path


def test_device_uploads_into_its_own_prefix_and_the_clip_is_classified(stack: LocalStack, store: Store,
                                                                        folder: Path) -> None:
    secret = add_device(store, "up-a", "rec-1", 300)
    (folder / "20261001T120000Z.wav").write_bytes(wav16(impulse()))
    up = Uploader(folder, stack.uploads_url, "up-a", "rec-1", secret)
    up.scan()
    report = up.run_pass()
    (res,) = report.results
    assert res.outcome == "sent" and res.key == "clips/up-a/rec-1/20261001T120000Z.flac"
    assert res.bytes_sent < res.bytes_in  # FLAC
    assert (folder / "sent" / "20261001T120000Z.wav").is_file() and not (folder / "20261001T120000Z.wav").exists()
    (v,) = versions(stack, "clips/up-a/")
    head = stack.client("s3").head_object(Bucket=stack.names["ClipsBucket"], Key=res.key)
    flac = stack.client("s3").get_object(Bucket=stack.names["ClipsBucket"], Key=res.key)["Body"].read()
    assert head["Metadata"]["sha256"] == hashlib.sha256(flac).hexdigest()
    assert v["ETag"].strip('"') == hashlib.md5(flac).hexdigest()
    stack.run_until_idle()
    clips = [c for c in store.scan_all() if c.get("type") == "clip" and c.get("site_id") == "up-a"]
    assert [(c["status"], c["device_id"], c["alerts"]) for c in clips] == [("processed", "rec-1", ["gunshot"])]


def test_the_policy_pins_key_type_size_checksum_and_expiry(stack: LocalStack, store: Store) -> None:
    secret = add_device(store, "up-b", "rec-1")
    data = b"fLaC" + os.urandom(2000)
    status, answer = ask(stack, request_for("up-b", "rec-1", secret, data))
    assert status == 200 and answer["duplicate"] is False
    fields = answer["fields"]
    doc = json.loads(base64.b64decode(fields["policy"]))
    conds = doc["conditions"]
    assert {"key": "clips/up-b/rec-1/20261001T120000Z.flac"} in conds
    assert {"Content-Type": "audio/flac"} in conds and ["content-length-range", len(data), len(data)] in conds
    assert {"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()} in conds
    assert {"x-amz-meta-sha256": hashlib.sha256(data).hexdigest()} in conds
    expires = datetime.strptime(doc["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert expires <= datetime.now(UTC) + timedelta(seconds=601)
    assert post_policy_allows(fields, len(data)) == (True, "")
    # Another device's or site's prefix, any other key, more bytes, other content, another type: refused.
    for tamper, size in [({"key": "clips/up-b/rec-2/20261001T120000Z.flac"}, len(data)),
                         ({"key": "clips/other-site/rec-1/20261001T120000Z.flac"}, len(data)),
                         ({"key": "clips/up-b/rec-1/20261001T120001Z.flac"}, len(data)),
                         ({}, len(data) + 1),
                         ({"Content-MD5": base64.b64encode(hashlib.md5(b"other").digest()).decode()}, len(data)),
                         ({"Content-Type": "text/html"}, len(data)),
                         ({"x-amz-meta-sha256": "0" * 64}, len(data)),
                         ({"acl": "public-read"}, len(data))]:
        allowed, why = post_policy_allows(fields | tamper, size)
        assert not allowed and why, tamper


def test_moto_does_not_enforce_post_policies(stack: LocalStack, store: Store) -> None:
    """Documents the stand-in's limit (why the policy is tested above): if moto ever starts enforcing,
    this fails and the tamper cases should move to real POSTs."""
    secret = add_device(store, "up-c", "rec-1")
    data = b"fLaC" + os.urandom(100)
    _, answer = ask(stack, request_for("up-c", "rec-1", secret, data))
    fields = answer["fields"] | {"key": "clips/up-c/intruder/20261001T120000Z.flac"}
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items())
    body += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'.encode()
    body += data * 3 + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(answer["url"], data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204
    assert [v["Key"] for v in versions(stack, "clips/up-c/")] == ["clips/up-c/intruder/20261001T120000Z.flac"]


# ------------------------------------------------------------------------------------------ refusals


def test_refusals_have_a_status_and_a_reason(stack: LocalStack, store: Store) -> None:
    secret = add_device(store, "up-d", "rec-1")
    data = b"fLaC" + os.urandom(500)
    ok = request_for("up-d", "rec-1", secret, data)
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    cases = [
        (ok | {"secret": "wrong"}, 401, "unauthorized"),
        (ok | {"device": "rec-9"}, 401, "unauthorized"),
        (ok | {"recorded_at": future}, 400, "future_time"),
        (ok | {"ext": "exe"}, 400, "bad_format"),
        (ok | {"size": 10**12}, 400, "too_large"),
        (ok | {"md5": "nope"}, 400, "bad_checksum"),
        (ok | {"recorded_at": "yesterday"}, 400, "bad_time"),
    ]
    for body, status, code in cases:
        got, answer = ask(stack, body)
        assert (got, answer["error"]) == (status, code), (body, answer)
        assert answer["reason"]
    revoke_device(store, "up-d", "rec-1")
    got, answer = ask(stack, ok)
    assert (got, answer["error"]) == (403, "revoked") and "revoked" in answer["reason"]


def test_a_revoked_device_cannot_upload_and_keeps_its_files(stack: LocalStack, store: Store, folder: Path) -> None:
    secret = add_device(store, "up-e", "rec-1")
    revoke_device(store, "up-e", "rec-1")
    (folder / "20261001T120000Z.wav").write_bytes(wav16(noise(1.0)))
    up = Uploader(folder, stack.uploads_url, "up-e", "rec-1", secret)
    up.scan()
    with pytest.raises(AuthError, match="revoked"):
        up.run_pass()
    assert (folder / "20261001T120000Z.wav").is_file() and versions(stack, "clips/up-e/") == []


def test_no_overwrite_and_duplicates_are_not_sent_again(stack: LocalStack, store: Store) -> None:
    secret = add_device(store, "up-f", "rec-1")
    data = b"fLaC" + os.urandom(300)
    stack.client("s3").put_object(Bucket=stack.names["ClipsBucket"], Key="clips/up-f/rec-1/20261001T120000Z.flac",
                                  Body=data)
    got, answer = ask(stack, request_for("up-f", "rec-1", secret, data))
    assert (got, answer) == (200, {"duplicate": True, "key": "clips/up-f/rec-1/20261001T120000Z.flac"})
    got, answer = ask(stack, request_for("up-f", "rec-1", secret, b"fLaC other recording"))
    assert (got, answer["error"]) == (409, "conflict")


def test_rate_limited_per_device(stack: LocalStack, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_RATE_PER_MINUTE", "2")
    runtime.reset()  # settings are read once per container: this is a new one
    secret = add_device(store, "up-g", "rec-1")
    other = add_device(store, "up-g", "rec-2")
    data = b"fLaC" + os.urandom(30)
    codes = [ask(stack, request_for("up-g", "rec-1", secret, data))[0] for _ in range(3)]
    if codes != [200, 200, 429]:  # the minute turned between requests: one more round settles it
        codes = [ask(stack, request_for("up-g", "rec-1", secret, data))[0] for _ in range(3)]
    assert codes[-1] == 429
    assert ask(stack, request_for("up-g", "rec-2", other, data))[0] == 200  # per device


# ------------------------------------------------------------------------------ a bad link, restarts


def test_uploader_survives_an_outage_and_delivers_each_file_once(stack: LocalStack, store: Store,
                                                                 folder: Path) -> None:
    secret = add_device(store, "up-h", "rec-1")
    names = [f"20261001T1{i}0000Z.wav" for i in range(6)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(wav16(noise(1.0, seed=i)))
    clock = Clock()

    def uploader() -> Uploader:  # a new process each time: all it knows is on disk
        return Uploader(folder, stack.uploads_url, "up-h", "rec-1", secret, base_delay_s=30, max_delay_s=600,
                        clock=clock)

    try:
        stack.http_api.fail(503, times=-1)  # the endpoint answers 503 ...
        up = uploader()
        up.scan()
        assert [r.outcome for r in up.run_pass().results] == ["retry"] * 6
        stack.http_api.stop()  # ... then is gone altogether
        clock.t += 31
        up = uploader()
        assert {r.outcome for r in up.run_pass().results} == {"retry"}
        state = json.loads((folder / ".sentinela" / "state.json").read_text())
        assert all(e["attempts"] == 2 and "unreachable" in e["last_error"] for e in state["files"].values())
        assert up.run_pass().count("waiting") == 6  # backing off: not retried before its time
    finally:
        stack.http_api.clear()
        if not stack.http_api.running:
            stack.http_api.start()  # the link comes back on the same address
    clock.t += 600
    report = uploader().run_pass()
    assert report.count("sent") == 6
    assert sorted(p.name for p in (folder / "sent").iterdir()) == sorted(names)
    # A restart that lost track (the file is back in the folder, e.g. the move was not persisted) asks
    # again and is told "duplicate": the clip is not stored twice.
    shutil.copy(folder / "sent" / names[0], folder / names[0])
    again = uploader()
    again.scan()
    assert [r.outcome for r in again.run_pass().results] == ["duplicate"]
    stored = versions(stack, "clips/up-h/")
    assert len(stored) == 6 and len({v["Key"] for v in stored}) == 6


def test_half_written_files_are_left_alone(stack: LocalStack, store: Store, folder: Path) -> None:
    secret = add_device(store, "up-i", "rec-1")
    up = Uploader(folder, stack.uploads_url, "up-i", "rec-1", secret)
    (folder / "20261001T120000Z.wav.part").write_bytes(wav16(noise(0.5)))
    growing = folder / "20261001T130000Z.wav"
    growing.write_bytes(wav16(noise(0.5))[:1000])
    up.scan()
    growing.write_bytes(wav16(noise(0.5)))  # still being written between scans
    assert up.run_pass().results == []
    (folder / "20261001T120000Z.wav.part").rename(folder / "20261001T120000Z.wav")
    up.scan()
    report = up.run_pass()
    assert sorted(r.outcome for r in report.results) == ["sent", "sent"]


@pytest.fixture(autouse=True)
def _api_up(stack: LocalStack) -> Iterator[None]:
    yield
    stack.http_api.clear()
    if not stack.http_api.running:
        stack.http_api.start()
