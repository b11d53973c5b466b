"""IncidentService on the in-memory store (sentinela_tools.devtools.memory_store): no moto, no network.

The same rules as tests/integration/test_incidents.py and test_replies.py check end to end (classify,
the stream, the Twilio stub): here the service alone, with a fake SMS sender, in milliseconds. The store
fake keeps DynamoDB's semantics (tests/unit/test_repositories_contract.py holds it to them).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sentinela.adapters.twilio_sms import PERMANENT_CODES
from sentinela.domain import clock as core_clock
from sentinela.domain.channel import ChannelError, DeliveryReport, Receipt
from sentinela.domain.clock import iso
from sentinela.domain.detect import AlertDecision
from sentinela.domain.keys import ClipRef
from sentinela.services.incidents import IncidentService, RetryLater
from sentinela.services.pipeline import alert_for
from sentinela_tools.devtools.memory_store import MemoryStore

T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)  # a Saturday, 11:00 in Santiago (UTC-3 in November)
ANA, BOB, LIA, TOM = "+56900000001", "+56900000002", "+56900000003", "+15005550004"


@dataclass
class FakeSms:
    """An SMS channel (sentinela.domain.channel.Sender) that keeps every message, with failures queued
    per number as Twilio would give them (its permanent codes are permanent)."""

    name = "sms"
    outbox: list[tuple[str, str, str | None]] = field(default_factory=list)
    failures: dict[str, list[ChannelError]] = field(default_factory=dict)

    def address(self, ranger: Mapping[str, Any]) -> str | None:
        return str(ranger["phone"]) if ranger.get("phone") else None

    def send(self, to: str, body: str, status_callback: str | None = None) -> Receipt:
        if self.failures.get(to):
            raise self.failures[to].pop(0)
        self.outbox.append((to, body, status_callback))
        return Receipt(f"SM{len(self.outbox):032d}", "queued")

    def fail(self, to: str, code: int, times: int = 1) -> None:
        self.failures.setdefault(to, []).extend(
            ChannelError(f"twilio error {code}", permanent=code in PERMANENT_CODES, code=code) for _ in range(times))

    def to(self, *numbers: str) -> list[str]:
        return [to for to, _, _ in self.outbox if not numbers or to in numbers]

    def bodies(self, number: str) -> list[str]:
        return [body for to, body, _ in self.outbox if to == number]


class Metrics:
    """Counts what the service reports (an object, not a Counter: the service tests ``metrics or ...``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.counts[name] += int(value)

    def __getitem__(self, name: str) -> int:
        return self.counts[name]


@pytest.fixture()
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture()
def sms() -> FakeSms:
    return FakeSms()


@pytest.fixture()
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture()
def service(store: MemoryStore, sms: FakeSms, metrics: Metrics) -> IncidentService:
    return IncidentService(store, sms, metrics=metrics, status_callback="https://api.example/sms/status")


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], dt.datetime]:
    """The clock the service reads where it takes no ``now`` (sentinela.domain.clock): set it, get the time
    back. Pinned for this test only (monkeypatch lets it run again)."""
    def set_to(t: dt.datetime) -> dt.datetime:
        monkeypatch.setattr(core_clock, "_pinned", t)
        return t

    set_to(T0)
    return set_to


def site(store: MemoryStore, sid: str, rangers: list[dict[str, Any]], lead: str | None = None,
         policy: dict[str, Any] | None = None) -> None:
    store.put_site({"site_id": sid, "name": f"Sitio {sid}", "lat": -37.8, "lon": -73.0, "tz": "America/Santiago"}
                   | ({"lead": lead} if lead else {}) | ({"policy": policy} if policy else {}))
    for i, r in enumerate(rangers):
        store.put_ranger(sid, {"name": r["ranger_id"].title(), "lang": "es", "order": i} | r)


