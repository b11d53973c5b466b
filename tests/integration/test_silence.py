"""Silence is an alarm: the scheduled check on the local stack's timer (an injected clock), the real handler."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from sentinela import runtime
from sentinela.adapters.store import Store
from sentinela_tools.local.stack import LocalStack
from sentinela_tools.ops_cli import local_status
from tests.conftest import encode, noise
from tests.integration.conftest import seed

pytestmark = pytest.mark.integration
LEAD = "+56900000801"


@pytest.fixture()
def ops_inbox(stack: LocalStack) -> Iterator[Any]:
    """An SQS queue subscribed to the ops topic: what an e-mail subscriber would receive."""
    sqs, sns = stack.client("sqs"), stack.client("sns")
    url = sqs.create_queue(QueueName="ops-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=stack.names["OpsTopic"], Protocol="sqs", Endpoint=arn,
                  Attributes={"RawMessageDelivery": "true"})

    def read() -> list[str]:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return [m["Body"] for m in msgs]

    yield read


def _texts(stack: LocalStack) -> list[str]:
    return [m.body for m in stack.twilio.outbox if m.to == LEAD]


def _tick(stack: LocalStack, at: dt.datetime) -> None:
    stack.clock = lambda: at
    stack.run_until_idle()


def test_silent_device_alarms_once_per_episode_and_recovers(stack: LocalStack, store: Store, ops_inbox: Any) -> None:
    seed(store, "sil-a", [("lead", LEAD, "en"), ("ana", "+56900000802", "es")])
    site = store.get_site("sil-a") or {}
    store.put_site(site | {"lead": "lead", "cadence_s": 600})  # the site expects an upload every 10 min
    # rec-2 is registered with a slower cadence of its own (2 h).
    store.table.put_item(Item={"pk": "SITE#sil-a", "sk": "DEVICE#rec-2", "type": "device", "site_id": "sil-a",
                               "device_id": "rec-2", "status": "active", "cadence_s": 7200})
    for dev in ("rec-1", "rec-2"):
        stack.upload(encode(noise(1.0)), "sil-a", dev)
    stack.run_until_idle()
    t0 = dt.datetime.now(dt.UTC)
    seen = {d["device_id"]: d for d in store.seen_devices("sil-a")}
    assert set(seen) == {"rec-1", "rec-2"} and seen["rec-1"]["uploads"] == 1

    _tick(stack, t0 + dt.timedelta(minutes=15))  # within two cadences: quiet
    assert _texts(stack) == [] and ops_inbox() == []

    _tick(stack, t0 + dt.timedelta(minutes=30))  # rec-1 missed two uploads: one SMS to the lead, one notice
    (sms,) = _texts(stack)
    assert "rec-1" in sms and "no audio since" in sms and "expected every 10 min" in sms
    (notice,) = ops_inbox()
    assert "rec-1" in notice

    _tick(stack, t0 + dt.timedelta(minutes=45))  # still silent: nothing new
    stack.invoke_silence(t0 + dt.timedelta(minutes=46))  # nor from an overlapping run
    assert len(_texts(stack)) == 1 and ops_inbox() == []
    status = local_status(stack, t0 + dt.timedelta(minutes=46))
    (site_status,) = [s for s in status["sites"] if s["site_id"] == "sil-a"]
    assert {d["device_id"]: bool(d["silent_since"]) for d in site_status["devices"]} == {"rec-1": True,
                                                                                          "rec-2": False}

    stack.upload(encode(noise(1.0)), "sil-a", "rec-1")  # it comes back
    stack.run_until_idle()
    _tick(stack, t0 + dt.timedelta(minutes=61))
    texts = _texts(stack)
    assert len(texts) == 2 and "uploading again" in texts[1]
    assert any("uploading again" in n for n in ops_inbox())

    # A new silence after the recovery is a new episode: told again, once. rec-2 (2 h cadence) goes
    # silent only after 4 h.
    _tick(stack, t0 + dt.timedelta(minutes=80))
    texts = _texts(stack)
    assert len(texts) == 3 and "rec-1" in texts[2] and "no audio since" in texts[2]
    assert not any("rec-2" in t for t in texts)
    _tick(stack, t0 + dt.timedelta(hours=4, minutes=15))
    texts = _texts(stack)
    assert len(texts) == 4 and "rec-2" in texts[3] and "expected every 120 min" in texts[3]


def test_a_failed_notice_is_retried_by_the_next_check(stack: LocalStack, store: Store,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seed(store, "sil-b", [("lead", "+56900000803", "es")])
    site = store.get_site("sil-b") or {}
    store.put_site(site | {"lead": "lead", "cadence_s": 600})
    stack.upload(encode(noise(1.0)), "sil-b", "rec-9")
    stack.run_until_idle()
    t0 = dt.datetime.now(dt.UTC)
    monkeypatch.setenv("OPS_TOPIC_ARN", "")  # no e-mail channel: the SMS is the only way to tell anyone
    runtime.reset()  # settings are read once per container: this is a new one
    stack.twilio.fail(500, 20500, "Internal error", times=-1, to="+56900000803")
    out = stack.invoke_silence(t0 + dt.timedelta(hours=1))
    assert "sil-b/rec-9" in out["failed"] and "sil-b/rec-9" not in out["alerted"]
    (seen,) = store.seen_devices("sil-b")
    assert "silence_episode" not in seen  # the claim was given back
    stack.twilio.clear()
    out = stack.invoke_silence(t0 + dt.timedelta(hours=1, minutes=15))
    assert out["alerted"] == ["sil-b/rec-9"]
    (sms,) = [m.body for m in stack.twilio.outbox if m.to == "+56900000803"]
    assert "rec-9" in sms and "no envia audio" in sms
    assert json.loads(json.dumps(out)) == out  # the handler answers plain JSON (what the schedule's logs show)
