"""sentinela.adapters.events: what each handler accepts, checked before anything acts (pure, no cloud)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sentinela.adapters import events
from sentinela.services.incidents import reply_code, reply_ref


def _v2(body: str = "", b64: bool = False) -> dict[str, Any]:
    return {"version": "2.0", "rawPath": "/sms/reply", "rawQueryString": "", "headers": {"X-Twilio-Signature": "s"},
            "requestContext": {"http": {"method": "POST", "sourceIp": "192.0.2.1"}, "domainName": "api.example"},
            "body": body, "isBase64Encoded": b64}


def test_http_v2_parts_and_lower_cased_headers() -> None:
    req = events.http_v2(_v2(base64.b64encode(b"a=1").decode(), True), 100)
    assert (req.method, req.path, req.body, req.source_ip, req.domain) == ("POST", "/sms/reply", b"a=1",
                                                                          "192.0.2.1", "api.example")
    assert req.headers == {"x-twilio-signature": "s"}


@pytest.mark.parametrize("event,status", [
    (None, 400), ([], 400), ({"version": "1.0"}, 400), (_v2() | {"requestContext": "x"}, 400),
    (_v2("!!", True), 400), (_v2("x" * 101), 413), (_v2(base64.b64encode(b"x" * 101).decode(), True), 413),
    (_v2() | {"body": 42}, 400),
])
def test_http_v2_refuses_what_is_not_one(event: Any, status: int) -> None:
    with pytest.raises(events.BadRequest) as err:
        events.http_v2(event, 100)
    assert err.value.status == status and err.value.reason


def test_json_depth_and_encoding() -> None:
    assert events.json_body(json.dumps({"a": [1, {"b": 2}]}).encode()) == {"a": [1, {"b": 2}]}
    deep: Any = 1
    for _ in range(events.MAX_JSON_DEPTH + 1):
        deep = [deep]
    for body in (b"[" * 5000, json.dumps(deep).encode(), b"\xff", b"{"):
        with pytest.raises(events.BadRequest) as err:
            events.json_body(body)
        assert err.value.status == 400


def test_s3_records_only_object_created_in_the_clips_bucket() -> None:
    def rec(name: str, bucket: str) -> dict[str, Any]:
        return {"eventSource": "aws:s3", "eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": "k"}}}

    ok, ignored = events.s3_created_records({"Records": [rec("ObjectCreated:Put", "clips"),
                                                         rec("ObjectRemoved:Delete", "clips"),
                                                         rec("ObjectCreated:Copy", "other")]}, "clips")
    assert len(ok) == 1 and len(ignored) == 2
    assert "ObjectRemoved:Delete is not ObjectCreated" in ignored[0] and "'other' is not the clips bucket" in ignored[1]
    assert events.s3_created_records({"Event": "s3:TestEvent"}, "clips")[0] == []
    assert events.s3_created_records({"Records": [rec("ObjectCreated:Put", "clips")]}, None)[0] == []


def test_scheduled_time() -> None:
    ev = {"source": "aws.events", "detail-type": "Scheduled Event", "time": "2026-11-28T14:00:00Z"}
    assert events.scheduled_time(ev).isoformat() == "2026-11-28T14:00:00+00:00"
    for bad in (ev | {"time": "9999-12-31T23:59:59-14:00"}, ev | {"time": "soon"}, ev | {"source": "aws.s3"}, None):
        with pytest.raises(ValueError):
            events.scheduled_time(bad)


@pytest.mark.parametrize("body,code,ref", [
    ("1 643830", "acknowledged", "643830"), ("Sí 6438ab", "acknowledged", "6438AB"), ("2", "false_alarm", None),
    ("FALSA alarma", "false_alarm", None), ("3 - 643830", "resolved", "643830"),
    ("voy ya 643830", "acknowledged", "643830"),
    ("1 64383", "acknowledged", None), ("2 2", "false_alarm", None),
])
def test_a_reply_names_an_incident_by_its_reference(body: str, code: str, ref: str | None) -> None:
    assert reply_code(body) == code and reply_ref(body) == ref