def heard(store: MemoryStore, sid: str, at: dt.datetime, device: str = "rec-1", threat: str = "gunshot",
          confidence: float = 0.9) -> dict[str, Any]:
    """What classify leaves for a clip that alerted (its record and alert item); returns the alert item, as
    the stream delivers it."""
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    clip_id = f"{sid}/{device}/{stamp}@v1"
    ref = ClipRef("clips", f"clips/{sid}/{device}/{stamp}.wav", "v1", clip_id, sid, device, iso(at))
    store.mark_processed(ref, {"alerts": [threat]})
    store.put_alert(alert_for(ref, AlertDecision(threat, True, confidence, 2, 0.5, 1, 3.0, "2 windows >= 0.50"),
                              "tiny", 10.0))
    return next(a for a in store.alerts(clip_id) if a.threat == threat)


def only_incident(store: MemoryStore, sid: str) -> dict[str, Any]:
    (inc,) = [i for i in store.list_incidents() if i["site_id"] == sid]
    return inc


# --- alerts -> incidents ---------------------------------------------------------------------------
def test_an_alert_opens_an_incident_and_texts_the_on_call_primary(store: MemoryStore, sms: FakeSms,
                                                                  service: IncidentService, clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA},
                       {"ranger_id": "bob", "phone": BOB, "role": "backup"},
                       {"ranger_id": "lia", "phone": LIA, "on_call": False}])
    alert = heard(store, "s1", T0)
    res = service.on_alert(alert, now=T0)
    assert (res.outcome, res.sent, res.failed) == ("opened", ["ana"], [])
    inc = only_incident(store, "s1")
    assert res.incident_id == inc["incident_id"] and inc["state"] == "open" and inc["alerts"] == 1
    assert inc["gsi1pk"] == "ESCALATE" and inc["escalate_at"] == iso(T0 + dt.timedelta(seconds=300))
    (to, body, callback) = sms.outbox[0]
    assert to == ANA and body.startswith(f"SENTINELA {inc['ref']}: DISPARO 90% en Sitio s1")
    assert "11:00 hora local" in body and "Responda 1=voy 2=falsa alarma" in body
    assert callback and urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query) == {
        "i": [inc["incident_id"]], "s": ["open"], "r": ["ana"]}
    (send,) = store.sends(f"INC#{inc['incident_id']}")
    assert (send["status"], send["ranger_id"], send["sid"]) == ("sent", "ana", "SM" + "1".zfill(32))
    (a,) = store.alert_records(alert.clip_id)
    assert a["outcome"] == "opened" and a["incident_ref"] == inc["ref"]
    assert [s["rule"] for s in a["decision_trace"]] == ["threshold", "confirm", "incident"]


def test_a_second_clip_joins_the_incident_and_texts_nobody(store: MemoryStore, sms: FakeSms,
                                                           service: IncidentService, clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}, {"ranger_id": "tom", "phone": TOM, "lang": "en"}])
    service.on_alert(heard(store, "s1", T0), now=T0)
    later = T0 + dt.timedelta(minutes=2)
    res = service.on_alert(heard(store, "s1", later, device="rec-2", confidence=0.97), now=later)
    assert (res.outcome, res.sent) == ("joined", [])
    assert sorted(sms.to()) == [TOM, ANA]
    assert sms.bodies(TOM)[0].startswith("SENTINELA ") and "GUNSHOT" in sms.bodies(TOM)[0]
    inc = only_incident(store, "s1")
    assert inc["alerts"] == 2 and inc["last_heard"] == iso(later) and inc["max_confidence"] == 0.97
    assert len(store.incident_members(inc["incident_id"])) == 2
    # past the policy's window (1800 s for a gunshot) a new detection opens a new incident
    much_later = T0 + dt.timedelta(minutes=40)
    assert service.on_alert(heard(store, "s1", much_later), now=much_later).outcome == "opened"
    assert len(sms.to(ANA)) == 2


def test_a_redelivered_alert_texts_nobody_twice(store: MemoryStore, sms: FakeSms, service: IncidentService,
                                               clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}, {"ranger_id": "tom", "phone": TOM}])
    alert = heard(store, "s1", T0)
    first = service.on_alert(alert, now=T0)
    again = service.on_alert(alert, now=T0 + dt.timedelta(seconds=5))
    assert first.sent == ["ana", "tom"] and again.sent == [] and sorted(again.skipped) == ["ana", "tom"]
    assert again.outcome == "opened" and again.incident_id == first.incident_id
    assert sorted(sms.to()) == [TOM, ANA] and len(store.list_incidents()) == 1


