"""Any channel will do: IncidentService and SilenceService text through the channel protocol
(sentinela.domain.channel), here a fake one, on a moto table made from template.yaml. Each channel keeps
its own send claims; SMS claims written before sends were keyed by channel are still honoured."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from sentinela.domain import clock
from sentinela.domain.alert import Alert
from sentinela.domain.channel import ChannelError, DeliveryReport, Receipt, Sender, channel_metric
from sentinela.services.channels import Retrying
from sentinela.services.incidents import IncidentService, RetryLater
from sentinela.services.silence import SilenceService
from tests.conftest import data_table_spec, mocked_aws

T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)


class FakeChannel:
    """A channel that reaches a person at ``person[field]`` and keeps what it sent."""

    def __init__(self, name: str, field: str = "phone", fail: ChannelError | None = None) -> None:
        self.name, self.field, self.fail = name, field, fail
        self.outbox: list[tuple[str, str, str | None]] = []

    def address(self, person: Mapping[str, Any]) -> str | None:
        value = person.get(self.field)
        return str(value) if value else None

    def send(self, to: str, body: str, status_callback: str | None = None) -> Receipt:
        if self.fail is not None:
            raise self.fail
        self.outbox.append((to, body, status_callback))
        return Receipt(id=f"{self.name}-{len(self.outbox)}", status="queued")


class Metrics:
    def __init__(self) -> None:
        self.names: list[str] = []

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.names.append(name)


def test_a_channels_figures_are_named_after_it() -> None:
    """The names template.yaml's alarms and the dashboard know (SmsUndelivered) stay what they were."""
    assert [channel_metric("sms", e) for e in ("Sent", "Failed", "Undelivered")] == [
        "SmsSent", "SmsFailed", "SmsUndelivered"]
    assert channel_metric("whatsapp", "Sent") == "WhatsappSent"


# --- bounded retries around any channel -------------------------------------------------------------
def test_retrying_is_a_sender_that_retries_what_may_succeed_later() -> None:
    class Flaky(FakeChannel):
        calls = 0

        def send(self, to: str, body: str, status_callback: str | None = None) -> Receipt:
            self.calls += 1
            if self.calls < 3:
                raise ChannelError("busy", permanent=False, code=20429)
            return super().send(to, body, status_callback)

    naps: list[float] = []
    flaky = Flaky("sms")
    sender: Sender = Retrying(flaky, attempts=3, backoff_s=0.5, sleep=naps.append)
    assert sender.name == "sms" and sender.address({"phone": "+569"}) == "+569"
    assert sender.send("+569", "hola", "cb").id == "sms-1"
    assert flaky.calls == 3 and flaky.outbox == [("+569", "hola", "cb")]
    assert len(naps) == 2 and 0 <= naps[0] <= 0.5 and 0 <= naps[1] <= 1.0  # full jitter, doubling


def test_retrying_gives_up_after_its_attempts_and_at_once_on_a_permanent_error() -> None:
    naps: list[float] = []
    busy = FakeChannel("sms", fail=ChannelError("busy", permanent=False))
    with pytest.raises(ChannelError):
        Retrying(busy, attempts=3, sleep=naps.append).send("+569", "hola")
    assert len(naps) == 2
    naps.clear()
    with pytest.raises(ChannelError):
        Retrying(FakeChannel("sms", fail=ChannelError("bad number", permanent=True, code=21211)),
                 attempts=3, sleep=naps.append).send("+569", "hola")
    assert naps == []


# --- incidents through any channel ------------------------------------------------------------------
@pytest.fixture()
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from sentinela.adapters.store import Store

    monkeypatch.setattr(clock, "_pinned", dt.datetime(2026, 11, 28, 14, 0, 30, tzinfo=dt.UTC))
    with mocked_aws(monkeypatch) as ddb:
        ddb.create_table(TableName="data", **data_table_spec())
        s = Store("data")
        s.put_site({"site_id": "norte", "name": "Norte", "lat": -37.8, "lon": -73.0, "tz": "America/Santiago",
                    "lead": "lia"})
        s.put_ranger("norte", {"ranger_id": "ana", "name": "Ana", "phone": "+56900000001", "lang": "es",
                               "order": 0, "pager": "PG-7"})
        s.put_ranger("norte", {"ranger_id": "bob", "name": "Bob", "phone": "+56900000002", "lang": "en",
                               "order": 1})
        yield s


