"""The whole flow on the embedded local stack: the real handlers, moto, the real twilio client."""

from __future__ import annotations

import json

import pytest

from sentinela.adapters.store import Store
from sentinela_tools.local.stack import LocalStack
from tests.conftest import encode, impulse, noise
from tests.integration.conftest import seed

pytestmark = pytest.mark.integration


def _clip(store: Store, key: str) -> dict:
    clips = [i for i in store.scan_all() if i.get("type") == "clip" and i["key"] == key]
    assert len(clips) == 1, clips
    return clips[0]


def _sends(store: Store, clip: dict) -> list[dict]:
    """SMS items live under the incident the clip's alert opened (sentinela.services.incidents), not the clip."""
    (alert,) = store.alert_records(clip["clip_id"])
    return store.sends(f"INC#{alert['incident_id']}")


def _outbox(stack: LocalStack, *numbers: str) -> list[str]:
    return [m.to for m in stack.twilio.outbox if m.to in numbers]


def test_upload_becomes_clip_detections_alert_and_sms(stack: LocalStack, store: Store) -> None:
    seed(store, "site-a", [("ana", "+56900000101", "es"), ("tom", "+15005550101", "en")])
    key, version = stack.upload(encode(impulse()), "site-a", "rec-1")
    stack.run_until_idle()
    clip = _clip(store, key)
    assert clip["status"] == "processed" and clip["site_id"] == "site-a" and clip["device_id"] == "rec-1"
    assert clip["version_id"] == version and clip["model_id"] == "tiny-test-model"
    assert clip["duration_s"] == 10.0 and clip["sample_rate"] == 48000 and clip["alerts"] == ["gunshot"]
    assert any(d["threat"] == "gunshot" and d["alert"] for d in clip["decisions"])
    dets = store.detections(clip["clip_id"])
    assert [d["label"] for d in dets if d["kind"] == "threat"] == ["gunshot"]
    assert sorted(_outbox(stack, "+56900000101", "+15005550101")) == ["+15005550101", "+56900000101"]
    es = next(m.body for m in stack.twilio.outbox if m.to == "+56900000101")
    assert "DISPARO" in es and "Sitio site-a" in es
    sends = _sends(store, clip)
    assert {s["status"] for s in sends} == {"sent"} and all(s["sid"].startswith("SM") for s in sends)
    tags = stack.client("s3").get_object_tagging(Bucket=stack.names["ClipsBucket"], Key=key, VersionId=version)
    assert {"Key": "sentinela-status", "Value": "processed"} in tags["TagSet"]


def test_background_noise_does_not_alert(stack: LocalStack, store: Store) -> None:
    seed(store, "site-b", [("ana", "+56900000102", "es")])
    key, _ = stack.upload(encode(noise(8.0)), "site-b", "rec-1")
    stack.run_until_idle()
    assert _clip(store, key)["alerts"] == []
    assert _outbox(stack, "+56900000102") == []


def test_duplicate_s3_event_changes_nothing(stack: LocalStack, store: Store) -> None:
    seed(store, "site-c", [("ana", "+56900000103", "es")])
    sqs = stack.client("sqs")
    stack.upload(encode(impulse()), "site-c", "rec-1")
    msg = sqs.receive_message(QueueUrl=stack.names["ClipEvents"], VisibilityTimeout=0)["Messages"][0]
    event = json.loads(msg["Body"])
    stack.run_until_idle()
    before = store.scan_all()
    sent = len(stack.twilio.outbox)
    stack._complete_s3_event(event)
    assert stack.invoke_classify(event) == (True, None)  # the same event, delivered again
    stack.run_until_idle()
    assert sorted(map(str, store.scan_all())) == sorted(map(str, before))
    assert len(stack.twilio.outbox) == sent and _outbox(stack, "+56900000103") == ["+56900000103"]