def test_a_send_that_may_succeed_later_is_retried_by_the_redelivery_only(store: MemoryStore, sms: FakeSms,
                                                                         service: IncidentService,
                                                                         clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}, {"ranger_id": "tom", "phone": TOM}])
    sms.fail(ANA, 20429)  # too many requests: not permanent
    alert = heard(store, "s1", T0)
    with pytest.raises(RetryLater):
        service.on_alert(alert, now=T0)
    assert sms.to() == [TOM]
    res = service.on_alert(alert, now=T0)  # the stream delivers the record again
    assert res.sent == ["ana"] and res.skipped == ["tom"] and sorted(sms.to()) == [TOM, ANA]
    sends = {s["ranger_id"]: s for s in store.sends(f"INC#{res.incident_id}")}
    assert sends["ana"]["attempts"] == 2 and sends["ana"]["status"] == "sent"


def test_a_permanent_failure_marks_the_number_and_texts_the_next_ranger(store: MemoryStore, sms: FakeSms,
                                                                        service: IncidentService, metrics: Metrics,
                                                                        clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}, {"ranger_id": "bob", "phone": BOB, "role": "backup"}])
    sms.fail(ANA, 21610)  # unsubscribed: the same every time
    res = service.on_alert(heard(store, "s1", T0), now=T0)
    assert res.failed == ["ana"] and res.sent == ["bob"] and not res.retry and sms.to() == [BOB]
    ana = next(r for r in store.rangers("s1") if r["ranger_id"] == "ana")
    assert ana["number_invalid"] is True and ana["number_error_code"] == 21610
    assert metrics["NumbersMarkedInvalid"] == 1 and metrics["SmsFailed"] == 1