def _alert(store: Any, n: int = 0) -> Alert:
    from sentinela.adapters.store import to_ddb

    clip_id = f"norte/rec-1/20261128T140000Z@v{n}"
    alert = {"pk": f"CLIP#{clip_id}", "sk": "ALERT#gunshot", "type": "alert", "alert": True, "clip_id": clip_id,
             "threat": "gunshot", "confidence": 0.9, "alerting_windows": 2, "threshold": 0.5, "first_s": 3.0,
             "site_id": "norte", "device_id": "rec-1", "recorded_at": "2026-11-28T14:00:00Z",
             "gsi1pk": "SITE#norte", "gsi1sk": "ALERT#2026-11-28T14:00:00Z"}
    store.table.put_item(Item=to_ddb(alert))
    return Alert.from_item(alert)


def _service(store: Any, *channels: Sender, metrics: Metrics | None = None) -> IncidentService:
    return IncidentService(store, channels, metrics=metrics, status_callback="https://api.example/sms/status")


def test_an_opening_goes_out_through_any_channel_once(store: Any) -> None:
    chan, metrics = FakeChannel("sms"), Metrics()
    alert = _alert(store)
    res = _service(store, chan, metrics=metrics).on_alert(alert)
    assert res.outcome == "opened" and sorted(res.sent) == ["ana", "bob"]
    assert sorted(to for to, _, _ in chan.outbox) == ["+56900000001", "+56900000002"]
    assert all("DISPARO" in body or "GUNSHOT" in body for _, body, _ in chan.outbox)
    assert all(cb and cb.startswith("https://api.example/sms/status?i=") for _, _, cb in chan.outbox)
    assert metrics.names.count("SmsSent") == 2
    sends = store.sends(f"INC#{res.incident_id}")
    assert {(s["sk"], s["channel"], s["type"], s["status"], s["sid"]) for s in sends} == {
        ("SEND#sms#open#ana", "sms", "send", "sent", "sms-1"), ("SEND#sms#open#bob", "sms", "send", "sent", "sms-2")}
    again = _service(store, chan).on_alert(alert)  # a redelivered stream record
    assert again.sent == [] and sorted(again.skipped) == ["ana", "bob"] and len(chan.outbox) == 2


def test_a_second_channel_keeps_its_own_claims(store: Any) -> None:
    sms, pager, metrics = FakeChannel("sms"), FakeChannel("pager", field="pager"), Metrics()
    alert = _alert(store)
    first = _service(store, sms).on_alert(alert)
    # The same incident, ranger and step on another channel is another claim: it goes out there too, once.
    res = _service(store, pager, metrics=metrics).on_alert(alert)
    assert res.sent == ["ana"] and pager.outbox[0][0] == "PG-7" and metrics.names == ["PagerSent"]
    assert _service(store, pager).on_alert(alert).skipped == ["ana"] and len(pager.outbox) == 1
    sends = store.sends(f"INC#{first.incident_id}")
    assert sorted((s["channel"], s["ranger_id"], s["to"]) for s in sends) == [
        ("pager", "ana", "PG-7"), ("sms", "ana", "+56900000001"), ("sms", "bob", "+56900000002")]
    assert len(sms.outbox) == 2


def test_channels_in_order_of_preference(store: Any) -> None:
    sms, pager = FakeChannel("sms"), FakeChannel("pager", field="pager")
    res = _service(store, pager, sms).on_alert(_alert(store))
    assert [to for to, _, _ in pager.outbox] == ["PG-7"] and [to for to, _, _ in sms.outbox] == ["+56900000002"]
    assert sorted(res.sent) == ["ana", "bob"]


def test_channel_errors_keep_their_meaning(store: Any) -> None:
    metrics = Metrics()
    alert = _alert(store)
    busy = FakeChannel("sms", fail=ChannelError("busy", permanent=False, code=20503))
    with pytest.raises(RetryLater):  # the stream record is retried
        _service(store, busy, metrics=metrics).on_alert(alert)
    assert metrics.names.count("SmsFailed") == 2
    bad = FakeChannel("sms", fail=ChannelError("not a number", permanent=True, code=21211))
    res = _service(store, bad, metrics=metrics).on_alert(alert)  # the retry: now the numbers are bad
    assert sorted(res.failed) == ["ana", "bob"] and not res.retry
    assert metrics.names.count("NumbersMarkedInvalid") == 2
    assert all(r["number_invalid"] and r["number_error_code"] == 21211 for r in store.rangers("norte"))
    assert {s["status"] for s in store.sends(f"INC#{res.incident_id}")} == {"failed_permanent"}


