"""Exactly-once effects over at-least-once delivery, with failures injected into the real handlers on the
local stack: duplicate S3 events, an overwritten key, a stream batch retried after a partial failure, a
classify that dies half-way through writing detections, DynamoDB throttling and errors and S3 read errors
(injected in botocore's send path, so botocore's own retries run), dead letters with enough context to
replay, and `sentinela replay` (the local replayer) emptying them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import pytest
from botocore.awsrequest import AWSResponse

from sentinela import runtime
from sentinela.adapters.store import Store
from sentinela_tools.local.stack import LocalStack
from sentinela_tools.ops_cli import local_replayer, local_status, render_status
from tests.conftest import SR, encode, impulse, noise
from tests.integration.conftest import seed

pytestmark = pytest.mark.integration


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


class Fault:
    """Answer matching requests of one botocore client with an error, ``times`` times (-1: until lifted),
    before anything reaches the server; botocore's retry handler sees it as a real response."""

    def __init__(self, client: Any, operation: str, status: int, code: str, times: int = -1) -> None:
        self.client, self.operation, self.status, self.code, self.times = client, operation, status, code, times
        self.hits = 0
        self.event = f"before-send.{client.meta.service_model.service_name}.{operation}"
        client.meta.events.register(self.event, self)

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.times == 0:
            return None
        self.times -= 1
        self.hits += 1
        if self.client.meta.service_model.protocol == "json":
            body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}",
                               "message": f"injected {self.code}"}).encode()
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "injected"}
        else:
            body = f"<Error><Code>{self.code}</Code><Message>injected {self.code}</Message></Error>".encode()
            headers = {"Content-Type": "application/xml", "x-amz-request-id": "injected"}
        return AWSResponse(request.url, self.status, headers, _Body(body))

    def lift(self) -> None:
        self.client.meta.events.unregister(self.event, self)


@pytest.fixture()
def few_retries() -> Iterator[None]:
    """botocore's legacy retry mode tries S3 5 times with up to 8 s waits: keep tests fast (2 attempts)."""
    os.environ["AWS_MAX_ATTEMPTS"] = "2"
    runtime.reset()
    yield
    os.environ.pop("AWS_MAX_ATTEMPTS", None)
    runtime.reset()


def _clips(store: Store, key: str) -> list[dict[str, Any]]:
    return [i for i in store.scan_all() if i.get("type") == "clip" and i["key"] == key]


def _texts(stack: LocalStack, phone: str) -> int:
    return sum(1 for m in stack.twilio.outbox if m.to == phone)


def _dead(stack: LocalStack, queue: str, key: str) -> list[dict[str, Any]]:
    return [d for d in stack.dead_letters(queue) if any(
        unquote_plus(r["s3"]["object"]["key"]) == key for r in d.get("requestPayload", {}).get("Records", []))]


def _event_for(stack: LocalStack) -> dict[str, Any]:
    sqs = stack.client("sqs")
    msg = sqs.receive_message(QueueUrl=stack.names["ClipEvents"], VisibilityTimeout=0)["Messages"][0]
    event: dict[str, Any] = json.loads(msg["Body"])
    stack._complete_s3_event(event)
    return event