def test_a_new_version_of_the_same_key_is_a_new_clip(stack: LocalStack, store: Store) -> None:
    seed(store, "site-d", [("ana", "+56900000104", "es")])
    key, v1 = stack.upload(encode(noise(4.0)), "site-d", "rec-1")
    stack.run_until_idle()
    _, v2 = stack.upload(encode(impulse()), "site-d", "rec-1", key=key)
    stack.run_until_idle()
    clips = {c["version_id"]: c for c in store.scan_all() if c.get("type") == "clip" and c["key"] == key}
    assert set(clips) == {v1, v2} and clips[v1]["alerts"] == [] and clips[v2]["alerts"] == ["gunshot"]


def test_unreadable_clip_is_rejected_tagged_and_kept(stack: LocalStack, store: Store) -> None:
    key, version = stack.upload(b"RIFF\x00\x00garbage-not-audio" * 10, "site-e", "rec-1")
    bad_key = "clips/site-e/rec-1/not-a-time.wav"
    stack.client("s3").put_object(Bucket=stack.names["ClipsBucket"], Key=bad_key, Body=encode(noise(1.0)))
    stack.run_until_idle()
    clip = _clip(store, key)
    assert clip["status"] == "rejected" and clip["reason"].startswith("unreadable audio")
    assert _clip(store, bad_key)["reason"].startswith("bad key: file name 'not-a-time' is not a UTC time")
    s3 = stack.client("s3")
    assert s3.head_object(Bucket=stack.names["ClipsBucket"], Key=key)["ContentLength"] > 0  # still there
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(
        Bucket=stack.names["ClipsBucket"], Key=key, VersionId=version)["TagSet"]}
    assert tags["sentinela-status"] == "rejected" and tags["sentinela-reason"].startswith("unreadable audio")


def test_twilio_failure_is_retried_without_texting_twice(stack: LocalStack, store: Store) -> None:
    seed(store, "site-f", [("ana", "+56900000105", "es"), ("tom", "+15005550105", "en")])
    # tom's sends fail twice with a 503, then go through; ana's go through at once
    stack.twilio.fail(503, 20503, "Service Unavailable", times=4, to="+15005550105")
    key, _ = stack.upload(encode(impulse()), "site-f", "rec-1")
    stack.run_until_idle()
    assert _outbox(stack, "+56900000105", "+15005550105") == ["+56900000105", "+15005550105"]
    clip = _clip(store, key)
    sends = {s["ranger_id"]: s for s in _sends(store, clip)}
    assert sends["ana"]["status"] == "sent" and sends["ana"]["attempts"] == 1
    assert sends["tom"]["status"] == "sent" and sends["tom"]["attempts"] == 2  # one stream redelivery


def test_twilio_outage_dead_letters_after_the_retry_limit(stack: LocalStack, store: Store) -> None:
    seed(store, "site-g", [("ana", "+56900000106", "es")])
    stack.twilio.fail(500, 20500, "Internal error", times=-1, to="+56900000106")
    key, _ = stack.upload(encode(impulse()), "site-g", "rec-1")
    stack.run_until_idle()
    assert _outbox(stack, "+56900000106") == []
    clip = _clip(store, key)
    (send,) = _sends(store, clip)
    assert send["status"] == "failed_retry" and send["error_code"] == 20500
    assert send["attempts"] == 1 + int(stack.stream["MaximumRetryAttempts"])
    dlq = [d for d in stack.dead_letters("NotifyDLQ")
           if any(r["dynamodb"]["NewImage"]["clip_id"]["S"] == clip["clip_id"] for r in d.get("records", []))]
    assert len(dlq) == 1 and dlq[0]["DDBStreamBatchInfo"]["batchSize"] == 1
    stack.twilio.clear()


def test_permanent_twilio_error_is_recorded_not_retried(stack: LocalStack, store: Store) -> None:
    seed(store, "site-h", [("ana", "+56900000107", "es")])
    stack.twilio.fail(400, 21211, "invalid number", times=-1, to="+56900000107")
    attempts0 = stack.twilio.attempts
    key, _ = stack.upload(encode(impulse()), "site-h", "rec-1")
    stack.run_until_idle()
    clip = _clip(store, key)
    (send,) = _sends(store, clip)
    assert send["status"] == "failed_permanent" and send["error_code"] == 21211
    assert stack.twilio.attempts - attempts0 == 1
    stack.twilio.clear()