def test_a_delivery_report_lands_on_its_channels_send(store: Any) -> None:
    sms, pager, metrics = FakeChannel("sms"), FakeChannel("pager", field="pager"), Metrics()
    alert = _alert(store)
    iid = _service(store, sms).on_alert(alert).incident_id
    _service(store, pager).on_alert(alert)
    q = {"i": str(iid), "s": "open", "r": "ana"}
    svc = _service(store, sms, metrics=metrics)
    assert svc.delivery_status(DeliveryReport("pager", "pager-1", "expired", True, "E42", q))
    assert svc.delivery_status(DeliveryReport("sms", "sms-1", "delivered", False, None, q))
    assert metrics.names == ["PagerUndelivered"]
    by = {s["channel"]: s for s in store.sends(f"INC#{iid}") if s["ranger_id"] == "ana"}
    assert (by["pager"]["delivery_status"], by["pager"]["delivery_error_code"]) == ("expired", "E42")
    assert (by["sms"]["delivery_status"], by["sms"]["delivery_sid"]) == ("delivered", "sms-1")
    # A report naming no send writes nothing (no stray item), and says so.
    assert not svc.delivery_status(DeliveryReport("sms", "x", "delivered", False, None, q | {"r": "zoe"}))
    assert not svc.delivery_status(DeliveryReport("sms", "x", "delivered", False, None, {}))
    assert len(store.sends(f"INC#{iid}")) == 3


# --- sends claimed before channels: SMS#<step>#<ranger> items in a deployed table --------------------
def _legacy(store: Any, iid: str, rid: str, phone: str, status: str) -> None:
    from sentinela.adapters.store import to_ddb

    store.table.put_item(Item=to_ddb({
        "pk": f"INC#{iid}", "sk": f"SMS#open#{rid}", "type": "sms", "status": status, "attempts": 1,
        "to": phone, "body": "SENTINELA ...", "ranger_id": rid, "step": "open", "incident_id": iid,
        "ref": "ABCDEF", "site_id": "norte", "threat": "gunshot", "gsi1pk": f"TO#{phone}",
        "gsi1sk": f"2026-11-28T14:00:00Z#{iid}"} | ({"sid": "SMold"} if status == "sent" else {})))


def test_an_sms_sent_under_the_old_key_is_not_sent_again(store: Any) -> None:
    """An incident in flight at the deploy: old code texted ana (done) and failed on bob (retryable).
    The redelivery texts bob only; the two legacy items read as "sms" sends, bob's replaced by the new one."""
    alert = _alert(store)
    quiet = FakeChannel("sms", fail=ChannelError("down", permanent=False))
    with pytest.raises(RetryLater):  # opens the incident; nobody reached
        _service(store, Retrying(quiet, attempts=1)).on_alert(alert)
    (inc,) = store.list_incidents()
    iid = str(inc["incident_id"])
    pk = f"INC#{iid}"
    for s in store.sends(pk):  # make it what the code before channels had written
        store.table.delete_item(Key={"pk": pk, "sk": s["sk"]})
    _legacy(store, iid, "ana", "+56900000001", "sent")
    _legacy(store, iid, "bob", "+56900000002", "failed_retry")
    sms = FakeChannel("sms")
    res = _service(store, sms).on_alert(alert)
    assert res.skipped == ["ana"] and res.sent == ["bob"] and [to for to, _, _ in sms.outbox] == ["+56900000002"]
    sends = {s["ranger_id"]: s for s in store.sends(pk)}
    assert len(store.sends(pk)) == 2
    assert (sends["ana"]["sk"], sends["ana"]["channel"], sends["ana"]["status"]) == ("SMS#open#ana", "sms", "sent")
    assert (sends["bob"]["sk"], sends["bob"]["status"]) == ("SEND#sms#open#bob", "sent")
    # Twilio's callback for ana's old text still finds its item.
    q = {"i": iid, "s": "open", "r": "ana"}
    assert _service(store, sms).delivery_status(DeliveryReport("sms", "SMold", "delivered", False, None, q))
    assert store.table.get_item(Key={"pk": pk, "sk": "SMS#open#ana"})["Item"]["delivery_status"] == "delivered"
    # A legacy claim is an SMS claim only: another channel is not held back by it.
    pager = FakeChannel("pager", field="pager")
    assert _service(store, pager).on_alert(alert).sent == ["ana"]


# --- silence through any channel --------------------------------------------------------------------
def test_the_silence_alarm_texts_the_lead_through_any_channel(store: Any) -> None:
    store.put_ranger("norte", {"ranger_id": "lia", "name": "Lia", "phone": "+56900000003", "lang": "en",
                               "order": 2, "on_call": False})
    store.mark_device_seen("norte", "rec-1", "2026-11-28T10:00:00.000000Z", "clips/norte/rec-1/x.wav")
    pager = FakeChannel("pager", field="pager")  # lia has no pager: SMS it is
    sms = FakeChannel("sms")
    rep = SilenceService(store, [pager, sms], None).check(T0)
    assert rep.alerted == ["norte/rec-1"] and pager.outbox == []
    ((to, body, cb),) = sms.outbox
    assert to == "+56900000003" and "rec-1" in body and "no audio since" in body and cb is None