def _shots(n: int = 4) -> bytes:
    """n impulses 6 s apart: n gunshot detections in one clip."""
    x = impulse(6.0 * n, at=2.0)
    for i in range(1, n):
        x[int((2.0 + 6 * i) * SR) : int((2.0 + 6 * i) * SR) + SR // 240] = 0.9
    return encode(x)


def test_the_same_s3_event_three_times_is_one_clip_one_text(stack: LocalStack, store: Store) -> None:
    seed(store, "fx-dup", [("ana", "+56900000701", "es")])
    key, _ = stack.upload(encode(impulse()), "fx-dup", "rec-1")
    event = _event_for(stack)
    stack.run_until_idle()
    before = sorted(map(str, store.scan_all()))
    for _ in range(2):
        assert stack.invoke_classify(json.loads(json.dumps(event))) == (True, None)
    stack.run_until_idle()
    assert sorted(map(str, store.scan_all())) == before
    assert len(_clips(store, key)) == 1 and _texts(stack, "+56900000701") == 1


def test_overwritten_key_is_a_new_clip_and_the_old_one_is_not_retexted(stack: LocalStack, store: Store) -> None:
    seed(store, "fx-over", [("ana", "+56900000702", "es")])
    key, v1 = stack.upload(encode(impulse()), "fx-over", "rec-1")
    stack.run_until_idle()
    _, v2 = stack.upload(encode(noise(4.0)), "fx-over", "rec-1", key=key)
    stack.run_until_idle()
    clips = {c["version_id"]: c for c in _clips(store, key)}
    assert set(clips) == {v1, v2} and clips[v1]["alerts"] == ["gunshot"] and clips[v2]["alerts"] == []
    assert _texts(stack, "+56900000702") == 1


def test_stream_batch_retried_after_partial_failure_texts_each_ranger_once(stack: LocalStack, store: Store) -> None:
    # Three sites, three alerts in one stream batch; tom's number fails long enough (3 in-process attempts)
    # that the first record is reported failed and the batch is redelivered from there.
    phones = {"ana": "+56900000703", "tom": "+15005550703"}
    for s in ("fx-batch-1", "fx-batch-2", "fx-batch-3"):
        seed(store, s, [("ana", phones["ana"], "es"), ("tom", phones["tom"], "en")])
    stack.twilio.fail(503, 20503, "Service Unavailable", times=3, to=phones["tom"])
    notify0 = stack.invocations["notify"]
    for s in ("fx-batch-1", "fx-batch-2", "fx-batch-3"):
        stack.upload(encode(impulse()), s, "rec-1")
    stack.run_until_idle()
    assert stack.invocations["notify"] - notify0 >= 2  # the first delivery reported a failure: redelivered
    assert _texts(stack, phones["ana"]) == 3 and _texts(stack, phones["tom"]) == 3
    stack.twilio.clear()


def test_classify_dies_half_way_through_detections_then_redelivery(stack: LocalStack, store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after 2 of 4 detections were written (as a timeout would leave it): the async retry finishes
    the clip with exactly its detections, one alert, one text."""
    seed(store, "fx-crash", [("ana", "+56900000704", "es")])
    real = Store.write_detections
    calls: list[int] = []

    def crash_after_two(self: Store, clip_id: str, dets: Any, model_id: str) -> int:
        dets = list(dets)
        calls.append(len(dets))
        if len(calls) == 1:
            real(self, clip_id, dets[:2], model_id)
            raise TimeoutError("injected: died after writing 2 detections")
        return real(self, clip_id, dets, model_id)

    monkeypatch.setattr(Store, "write_detections", crash_after_two)
    key, _ = stack.upload(_shots(4), "fx-crash", "rec-1")
    stack.run_until_idle()
    (clip,) = _clips(store, key)
    assert calls == [4, 4] and clip["status"] == "processed" and clip["detections"] == 4
    dets = store.detections(clip["clip_id"])
    assert len(dets) == 4 and len({d["sk"] for d in dets}) == 4
    assert len(store.alerts(clip["clip_id"])) == 1 and _texts(stack, "+56900000704") == 1


def test_classify_dies_after_the_alert_was_written_texts_once(stack: LocalStack, store: Store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The alert's stream INSERT went out (the ranger was texted), then classify died before recording the
    clip as processed: the retry re-writes the alert conditionally (no second INSERT, no second text)."""
    seed(store, "fx-late", [("ana", "+56900000705", "es")])
    real = Store.mark_processed
    calls: list[str] = []

    def die_once(self: Store, ref: Any, summary: Any) -> None:
        calls.append(ref.clip_id)
        if len(calls) == 1:
            raise TimeoutError("injected: died before marking the clip processed")
        real(self, ref, summary)

    monkeypatch.setattr(Store, "mark_processed", die_once)
    key, _ = stack.upload(encode(impulse()), "fx-late", "rec-1")
    stack.run_until_idle()
    (clip,) = _clips(store, key)
    assert len(calls) == 2 and clip["status"] == "processed"
    assert len(store.alerts(clip["clip_id"])) == 1 and _texts(stack, "+56900000705") == 1


def test_dynamodb_throttling_is_absorbed_by_retries(stack: LocalStack, store: Store) -> None:
    seed(store, "fx-throttle", [("ana", "+56900000706", "es")])
    fault = Fault(runtime.store().table.meta.client, "PutItem", 400, "ProvisionedThroughputExceededException",
                  times=2)
    try:
        key, _ = stack.upload(encode(impulse()), "fx-throttle", "rec-1")
        stack.run_until_idle()
    finally:
        fault.lift()
    assert fault.hits == 2  # botocore retried past both throttles inside one invocation
    (clip,) = _clips(store, key)
    assert clip["status"] == "processed" and _texts(stack, "+56900000706") == 1
    assert not _dead(stack, "ClassifyDLQ", key)


def _dead_letter_then_replay(stack: LocalStack, store: Store, fault: Fault, key: str, phone: str,
                             expect_error: str) -> None:
    try:
        stack.run_until_idle()
    finally:
        fault.lift()
    attempts = 1 + stack._classify_retries()
    (dead,) = _dead(stack, "ClassifyDLQ", key)
    # Enough context to replay: the original S3 event, why it failed, how often it was tried.
    assert dead["requestContext"]["approximateInvokeCount"] == attempts
    assert expect_error in dead["responseContext"]["functionError"]
    assert dead["requestPayload"]["Records"][0]["s3"]["object"]["versionId"]
    assert _texts(stack, phone) == 0
    assert not any(c["status"] == "processed" for c in _clips(store, key))
    assert local_status(stack)["dead_letters"]["ClassifyDLQ"] >= 1

    listed = local_replayer(stack).run(("ClassifyDLQ",), dry_run=True)
    assert [r.status for r in listed if key in r.what] == ["listed"]
    assert _dead(stack, "ClassifyDLQ", key)  # a dry run changes nothing

    done = local_replayer(stack).run(("ClassifyDLQ",))
    assert [r.status for r in done if key in r.what] == ["replayed"]
    stack.run_until_idle()
    (clip,) = _clips(store, key)
    assert clip["status"] == "processed" and _texts(stack, phone) == 1
    assert not _dead(stack, "ClassifyDLQ", key)  # deleted only now, after the replay succeeded


def test_dynamodb_errors_dead_letter_then_replay(stack: LocalStack, store: Store, few_retries: None) -> None:
    seed(store, "fx-ddb", [("ana", "+56900000707", "es")])
    key, _ = stack.upload(encode(impulse()), "fx-ddb", "rec-1")
    fault = Fault(runtime.store().table.meta.client, "PutItem", 400, "ProvisionedThroughputExceededException")
    _dead_letter_then_replay(stack, store, fault, key, "+56900000707", "ProvisionedThroughputExceededException")
    # 2 botocore attempts in each of 3 invocations, and 2 more when the last one records the clip failed
    assert fault.hits == 2 * (1 + stack._classify_retries()) + 2


def test_s3_read_errors_dead_letter_then_replay(stack: LocalStack, store: Store, few_retries: None) -> None:
    seed(store, "fx-s3", [("ana", "+56900000708", "es")])
    key, _ = stack.upload(encode(impulse()), "fx-s3", "rec-1")
    fault = Fault(runtime.s3(), "GetObject", 500, "InternalError")
    _dead_letter_then_replay(stack, store, fault, key, "+56900000708", "InternalError")
    assert fault.hits >= 2 * (1 + stack._classify_retries())


def test_notify_dead_letters_are_replayed_once_twilio_is_back(stack: LocalStack, store: Store) -> None:
    seed(store, "fx-sms", [("ana", "+56900000709", "es")])
    stack.twilio.fail(500, 20500, "Internal error", times=-1, to="+56900000709")
    key, _ = stack.upload(encode(impulse()), "fx-sms", "rec-1")
    stack.run_until_idle()
    stack.twilio.clear()
    assert _texts(stack, "+56900000709") == 0
    (clip,) = _clips(store, key)
    mine = [r for r in local_replayer(stack).run(("NotifyDLQ",), dry_run=True) if clip["clip_id"] in r.what]
    assert len(mine) == 1 and mine[0].status == "listed"
    done = [r for r in local_replayer(stack).run(("NotifyDLQ",)) if clip["clip_id"] in r.what]
    assert [r.status for r in done] == ["replayed"], done
    assert _texts(stack, "+56900000709") == 1
    again = local_replayer(stack).run(("NotifyDLQ",))
    assert not [r for r in again if clip["clip_id"] in r.what]  # deleted after success
    assert "dead letters waiting" in render_status(local_status(stack))


def test_phone_numbers_never_reach_the_logs(stack: LocalStack, store: Store, caplog: pytest.LogCaptureFixture,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    seed(store, "fx-mask", [("ana", "+56900000710", "es")])
    stack.twilio.fail(400, 21211, "The 'To' number +56900000710 is not a valid phone number.", times=-1,
                      to="+56900000710")
    key, _ = stack.upload(encode(impulse()), "fx-mask", "rec-1")
    stack.run_until_idle()
    stack.twilio.clear()
    (clip,) = _clips(store, key)
    logged = caplog.text + capsys.readouterr().out
    assert clip["status"] == "processed" and "+569*****710" in logged  # the failure is logged, masked
    assert "+56900000710" not in logged and "56900000710" not in logged


def test_a_clip_killed_mid_way_shows_as_stuck_in_the_status(stack: LocalStack, store: Store) -> None:
    """The one way a clip can stay `processing`: the process died (out of memory) or DynamoDB refused even
    the terminal write. Its event is in ClassifyDLQ; `sentinela status` names the clip once classify's
    attempts are surely over, so ops know which clips to replay."""
    import datetime as dt

    from sentinela.domain.clock import iso, stamp
    from sentinela.domain.keys import ClipRef

    seed(store, "fx-stuck", [("ana", "+56900000711", "es")])
    now = dt.datetime.now(dt.UTC)
    recorded = iso(now - dt.timedelta(hours=1))
    cid = f"fx-stuck/rec-1/{recorded.replace('-', '').replace(':', '')}@v1"
    ref = ClipRef(stack.names["ClipsBucket"], f"clips/{cid.split('@')[0]}.wav", "v1", cid, "fx-stuck", "rec-1",
                  recorded)
    store.mark_processing(ref, stamp())  # what classify writes first; then the process was killed
    (site,) = [s for s in local_status(stack, now)["sites"] if s["site_id"] == "fx-stuck"]
    assert site["clips_24h"] == {"processing": 1} and site["stuck_processing"] == []  # may still be running
    later = local_status(stack, now + dt.timedelta(minutes=31))
    (site,) = [s for s in later["sites"] if s["site_id"] == "fx-stuck"]
    assert [c["clip_id"] for c in site["stuck_processing"]] == [cid] and site["stuck_processing"][0]["attempts"] == 1
    assert f"clip {cid} STUCK processing since" in render_status(later)
