"""Hostile and broken requests to the two HTTP endpoints (POST /uploads: presign; POST /sms/reply:
sms_reply), over real HTTP on the local stack and as raw API Gateway events: each gets a 400, 403, 413
or 429 with a reason, never a 500, and nothing acts. Also: an unknown device costs the same work as a
known one with a wrong secret, and failed attempts are limited per device and per source address.
The "requests" section of docs/BAD_INPUT.md is this corpus's output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from sentinela import runtime
from sentinela.adapters.store import Store
from sentinela.services import devices
from sentinela_tools.local.stack import LocalStack
from tests.integration.docs_section import check_section

pytestmark = pytest.mark.integration

SITE = "hostile"


@dataclass
class Req:
    endpoint: str  # "/uploads" | "/sms/reply"
    what: str
    body: bytes | None = None  # sent over HTTP
    content_type: str = "application/json"
    event: Callable[[LocalStack], dict[str, Any]] | None = None  # or a raw API Gateway event
    status: int = 400


def _post(stack: LocalStack, path: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
          ) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"{stack.http_api.url}{path}", data=body, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _upload(secret: str, **kw: Any) -> bytes:
    body = {"site": SITE, "device": "rec-1", "secret": secret, "recorded_at": "20261128T131400Z", "ext": "flac",
            "size": 1000, "md5": "0" * 32, "sha256": "0" * 64} | kw
    return json.dumps(body).encode()


def _raw_event(stack: LocalStack, path: str, body: str, b64: bool) -> dict[str, Any]:
    ev = stack.http_api.event("POST", path, {"content-type": "application/octet-stream"}, b"x")
    ev["body"], ev["isBase64Encoded"] = body, b64
    return ev


def corpus(secret: str) -> list[Req]:
    nested = {"a": 1}
    for _ in range(20):
        nested = {"a": nested}
    form = "application/x-www-form-urlencoded"
    return [
        Req("/uploads", "a byte 0xFF in the body (sent as application/octet-stream: base64 to the handler)",
            b'{"site": "\xff"}', "application/octet-stream"),
        Req("/uploads", "a byte 0xFF in a JSON body (the local API hands it on as U+FFFD)", b'{"site": "\xff"}'),
        Req("/uploads", "body is not valid base64 (raw event)",
            event=lambda s: _raw_event(s, "/uploads", "!!not base64!!", True)),
        Req("/uploads", "100,000 '['", b"[" * 100_000, status=413),
        Req("/uploads", "5,000 '[' (under the size limit)", b"[" * 5_000),
        Req("/uploads", "valid JSON nested 21 levels deep", json.dumps(nested).encode()),
        Req("/uploads", "1 MB of JSON", json.dumps({"site": "x" * 1_000_000}).encode(), status=413),
        Req("/uploads", "a JSON array, not an object", b"[1, 2, 3]"),
        Req("/uploads", "a site id of 1,000 characters", _upload("x", site="s" * 1000)),
        Req("/uploads", "recorded_at 9999-12-31T23:59:59-14:00 (past the last UTC time)",
            _upload(secret, recorded_at="9999-12-31T23:59:59-14:00")),
        Req("/uploads", "recorded_at 0001-01-01T00:00:00+14:00 (before the first UTC time)",
            _upload(secret, recorded_at="0001-01-01T00:00:00+14:00")),
        Req("/uploads", "recorded_at 9999-12-31T23:59:59Z (valid, far in the future)",
            _upload(secret, recorded_at="9999-12-31T23:59:59Z")),
        Req("/sms/reply", "a byte 0xFF in the form", b"From=%2B569&Body=\xff1", form),
        Req("/sms/reply", "percent-encoded invalid UTF-8 (%FF) in the form", b"From=%2B569&Body=%FF1", form),
        Req("/sms/reply", "body is not valid base64 (raw event)",
            event=lambda s: _raw_event(s, "/sms/reply", "!!not base64!!", True)),
        Req("/sms/reply", "1 MB form body", b"Body=" + b"1" * 1_000_000, form, status=413),
        Req("/sms/reply", "1,000 form fields", "&".join(f"f{i}=1" for i in range(1000)).encode(), form),
        Req("/sms/reply", "a valid form without X-Twilio-Signature",
            urllib.parse.urlencode({"MessageSid": "SM1", "From": "+56900000401", "Body": "2"}).encode(), form,
            status=403),
        Req("/sms/reply", "100,000 '[' as a form", b"[" * 100_000, form, status=413),
    ]


def test_hostile_requests_get_a_4xx_with_a_reason(stack: LocalStack, store: Store) -> None:
    secret = devices.add_device(store, SITE, "rec-1")
    before = {(i["pk"], i["sk"]) for i in store.scan_all()}
    rows = []
    for case in corpus(secret):
        if case.event is not None:
            out = (stack._invoke_presign if case.endpoint == "/uploads" else stack._invoke_sms_reply)(
                case.event(stack))
            status, text = int(out["statusCode"]), str(out.get("body", ""))
        else:
            assert case.body is not None
            status, _, text = _post(stack, case.endpoint, case.body, case.content_type)
        assert status == case.status, (case.what, status, text)
        assert "Traceback" not in text and "Internal Server Error" not in text
        reason = json.loads(text)["reason"] if case.endpoint == "/uploads" else text
        rows.append((case, status, reason))
    after = {(i["pk"], i["sk"]) for i in store.scan_all()}
    # only the upload-rate counter of the one authenticated request may have been written
    assert {k for k in after - before if not k[1].startswith("UPLOADRATE#")} == set(), after - before
    lines = [
        "## Requests: hostile and broken bodies at the HTTP endpoints",
        "",
        "Generated by `tests/integration/test_hostile_requests.py`: each request was sent over real HTTP to the "
        "local stack's HTTP API (or, for bodies HTTP cannot carry, as the API Gateway event itself) and "
        "answered by the real handler. None got a 500; none changed anything. Bodies are size-checked before "
        "they are decoded (16 KiB for /uploads, 32 KiB for /sms/reply), JSON is at most 16 levels deep.",
        "",
        "| # | endpoint | request | status | reason |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | `{c.endpoint}` | {c.what} | {st} | {why.replace('|', chr(92) + '|')} |"
              for i, (c, st, why) in enumerate(rows, 1)]
    check_section("requests", "\n".join(lines))


def test_unknown_device_and_wrong_secret_cost_the_same(stack: LocalStack, store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    devices.add_device(store, SITE, "rec-2")
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*a: Any, **kw: Any) -> bytes:
        calls.append(int(kw["n"]))
        return real(*a, **kw)

    monkeypatch.setattr(devices.hashlib, "scrypt", counting)
    answers = []
    for device in ("rec-2", "no-such-device"):
        calls.clear()
        status, _, text = _post(stack, "/uploads", _upload("wrong secret", device=device), "application/json")
        answers.append((status, json.loads(text)))
        # one scrypt with the real parameters for both: an unknown device is checked against a dummy hash
        assert calls == [devices.SCRYPT_N], (device, calls)
    assert answers[0] == answers[1] == (401, {"error": "unauthorized", "reason": "unknown device or wrong secret"})


def test_a_stranger_cannot_lock_a_recorder_out(stack: LocalStack, store: Store,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrong secrets from one address lock out that address for the device, not the recorder elsewhere;
    guessing from many addresses meets the device's ceiling (UPLOAD_FAILED_ATTEMPTS_PER_DEVICE_ALL)."""
    monkeypatch.setenv("UPLOAD_FAILED_ATTEMPTS_WINDOW_S", str(10**9))  # one window for the whole test
    monkeypatch.setenv("UPLOAD_FAILED_ATTEMPTS_PER_DEVICE_ALL", "30")
    runtime.reset()  # settings are read once per container: this is a new one
    secret = devices.add_device(store, SITE, "rec-7")
    svc = runtime.presign_service()

    def ask(secret_: str, ip: str) -> tuple[int, str]:
        ans = svc.handle(json.loads(_upload(secret_, device="rec-7")), ip)
        return ans.status, str(ans.body.get("reason", ""))

    assert [ask("wrong", "203.0.113.9")[0] for _ in range(10)] == [401] * 10
    status, reason = ask(secret, "203.0.113.9")
    assert status == 429 and "device rec-7 from this address" in reason  # the stranger's address is locked
    assert ask(secret, "198.51.100.7")[0] == 200  # the recorder, from its own address, is not
    for i in range(20):  # 10 + 20 = 30 wrong secrets for rec-7, from 21 addresses
        assert ask("wrong", f"192.0.2.{i}")[0] == 401
    status, reason = ask(secret, "198.51.100.7")
    assert status == 429 and "device rec-7 from all addresses" in reason