def test_two_clips_landing_at_once_open_one_incident(store: MemoryStore, sms: FakeSms, service: IncidentService,
                                                    clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first reads the empty slot, then the second runs to the end, then the first tries to open: its
    transaction fails on the slot, it looks again and joins."""
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}])
    first, second = heard(store, "s1", T0, device="rec-1"), heard(store, "s1", T0, device="rec-2")
    real_open_slot = store.open_slot
    ran: list[Any] = []

    def open_slot(site_id: str, group: str) -> dict[str, Any] | None:
        slot = real_open_slot(site_id, group)
        if not ran:
            ran.append("the second clip runs here")
            ran.append(service.on_alert(second, now=T0))
        return slot

    monkeypatch.setattr(store, "open_slot", open_slot)
    res = service.on_alert(first, now=T0)
    assert ran[1].outcome == "opened" and res.outcome == "joined" and res.sent == []
    inc = only_incident(store, "s1")
    assert inc["alerts"] == 2 and inc["opened_by"] == second.member_id and sms.to() == [ANA]


def test_an_alert_under_the_site_threshold_is_held(store: MemoryStore, sms: FakeSms, service: IncidentService,
                                                   metrics: Metrics, clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}], policy={"classes": {"gunshot": {"threshold": 0.95}}})
    alert = heard(store, "s1", T0)
    assert service.on_alert(alert, now=T0).outcome == "held"
    (a,) = store.alert_records(alert.clip_id)
    assert a["outcome"] == "held" and a["decision_reason"].startswith("confidence 0.90 < 0.95")
    assert store.list_incidents() == [] and sms.outbox == [] and metrics["AlertsHeld"] == 1


# --- escalation ------------------------------------------------------------------------------------
def test_nobody_answers_escalation_texts_the_next_ranger_then_the_lead(store: MemoryStore, sms: FakeSms,
                                                                       service: IncidentService, metrics: Metrics,
                                                                       clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA},
                       {"ranger_id": "tom", "phone": TOM, "role": "backup", "lang": "en"},
                       {"ranger_id": "lia", "phone": LIA, "role": "backup", "shifts": ["mon-sun 20:00-08:00"]}],
         lead="lia")  # lia is off shift at 11:00: texted only as the site lead, last
    service.on_alert(heard(store, "s1", T0), now=T0)
    assert sms.to() == [ANA]
    assert service.escalate_due(T0 + dt.timedelta(seconds=299)).checked == 0  # not yet
    out = service.escalate_due(T0 + dt.timedelta(seconds=301))
    assert out.escalated and service.escalate_due(T0 + dt.timedelta(seconds=301)).escalated == []  # once
    inc = only_incident(store, "s1")
    assert sms.to() == [ANA, TOM] and inc["escalation_level"] == 1
    assert sms.bodies(TOM)[0].startswith(f"SENTINELA {inc['ref']}: NO ANSWER after 5 min. GUNSHOT")
    service.escalate_due(T0 + dt.timedelta(seconds=602))
    assert sms.to() == [ANA, TOM, LIA] and "SIN RESPUESTA tras 10 min. DISPARO" in sms.bodies(LIA)[0]
    out = service.escalate_due(T0 + dt.timedelta(seconds=1000))
    assert out.exhausted == [inc["incident_id"]] and len(sms.outbox) == 3  # nobody left
    inc = only_incident(store, "s1")
    assert inc["escalation"] == "exhausted" and inc["state"] == "open" and "gsi1pk" not in inc
    assert metrics["EscalationExhausted"] == 1 and metrics["IncidentsEscalated"] == 2
    assert sorted((s["step"], s["ranger_id"]) for s in store.sends(f"INC#{inc['incident_id']}")) == [
        ("esc1", "tom"), ("esc2", "lia"), ("open", "ana")]


# --- replies ---------------------------------------------------------------------------------------
def test_replies_1_then_3_acknowledge_and_resolve(store: MemoryStore, sms: FakeSms, service: IncidentService,
                                                   clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}, {"ranger_id": "tom", "phone": TOM, "lang": "en"},
                       {"ranger_id": "bob", "phone": BOB, "role": "backup"}])
    service.on_alert(heard(store, "s1", T0), now=T0)
    inc = only_incident(store, "s1")
    assert service.reply(ANA, "¿qué?", now=T0) == f"Sentinela, incidente {inc['ref']}: responda 1=voy 2=falsa " \
                                                   "alarma 3=resuelto"
    at = clock(T0 + dt.timedelta(minutes=2))
    answer = service.reply(ANA, "Sí", now=at)
    assert answer.startswith(f"Gracias Ana. Incidente {inc['ref']} confirmado")
    inc = only_incident(store, "s1")
    assert (inc["state"], inc["acknowledged_by"], inc["acknowledged_at"]) == ("acknowledged", "ana", iso(at))
    assert "gsi1pk" not in inc  # off the escalation index
    assert sms.bodies(TOM)[-1] == f"SENTINELA {inc['ref']}: Ana is on the way."  # the others are told
    assert sms.bodies(BOB) == []  # bob was never texted about it
    assert service.reply(TOM, "1", now=at).startswith(f"Incident {inc['ref']} was already acknowledged by Ana")
    assert service.escalate_due(T0 + dt.timedelta(minutes=30)).escalated == []
    assert service.reply(ANA, "3", now=at) == f"Incidente {inc['ref']} resuelto. Gracias Ana."
    inc = only_incident(store, "s1")
    assert (inc["state"], inc["closed_by"]) == ("resolved", "ana")
    assert service.reply(ANA, "1", now=at) == "Sentinela: no hay incidentes abiertos para este numero."
    assert service.reply("+56999999999", "1", now=at) == "Sentinela: este numero no esta registrado."


def test_a_gunshot_needs_a_second_2_and_a_false_alarm_labels_the_clips(store: MemoryStore, sms: FakeSms,
                                                                        service: IncidentService, metrics: Metrics,
                                                                        clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "tom", "phone": TOM, "lang": "en"}])
    alerts = [heard(store, "s1", T0 + dt.timedelta(minutes=i)) for i in range(2)]
    for i, a in enumerate(alerts):
        service.on_alert(a, now=T0 + dt.timedelta(minutes=i))
    first = service.reply(TOM, "2", now=T0 + dt.timedelta(minutes=3))
    assert "to close it as a false alarm reply 2 again within 10 min" in first
    inc = only_incident(store, "s1")
    assert inc["state"] == "open" and inc["false_pending_phone"] == TOM
    # too late for the first one: this "2" only asks again
    assert "reply 2 again" in service.reply(TOM, "2", now=T0 + dt.timedelta(minutes=14))
    answer = service.reply(TOM, "2", now=T0 + dt.timedelta(minutes=15))
    assert answer.startswith(f"Incident {inc['ref']} closed as a false alarm")
    inc = only_incident(store, "s1")
    assert (inc["state"], inc["closed_by"], inc["closed_at"]) == ("false_alarm", "tom", "2026-11-28T14:15:00Z")
    clips = [i for i in store.scan_all() if i.get("type") == "clip"]
    assert len(clips) == 2
    assert {(c["label"], c["label_incident"]) for c in clips} == {("false_alarm", inc["incident_id"])}
    assert metrics["IncidentsFalseAlarm"] == 1


def test_a_single_2_closes_a_chainsaw(store: MemoryStore, service: IncidentService, clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}])
    service.on_alert(heard(store, "s1", T0, threat="chainsaw"), now=T0)
    inc = only_incident(store, "s1")
    assert inc["group"] == "logging"
    assert service.reply(ANA, "2", now=T0).startswith(f"Incidente {inc['ref']} cerrado como falsa alarma")
    assert only_incident(store, "s1")["state"] == "false_alarm"


def test_a_reply_names_its_incident_and_a_replayed_webhook_acts_once(store: MemoryStore, sms: FakeSms,
                                                                      service: IncidentService, metrics: Metrics,
                                                                      clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}])
    service.on_alert(heard(store, "s1", T0), now=T0)
    clock(T0 + dt.timedelta(minutes=1))  # the second incident's text is the latest one to this number
    service.on_alert(heard(store, "s1", T0 + dt.timedelta(minutes=1), threat="chainsaw"),
                     now=T0 + dt.timedelta(minutes=1))
    gun, saw = sorted(store.list_incidents(), key=lambda i: i["group"] != "gunshot")
    assert service.reply(ANA, "1", now=T0, message_id="SM1").startswith(f"Gracias Ana. Incidente {saw['ref']}")
    assert service.reply(ANA, "1", now=T0, message_id="SM1").startswith(f"Gracias Ana. Incidente {saw['ref']}")
    assert metrics["RepliesReplayed"] == 1 and metrics["IncidentsAcknowledged"] == 1
    assert service.reply(ANA, f"3 {gun['ref']}", now=T0, message_id="SM2").startswith(
        f"Incidente {gun['ref']} resuelto")
    assert service.reply(ANA, "1 ABCDEF", now=T0) == "Sentinela: no hay un incidente ABCDEF para este numero."
    states = {i["group"]: i["state"] for i in store.list_incidents()}
    assert states == {"gunshot": "resolved", "logging": "acknowledged"}
    got = store.get_reply("SM2")
    assert got is not None and got["reply_status"] == "done" and got["expires_at"] > T0.timestamp()


def test_delivery_status_is_recorded_and_undelivered_is_counted(store: MemoryStore, sms: FakeSms,
                                                                 service: IncidentService, metrics: Metrics,
                                                                 clock: Any) -> None:
    site(store, "s1", [{"ranger_id": "ana", "phone": ANA}])
    service.on_alert(heard(store, "s1", T0), now=T0)
    (_, _, callback) = sms.outbox[0]
    assert callback is not None
    params = {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query).items()}
    def report(status: str, sid: str | None = None, code: str | None = None,
               callback: Mapping[str, str] = params) -> DeliveryReport:
        return DeliveryReport("sms", sid, status, status in ("undelivered", "failed"), code, callback)

    assert service.delivery_status(report("delivered", "SMx")) is True
    inc = only_incident(store, "s1")
    (send,) = store.sends(f"INC#{inc['incident_id']}")
    assert (send["delivery_status"], send["delivery_sid"]) == ("delivered", "SMx") and metrics["SmsUndelivered"] == 0
    assert service.delivery_status(report("undelivered", code="30003")) is True
    (send,) = store.sends(f"INC#{inc['incident_id']}")
    assert send["delivery_status"] == "undelivered" and send["delivery_error_code"] == "30003"
    assert metrics["SmsUndelivered"] == 1
    assert service.delivery_status(report("delivered", callback={})) is False  # names no send