def test_failed_attempts_are_limited_per_device_and_per_address(stack: LocalStack, store: Store,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_FAILED_ATTEMPTS_WINDOW_S", str(10**9))  # one window for the whole test
    runtime.reset()  # settings are read once per container: this is a new one
    secret = devices.add_device(store, SITE, "rec-3")
    for _ in range(10):
        status, _, _ = _post(stack, "/uploads", _upload("wrong", device="rec-3"), "application/json")
        assert status == 401
    status, headers, text = _post(stack, "/uploads", _upload(secret, device="rec-3"), "application/json")
    assert status == 429 and json.loads(text)["error"] == "rate_limited", text
    assert "too many failed attempts for device rec-3" in json.loads(text)["reason"]
    assert 0 < int(headers["Retry-After"]) <= 10**9
    # another device from the same address is not locked out by rec-3's failures
    other = devices.add_device(store, SITE, "rec-4")
    assert _post(stack, "/uploads", _upload(other, device="rec-4"), "application/json")[0] == 200
    # per address: failures for any ids, known or not, count together
    monkeypatch.setenv("UPLOAD_FAILED_ATTEMPTS_PER_IP", "15")
    runtime.reset()  # settings are read once per container: this is a new one
    for i in range(5):
        assert _post(stack, "/uploads", _upload("wrong", device=f"ghost-{i}"), "application/json")[0] == 401
    status, headers, text = _post(stack, "/uploads", _upload(other, device="rec-4"), "application/json")
    assert status == 429 and "too many failed attempts for this address" in json.loads(text)["reason"]
    assert int(headers["Retry-After"]) > 0
    counters = [i for i in store.scan_all() if i.get("type") == "auth_failures"]
    assert {i["pk"] for i in counters} >= {"AUTHFAIL#hostile/rec-3", "AUTHFAIL#ip/127.0.0.1"}
    assert all(i["expires_at"] > 0 for i in counters)  # the TTL removes them


def test_base64_bodies_are_decoded_before_the_size_check_and_the_json(stack: LocalStack) -> None:
    ok = base64.b64encode(_upload("x", device="nobody")).decode()
    out = stack._invoke_presign(_raw_event(stack, "/uploads", ok, True))
    assert out["statusCode"] == 401  # decoded, parsed, and refused for the right reason
