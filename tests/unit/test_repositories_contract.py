"""One contract for both implementations of the repository protocols (sentinela.domain.repositories):
``Store`` on DynamoDB (moto's mock, the table made from template.yaml) and the in-memory fake of the unit
tests (sentinela_tools.devtools.memory_store). Every test here runs on both; the last ones show that the
contract can fail (a fake without the conditional semantics, or with other item shapes, does not pass).

``scan_all`` is not part of the protocols: both have it, and the checks read raw items through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sentinela.adapters.store import Store, to_ddb
from sentinela.domain.alert import Alert
from sentinela.domain.detect import AlertDecision, Detection
from sentinela.domain.keys import ClipRef
from sentinela.domain.repositories import Repositories
from sentinela.services.pipeline import alert_for
from sentinela_tools.devtools.memory_store import MemoryStore
from tests.conftest import data_table_spec, mocked_aws

T0 = "2026-11-28T14:00:00Z"


@pytest.fixture(scope="module")
def _moto() -> Iterator[Any]:
    """moto's in-process mock, once for the module (starting it is the slow part); a table per test."""
    with pytest.MonkeyPatch.context() as mp, mocked_aws(mp) as ddb:
        yield ddb


@pytest.fixture()
def dynamodb(_moto: Any, request: pytest.FixtureRequest) -> Iterator[Store]:
    """Store on a fresh moto table with the deployed table's keys and index (template.yaml)."""
    name = f"data-{abs(hash(request.node.nodeid)):x}"
    _moto.create_table(TableName=name, **data_table_spec())
    yield Store(name)
    _moto.delete_table(TableName=name)


@pytest.fixture(params=["memory", "dynamodb"])
def repo(request: pytest.FixtureRequest) -> Repositories:
    if request.param == "memory":
        return MemoryStore()
    store: Store = request.getfixturevalue("dynamodb")
    return store


# --- helpers ---------------------------------------------------------------------------------------
def ref(n: int = 1, site: str | None = "s1", device: str = "rec-1", at: str | None = None) -> ClipRef:
    at = at or f"2026-11-28T14:{n:02d}:00Z"
    key = f"clips/{site}/{device}/{at.replace('-', '').replace(':', '')}.wav" if site else f"bad/{n}.wav"
    return ClipRef("clips", key, None if n % 2 else f"v{n}", f"c{n}", site, device if site else None,
                   at if site else None)


def decision(threat: str = "gunshot", confidence: float = 0.9) -> AlertDecision:
    return AlertDecision(threat=threat, alert=True, confidence=confidence, alerting_windows=2, threshold=0.5,
                         min_windows=1, first_s=1.5, reason="2 windows >= 0.50")


def alert(clip: str, threat: str = "gunshot", confidence: float = 0.9, at: str = T0) -> Alert:
    return Alert(clip_id=clip, threat=threat, confidence=confidence, site_id="s1", recorded_at=at, device_id="rec-1")


def incident(iid: str, site: str = "s1", group: str = "gunshot", due: str = "2026-11-28T14:05:00Z",
             heard: str = T0, confidence: float = 0.9) -> dict[str, Any]:
    return {"incident_id": iid, "ref": iid.upper()[:6], "site_id": site, "group": group, "threat": group,
            "state": "open", "opened_at": heard, "first_heard": heard, "last_heard": heard, "alerts": 1,
            "max_confidence": confidence, "escalation_level": 0, "escalate_at": due, "gsi1pk": "ESCALATE",
            "gsi1sk": f"{due}#{iid}", "trace": [f"{heard} opened"]}


def raw(repo: Repositories, pk: str, sk: str) -> dict[str, Any] | None:
    return next((i for i in repo.scan_all() if i["pk"] == pk and i["sk"] == sk), None)  # type: ignore[attr-defined]


def put_raw(repo: Repositories, item: dict[str, Any]) -> None:
    """An item as an older release wrote it, straight into the table (or the fake's)."""
    if isinstance(repo, MemoryStore):
        repo.items[(item["pk"], item["sk"])] = to_ddb(item)
    else:
        repo.table.put_item(Item=to_ddb(item))  # type: ignore[attr-defined]


def send_record(phone: str, iid: str, at: str) -> dict[str, Any]:
    return {"to": phone, "body": "hi", "incident_id": iid, "ref": "ABC123", "gsi1pk": f"TO#{phone}",
            "gsi1sk": f"{at}#{iid}"}


# --- clips, detections, alerts ---------------------------------------------------------------------
def test_processing_counts_attempts_and_failed_is_conditional(repo: Repositories) -> None:
    r = ref(2)
    assert repo.mark_processing(r, T0) == 1
    assert repo.mark_processing(r, T0) == 2
    item = raw(repo, "CLIP#c2", "CLIP")
    assert item is not None and item["status"] == "processing" and item["attempts"] == 2
    assert item["gsi1pk"] == "SITE#s1" and item["gsi1sk"] == f"CLIP#{r.recorded_at}#rec-1#c2"
    assert repo.mark_failed_if_processing(r, "boom", 2) is True
    assert repo.mark_failed_if_processing(r, "again", 3) is False  # no longer processing
    item = raw(repo, "CLIP#c2", "CLIP")
    assert item is not None and item["status"] == "failed" and item["reason"] == "boom"
    assert repo.mark_processing(r, T0) == 3  # a replay: processing again, the old reason gone
    item = raw(repo, "CLIP#c2", "CLIP")
    assert item is not None and item["status"] == "processing" and "reason" not in item
    repo.mark_processed(r, {"detections": 2, "duration_s": 6.123456})
    item = raw(repo, "CLIP#c2", "CLIP")
    assert item is not None and item["status"] == "processed" and item["duration_s"] == 6.1235
    assert "attempts" not in item  # a put: the whole item is the new one
    assert repo.mark_failed_if_processing(ref(9), "nothing there", 1) is False
    assert raw(repo, "CLIP#c9", "CLIP") is None


def test_a_clip_without_a_site_is_rejected_on_its_own_index(repo: Repositories) -> None:
    r = ref(3, site=None)
    repo.mark_rejected(r, "bad key: no site", {"size": 12})
    item = raw(repo, "CLIP#c3", "CLIP")
    assert item is not None and item["status"] == "rejected" and item["size"] == 12
    assert item["gsi1pk"] == "REJECTED" and item["gsi1sk"].startswith("CLIP#") and item["gsi1sk"].endswith("#c3")
    assert "site_id" not in item and "version_id" not in item  # None is not stored
    repo.note_clip_error("c4", "timeout", 1)  # an update: it creates the record when there is none
    item = raw(repo, "CLIP#c4", "CLIP")
    assert item is not None and item["last_error"] == "timeout" and item["last_error_attempt"] == 1


def test_detections_are_overwritten_not_duplicated_and_come_in_time_order(repo: Repositories) -> None:
    dets = [Detection("gunshot", "threat", 0.87654321, 4.5, 7.5, 2, 2, True),
            Detection("Strix rufipes", "species", 0.6, 0.0, 3.0, 1),
            Detection("chainsaw", "threat", float("nan"), 12.0, 15.0, 1)]
    assert repo.write_detections("c1", dets, "m1") == 3
    assert repo.write_detections("c1", dets, "m1") == 3
    got = repo.detections("c1")
    assert [(d["label"], d["start_s"]) for d in got] == [("Strix rufipes", 0), ("gunshot", 4.5), ("chainsaw", 12)]
    assert got[1]["confidence"] == 0.8765 and got[1]["alerting"] is True and got[1]["model_id"] == "m1"
    assert "confidence" not in got[2]  # NaN is not a number DynamoDB stores
    assert got[0]["sk"] == "DET#000000000#Strix rufipes"
    assert repo.detections("c2") == []


def test_an_alert_is_put_once_and_read_by_clip_and_by_site_time(repo: Repositories) -> None:
    r1, r2, r3 = ref(1), ref(2), ref(7)
    assert repo.put_alert(alert_for(r1, decision("gunshot"), "m1", 10.0)) is True
    assert repo.put_alert(alert_for(r1, decision("gunshot", 0.99), "m1", 10.0)) is False  # a redelivered clip
    assert repo.put_alert(alert_for(r1, decision("chainsaw", 0.7), "m1", 10.0)) is True
    assert repo.put_alert(alert_for(r2, decision("gunshot"), "m1", 10.0)) is True
    assert repo.put_alert(alert_for(r3, decision("gunshot"), "m1", 10.0)) is True
    assert repo.put_alert(alert_for(ref(5, site="s2"), decision("gunshot"), "m1", 10.0)) is True
    alerts = repo.alerts("c1")
    assert [a.threat for a in alerts] == ["chainsaw", "gunshot"]
    assert (alerts[1].confidence, alerts[1].site_id, alerts[1].model_id) == (0.9, "s1", "m1")  # the first put
    shot = repo.alert_records("c1")[1]
    assert shot["alert"] is True and shot["confidence"] == 0.9 and shot["site_id"] == "s1"
    assert shot["gsi1pk"] == "SITE#s1" and shot["gsi1sk"] == "ALERT#2026-11-28T14:01:00Z"
    assert "quiet_threshold" not in shot and "version_id" not in shot
    between = repo.alerts_between("s1", "2026-11-28T14:01:00Z", "2026-11-28T14:02:00Z")  # inclusive
    assert [(a.clip_id, a.threat) for a in between] in (
        [("c1", "chainsaw"), ("c1", "gunshot"), ("c2", "gunshot")],
        [("c1", "gunshot"), ("c1", "chainsaw"), ("c2", "gunshot")])  # same index key: either order
    assert repo.alerts_between("s1", "2026-11-28T14:03:00Z", "2026-11-28T14:10:00Z")[0].clip_id == "c7"
    repo.annotate_alert("c1", "gunshot", {"outcome": "opened", "decision_trace": [{"rule": "threshold"}]})
    shot = repo.alert_records("c1")[1]
    assert shot["outcome"] == "opened" and shot["decision_trace"] == [{"rule": "threshold"}]
    assert repo.alerts("c1")[1] == alerts[1]  # what notify annotated is not part of the alert


def test_a_label_needs_the_clip(repo: Repositories) -> None:
    repo.mark_processing(ref(1), T0)
    repo.label_clip("c1", "false_alarm", "ana", T0, "i1")
    item = raw(repo, "CLIP#c1", "CLIP")
    assert item is not None
    assert (item["label"], item["label_by"], item["label_incident"]) == ("false_alarm", "ana", "i1")
    with pytest.raises(ClientError) as err:
        repo.label_clip("nope", "false_alarm", "ana", T0, "i1")
    assert err.value.response["Error"]["Code"] == "ConditionalCheckFailedException"


# --- people ----------------------------------------------------------------------------------------
def test_sites_and_their_rosters_in_order(repo: Repositories) -> None:
    repo.put_site({"site_id": "s2", "name": "Dos", "lead": "lia", "lat": -37.8})
    repo.put_site({"site_id": "s1", "name": "Uno", "tz": "America/Santiago"})
    assert [s["site_id"] for s in repo.list_sites()] == ["s1", "s2"]
    site = repo.get_site("s2")
    assert site is not None and site["lead"] == "lia" and site["lat"] == -37.8 and site["type"] == "site"
    assert repo.get_site("s3") is None
    repo.put_ranger("s1", {"ranger_id": "zoe", "phone": "+56900000001", "order": 0})
    repo.put_ranger("s1", {"ranger_id": "bob", "phone": "+56900000002"})  # no order: last
    repo.put_ranger("s1", {"ranger_id": "ana", "phone": "+56900000003", "order": 1})
    repo.put_ranger("s1", {"ranger_id": "ana", "phone": "+56900000003", "order": 1, "lang": "en"})  # replaced
    rangers = repo.rangers("s1")
    assert [r["ranger_id"] for r in rangers] == ["zoe", "ana", "bob"]
    assert rangers[1]["lang"] == "en" and rangers[1]["site_id"] == "s1" and rangers[1]["gsi1pk"] == "PHONE#+56900000003"
    assert repo.delete_ranger("s1", "bob") is True
    assert repo.delete_ranger("s1", "bob") is False
    assert [r["ranger_id"] for r in repo.rangers("s1")] == ["zoe", "ana"]
    assert repo.rangers("s2") == []


def test_a_number_is_found_on_every_site_and_flagged_on_every_site(repo: Repositories) -> None:
    for site in ("s1", "s2"):
        repo.put_ranger(site, {"ranger_id": "ana", "phone": "+56900000009"})
    repo.put_ranger("s1", {"ranger_id": "tom", "phone": "+15005550009"})
    assert sorted(r["site_id"] for r in repo.rangers_by_phone("+56900000009")) == ["s1", "s2"]
    assert repo.rangers_by_phone("+10000000000") == []
    assert repo.mark_number_invalid("+56900000009", None, "not a mobile") == 2
    flagged = [r for s in ("s1", "s2") for r in repo.rangers(s) if r.get("number_invalid")]
    assert len(flagged) == 2 and {r["number_error_code"] for r in flagged} == {0}
    assert not next(r for r in repo.rangers("s1") if r["ranger_id"] == "tom").get("number_invalid")


# --- sends and replies -----------------------------------------------------------------------------
def test_a_send_is_claimed_once(repo: Repositories) -> None:
    rec = send_record("+56900000001", "i1", T0)
    assert repo.claim_send("INC#i1", "sms", "ana", "open", rec) is True
    assert repo.claim_send("INC#i1", "sms", "ana", "open", rec) is True  # still "sending": a retry may go out
    repo.record_send("INC#i1", "sms", "ana", "open", {"status": "sent", "sid": "SM1"})
    assert repo.claim_send("INC#i1", "sms", "ana", "open", rec) is False  # sent: never twice
    (sms,) = repo.sends("INC#i1")
    assert (sms["status"], sms["attempts"], sms["sid"]) == ("sent", 2, "SM1")
    assert (sms["type"], sms["channel"]) == ("send", "sms")
    assert sms["sk"] == "SEND#sms#open#ana" and "updated_at" in sms and sms["to"] == "+56900000001"
    assert repo.claim_send("INC#i1", "sms", "bob", "open", rec) is True  # another ranger, another claim
    repo.record_send("INC#i1", "sms", "bob", "open", {"status": "failed_retry", "error_code": None})
    assert repo.claim_send("INC#i1", "sms", "bob", "open", rec) is True
    repo.record_send("INC#i1", "sms", "bob", "open", {"status": "failed_permanent", "error_code": 21211})
    assert repo.claim_send("INC#i1", "sms", "bob", "open", rec) is False
    assert repo.claim_send("INC#i1", "sms", "ana", "esc1", rec) is True  # another step, another claim
    assert repo.claim_send("INC#i1", "whatsapp", "ana", "open", rec) is True  # another channel, another claim


def test_an_sms_claimed_before_channels_is_honoured(repo: Repositories) -> None:
    """Items an incident in flight at the deploy holds: ``SMS#<step>#<ranger>``, type sms."""
    old = send_record("+56900000001", "i1", T0) | {"ranger_id": "ana", "step": "open", "type": "sms"}
    put_raw(repo, old | {"pk": "INC#i1", "sk": "SMS#open#ana", "status": "sent", "sid": "SM0"})
    put_raw(repo, old | {"pk": "INC#i1", "sk": "SMS#open#bob", "ranger_id": "bob", "status": "failed_retry"})
    assert repo.claim_send("INC#i1", "sms", "ana", "open", old) is False  # sent before the deploy: never again
    assert repo.claim_send("INC#i1", "whatsapp", "ana", "open", old) is True  # only SMS claims had the old key
    assert repo.record_delivery("INC#i1", "sms", "ana", "open", {"delivery_status": "delivered"}) is True
    assert raw(repo, "INC#i1", "SMS#open#ana")["delivery_status"] == "delivered"  # type: ignore[index]
    assert repo.claim_send("INC#i1", "sms", "bob", "open", old | {"ranger_id": "bob"}) is True  # a retry takes over
    sends = {(s["channel"], s["ranger_id"], s["sk"]) for s in repo.sends("INC#i1")}
    assert sends == {("sms", "ana", "SMS#open#ana"), ("whatsapp", "ana", "SEND#whatsapp#open#ana"),
                     ("sms", "bob", "SEND#sms#open#bob")}
    assert repo.record_delivery("INC#i1", "sms", "tom", "open", {"delivery_status": "delivered"}) is False
    assert raw(repo, "INC#i1", "SEND#sms#open#tom") is None  # a report on no send writes nothing


def test_sends_come_by_key_and_by_phone_newest_first(repo: Repositories) -> None:
    phone = "+56900000001"
    for i, (step, rid) in enumerate([("open", "bob"), ("esc1", "ana"), ("open", "ana")]):
        rec = send_record(phone if rid == "ana" else "+1", "i1", f"{T0[:-3]}0{i}Z")
        repo.claim_send("INC#i1", "sms", rid, step, rec)
    repo.claim_send("INC#i2", "sms", "ana", "open", send_record(phone, "i2", "2026-11-28T15:00:00Z"))
    assert [s["sk"] for s in repo.sends("INC#i1")] == ["SEND#sms#esc1#ana", "SEND#sms#open#ana", "SEND#sms#open#bob"]
    assert [(s["incident_id"], s["sk"]) for s in repo.sends_to(phone)] == [
        ("i2", "SEND#sms#open#ana"), ("i1", "SEND#sms#open#ana"), ("i1", "SEND#sms#esc1#ana")]
    assert [s["incident_id"] for s in repo.sends_to(phone, limit=1)] == ["i2"]
    assert repo.sends_to("+19999999999") == [] and repo.sends("INC#i3") == []
    repo.record_send("INC#i9", "sms", "ana", "open", {"delivery_status": "delivered"})  # a callback for a lost claim
    (late,) = repo.sends("INC#i9")
    assert late["delivery_status"] == "delivered"


def test_a_reply_acts_once_unless_released(repo: Repositories) -> None:
    rec = {"from_masked": "+569*****001", "body": "1", "received_at": T0}
    assert repo.claim_reply("SM1", rec, 1_800_000_000) is True
    assert repo.claim_reply("SM1", rec, 1_800_000_000) is False
    got = repo.get_reply("SM1")
    assert got is not None and got["reply_status"] == "claimed" and got["expires_at"] == 1_800_000_000
    assert got["message_sid"] == "SM1" and got["type"] == "sms_reply"
    repo.release_reply("SM1")  # acting failed: Twilio's retry may act
    assert repo.claim_reply("SM1", rec, 1_800_000_001) is True
    repo.finish_reply("SM1", {"answer": "ok", "reply_status": "done"})
    assert repo.claim_reply("SM1", rec, 1_800_000_002) is False
    got = repo.get_reply("SM1")
    assert got is not None and (got["answer"], got["reply_status"], got["expires_at"]) == ("ok", "done", 1_800_000_001)
    assert repo.get_reply("SM2") is None


# --- incidents -------------------------------------------------------------------------------------
def test_opening_takes_the_slot_and_a_second_opener_finds_it_taken(repo: Repositories) -> None:
    assert repo.create_incident(incident("i1"), alert("c1"), None) == "opened"
    slot = repo.open_slot("s1", "gunshot")
    assert slot is not None and slot["incident_id"] == "i1" and slot["type"] == "incident_slot"
    inc = repo.get_incident("i1")
    assert inc is not None and inc["state"] == "open" and inc["type"] == "incident" and inc["max_confidence"] == 0.9
    link = repo.incident_link("c1", "gunshot")
    assert link is not None and (link["incident_id"], link["role"]) == ("i1", "opened")
    assert [m["clip_id"] for m in repo.incident_members("i1")] == ["c1"]
    # another clip raced it: the slot is taken, and nothing of the loser's transaction was written
    assert repo.create_incident(incident("i2"), alert("c2"), None) == "taken"
    assert repo.get_incident("i2") is None and repo.incident_link("c2", "gunshot") is None
    assert repo.incident_members("i2") == []
    slot = repo.open_slot("s1", "gunshot")
    assert slot is not None and slot["incident_id"] == "i1"
    # the same alert again (a redelivery that lost the first answer): linked, nothing written
    assert repo.create_incident(incident("i3"), alert("c1"), None) == "linked"
    assert repo.get_incident("i3") is None
    # other sites and groups have slots of their own
    assert repo.create_incident(incident("i4", group="logging"), alert("c4", "chainsaw"), None) == "opened"
    assert repo.create_incident(incident("i5", site="s2"), alert("c5"), None) == "opened"
    assert repo.open_slot("s3", "gunshot") is None


def test_a_stale_incident_is_replaced_only_while_the_slot_still_holds_it(repo: Repositories) -> None:
    assert repo.create_incident(incident("i1"), alert("c1"), "i0") == "taken"  # there is no i0 in the slot
    assert repo.create_incident(incident("i1"), alert("c1"), None) == "opened"
    assert repo.create_incident(incident("i2"), alert("c2"), "i9") == "taken"  # the slot holds i1, not i9
    assert repo.create_incident(incident("i2"), alert("c2"), "i1") == "opened"
    slot = repo.open_slot("s1", "gunshot")
    assert slot is not None and slot["incident_id"] == "i2"
    assert repo.create_incident(incident("i3"), alert("c3"), "i1") == "taken"  # i1 was replaced already
    old = repo.get_incident("i1")
    assert old is not None and old["state"] == "open"  # replacing takes the slot, it does not touch i1


def test_joining_counts_raises_and_refuses_closed_incidents(repo: Repositories) -> None:
    repo.create_incident(incident("i1", confidence=0.8), alert("c1", confidence=0.8), None)
    assert repo.join_incident("i1", alert("c2", confidence=0.95), "2026-11-28T14:04:00Z") == "joined"
    assert repo.join_incident("i1", alert("c3", confidence=0.6), "2026-11-28T14:02:00Z") == "joined"  # late
    assert repo.join_incident("i1", alert("c2", confidence=0.95), "2026-11-28T14:04:00Z") == "linked"
    inc = repo.get_incident("i1")
    assert inc is not None and inc["alerts"] == 3
    assert inc["last_heard"] == "2026-11-28T14:04:00Z" and inc["max_confidence"] == 0.95  # raised, never lowered
    link = repo.incident_link("c3", "gunshot")
    assert link is not None and (link["incident_id"], link["role"]) == ("i1", "joined")
    assert [m["sk"] for m in repo.incident_members("i1")] == [
        "MEMBER#c1#gunshot", "MEMBER#c2#gunshot", "MEMBER#c3#gunshot"]
    assert repo.update_incident("i1", {"state": "acknowledged"}, expect={"state": "open"})
    assert repo.join_incident("i1", alert("c4"), "2026-11-28T14:05:00Z") == "joined"  # acknowledged is active
    assert repo.update_incident("i1", {"state": "resolved"})
    assert repo.join_incident("i1", alert("c5"), "2026-11-28T14:06:00Z") == "closed"
    assert repo.incident_link("c5", "gunshot") is None  # all or nothing
    assert repo.join_incident("nope", alert("c6"), T0) == "closed"
    inc = repo.get_incident("i1")
    assert inc is not None and inc["alerts"] == 4


def test_an_incident_update_is_conditional(repo: Repositories) -> None:
    assert repo.update_incident("nope", {"state": "acknowledged"}) is False
    assert raw(repo, "INC#nope", "INCIDENT") is None  # no item made up by a failed update
    repo.create_incident(incident("i1"), alert("c1"), None)
    assert repo.update_incident("i1", {"state": "acknowledged", "acknowledged_by": "ana"}, remove=("gsi1pk", "gsi1sk"),
                                expect={"state": "open"}, append_trace=["ack"]) is True
    assert repo.update_incident("i1", {"state": "acknowledged"}, expect={"state": "open"}) is False
    assert repo.update_incident("i1", {"update_by": "c2#gunshot"}, expect={"update_by": None,
                                                                          "state": ("open", "acknowledged")})
    assert repo.update_incident("i1", {"update_by": "c3#gunshot"}, expect={"update_by": None}) is False
    assert repo.update_incident("i1", {"escalation_level": 1}, expect={"escalation_level": 0})
    assert repo.update_incident("i1", {"escalation_level": 2}, expect={"escalation_level": 0}) is False
    assert repo.update_incident("i1", {"closed_by": "ana"}, expect={"state": ("resolved", "false_alarm")}) is False
    assert repo.update_incident("i1", {}, append_trace=["note 1", "note 2"])
    inc = repo.get_incident("i1")
    assert inc is not None and inc["state"] == "acknowledged" and inc["update_by"] == "c2#gunshot"
    assert "gsi1pk" not in inc and "gsi1sk" not in inc and "closed_by" not in inc and "updated_at" in inc
    assert inc["trace"] == [f"{T0} opened", "ack", "note 1", "note 2"] and inc["escalation_level"] == 1


def test_incidents_fall_due_in_order_and_leave_the_index(repo: Repositories) -> None:
    for iid, due in (("i1", "2026-11-28T14:10:00Z"), ("i2", "2026-11-28T14:05:00Z"), ("i3", "2026-11-28T15:00:00Z")):
        repo.create_incident(incident(iid, group=iid, due=due), alert(f"c{iid}"), None)
    assert [i["incident_id"] for i in repo.incidents_due("2026-11-28T14:04:59Z")] == []
    assert [i["incident_id"] for i in repo.incidents_due("2026-11-28T14:05:00Z")] == ["i2"]  # at its time
    assert [i["incident_id"] for i in repo.incidents_due("2026-11-28T14:30:00Z")] == ["i2", "i1"]
    repo.update_incident("i2", {"gsi1sk": "2026-11-28T14:20:00Z#i2"})  # escalated: due again later
    repo.update_incident("i1", {}, remove=("gsi1pk", "gsi1sk"))  # acknowledged: off the index
    assert [i["incident_id"] for i in repo.incidents_due("2026-11-28T14:30:00Z")] == ["i2"]
    assert [i["incident_id"] for i in repo.incidents_due("2026-11-28T16:00:00Z")] == ["i2", "i3"]


# --- devices ---------------------------------------------------------------------------------------
def test_a_device_id_is_registered_once_until_revoked(repo: Repositories) -> None:
    dev = {"site_id": "s1", "device_id": "rec-1", "status": "active", "cadence_s": 600, "secret_hash": "h1"}
    assert repo.put_device(dev) is True
    assert repo.put_device(dev | {"secret_hash": "h2"}) is False
    got = repo.get_device("s1", "rec-1")
    assert got is not None and got["secret_hash"] == "h1" and got["gsi1sk"] == "s1#rec-1"
    assert repo.revoke_device("s1", "rec-1", T0) is True
    assert repo.put_device(dev | {"secret_hash": "h2"}) is True  # re-issued
    got = repo.get_device("s1", "rec-1")
    assert got is not None and got["secret_hash"] == "h2" and got["status"] == "active" and "revoked_at" not in got
    assert repo.revoke_device("s1", "rec-9", T0) is False and repo.locate_device("s1", "rec-9", 1.0, 2.0) is False
    assert repo.get_device("s1", "rec-9") is None
    assert repo.locate_device("s1", "rec-1", -37.1234567, -72.7654321) is True
    got = repo.get_device("s1", "rec-1")
    assert got is not None and (got["lat"], got["lon"]) == (-37.123457, -72.765432)  # six decimals, not four


def test_devices_are_listed_apart_from_their_counters(repo: Repositories) -> None:
    for site, dev in (("s2", "rec-2"), ("s1", "rec-3"), ("s1", "rec-1")):
        repo.put_device({"site_id": site, "device_id": dev, "status": "active"})
    repo.count_upload_request("s1", "rec-1", "202611281400", 5, 1_800_000_000)
    repo.mark_device_seen("s1", "rec-1", T0, "clips/s1/rec-1/x.wav")
    assert [d["device_id"] for d in repo.list_devices("s1")] == ["rec-1", "rec-3"]
    assert [(d["site_id"], d["device_id"]) for d in repo.list_devices()] == [
        ("s1", "rec-1"), ("s1", "rec-3"), ("s2", "rec-2")]
    assert sorted(repo.device_settings("s1")) == ["rec-1", "rec-3"]


def test_upload_requests_stop_at_the_limit_per_minute(repo: Repositories) -> None:
    assert [repo.count_upload_request("s1", "rec-1", "m1", 3, 1_800_000_000) for _ in range(4)] == [
        True, True, True, False]
    assert repo.count_upload_request("s1", "rec-1", "m2", 3, 1_800_000_060) is True  # a new minute
    assert repo.count_upload_request("s1", "rec-2", "m1", 3, 1_800_000_000) is True  # another device
    counter = raw(repo, "SITE#s1", "UPLOADRATE#rec-1#m1")
    assert counter is not None and counter["n"] == 3 and counter["expires_at"] == 1_800_000_000
    assert counter["type"] == "upload_rate"
    assert repo.auth_failures("AUTHFAIL#s1/rec-1", "w1") == 0
    repo.add_auth_failure("AUTHFAIL#s1/rec-1", "w1", 1_800_000_600)
    repo.add_auth_failure("AUTHFAIL#s1/rec-1", "w1", 1_800_000_600)
    assert repo.auth_failures("AUTHFAIL#s1/rec-1", "w1") == 2
    assert repo.auth_failures("AUTHFAIL#s1/rec-1", "w2") == 0


def test_last_upload_only_moves_forward_and_a_silence_is_raised_once(repo: Repositories) -> None:
    t1, t2, t3 = "2026-11-28T14:00:00Z", "2026-11-28T13:00:00Z", "2026-11-28T15:00:00Z"
    assert repo.mark_device_seen("s1", "rec-1", t1, "k1") is True
    assert repo.mark_device_seen("s1", "rec-1", t2, "k0") is False  # an older clip delivered late
    (seen,) = repo.seen_devices("s1")
    assert (seen["last_upload_at"], seen["last_clip_key"], seen["uploads"], seen["type"]) == (
        t1, "k1", 1, "device_seen")
    assert repo.open_silence("s1", "rec-1", t2, "x") is False  # not the current last upload
    assert repo.open_silence("s1", "rec-1", t1, "2026-11-28T16:00:00Z") is True
    assert repo.open_silence("s1", "rec-1", t1, "2026-11-28T16:05:00Z") is False  # one alarm per episode
    assert repo.release_silence("s1", "rec-1", t1) is True  # the message failed: give the alarm back
    assert repo.release_silence("s1", "rec-1", t1) is False
    assert repo.open_silence("s1", "rec-1", t1, "2026-11-28T16:10:00Z") is True
    assert repo.mark_device_seen("s1", "rec-1", t3, "k3") is True
    assert repo.close_silence("s1", "rec-1", t1, t3) is True
    assert repo.close_silence("s1", "rec-1", t1, t3) is False
    (seen,) = repo.seen_devices("s1")
    assert seen["recovered_at"] == t3 and "silence_episode" not in seen and seen["uploads"] == 2
    assert repo.open_silence("s1", "rec-9", t1, t3) is False and repo.seen_devices("s2") == []


# --- both implementations hold the same items ------------------------------------------------------
VOLATILE = {"created_at", "updated_at", "number_checked_at"}


def _scenario(repo: Repositories) -> list[dict[str, Any]]:
    """A bit of everything, through the protocols; then the table's items without wall-clock times."""
    repo.put_site({"site_id": "s1", "name": "Uno", "lead": "ana", "policy": {"classes": {"gunshot": {"window_s": 60}}}})
    repo.put_ranger("s1", {"ranger_id": "ana", "phone": "+56900000001", "order": 0, "shifts": ["mon-sun 00:00-24:00"]})
    r = ref(1)
    repo.mark_processing(r, T0)
    repo.write_detections("c1", [Detection("gunshot", "threat", 0.91, 1.5, 4.5, 2, 2, True)], "m1")
    repo.put_alert(alert_for(r, decision(), "m1", 10.0))
    repo.mark_processed(r, {"detections": 1, "alerts": ["gunshot"], "max_scores": {"gunshot": 0.91}})
    repo.mark_rejected(ref(2, at="2026-11-28T14:02:00Z"), "object is 90.0 MB", {"size": 90_000_000})
    repo.mark_rejected(ref(3, site=None), "bad key: key must start with 'clips/'")
    repo.create_incident(incident("i1"), alert("c1"), None)
    repo.join_incident("i1", alert("c2", confidence=0.95), "2026-11-28T14:02:00Z")
    repo.update_incident("i1", {"state": "acknowledged", "acknowledged_by": "ana"}, remove=("gsi1pk", "gsi1sk"),
                         append_trace=["ack"])
    repo.annotate_alert("c1", "gunshot", {"outcome": "opened", "incident_id": "i1", "policy": {"window_s": 60.0}})
    repo.claim_send("INC#i1", "sms", "ana", "open",
                    send_record("+56900000001", "i1", T0) | {"lang": "es", "step": "open"})
    repo.record_send("INC#i1", "sms", "ana", "open", {"status": "sent", "sid": "SM1", "error_code": None})
    repo.claim_reply("SM9", {"body": "1"}, 1_800_000_000)
    repo.finish_reply("SM9", {"answer": "ok", "reply_status": "done"})
    repo.mark_number_invalid("+56900000001", 21211, "invalid")
    repo.label_clip("c1", "false_alarm", "ana", T0, "i1")
    repo.put_device({"site_id": "s1", "device_id": "rec-1", "status": "active", "cadence_s": 600})
    repo.locate_device("s1", "rec-1", -37.5, -73.25)
    repo.count_upload_request("s1", "rec-1", "m1", 3, 1_800_000_000)
    repo.add_auth_failure("AUTHFAIL#ip/1.2.3.4", "w1", 1_800_000_000)
    repo.mark_device_seen("s1", "rec-1", T0, "k1")
    repo.open_silence("s1", "rec-1", T0, "2026-11-28T16:00:00Z")
    items = [{k: v for k, v in i.items() if k not in VOLATILE} for i in repo.scan_all()]  # type: ignore[attr-defined]
    for i in items:
        if i.get("gsi1pk") == "REJECTED":  # rejected clips without a time are indexed by when they came
            i["gsi1sk"] = "CLIP#<now>"
    return sorted(items, key=lambda i: (i["pk"], i["sk"]))


def _same_items(dynamodb: Repositories, memory: Repositories) -> None:
    expected, got = _scenario(dynamodb), _scenario(memory)
    assert [(i["pk"], i["sk"]) for i in got] == [(i["pk"], i["sk"]) for i in expected]
    for want, have in zip(expected, got, strict=True):
        assert have == want, (want["pk"], want["sk"])


def test_both_hold_the_same_items(dynamodb: Store) -> None:
    _same_items(dynamodb, MemoryStore())


# --- the contract can fail -------------------------------------------------------------------------
class ClaimsWithoutCondition(MemoryStore):
    def claim_send(self, pk: str, channel: str, ranger_id: str, step: str, record: Mapping[str, Any]) -> bool:
        super().claim_send(pk, channel, ranger_id, step, record)
        return True


class SlotWithoutCondition(MemoryStore):
    """Opens whatever the slot holds: two clips landing at once would open two incidents."""

    def create_incident(self, incident: Mapping[str, Any], alert: Alert, replaces: str | None) -> str:
        slot = self.open_slot(incident["site_id"], incident["group"])
        return super().create_incident(incident, alert, slot["incident_id"] if slot else None)


class JoinsClosedIncidents(MemoryStore):
    def join_incident(self, incident_id: str, alert: Alert, heard_at: str) -> str:
        inc = self.get_incident(incident_id)
        if inc is not None and inc.get("state") in ("resolved", "false_alarm"):
            self.update_incident(incident_id, {"state": "open"})
        return super().join_incident(incident_id, alert, heard_at)


class DueUnordered(MemoryStore):
    def incidents_due(self, now: str) -> list[dict[str, Any]]:
        return self._query_index("ESCALATE")[::-1]


class SendsOldestFirst(MemoryStore):
    def sends_to(self, phone: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._query_index(f"TO#{phone}", limit=limit)


class RepliesWithoutCondition(MemoryStore):
    def claim_reply(self, message_sid: str, record: Mapping[str, Any], expires_at: int) -> bool:
        self.release_reply(message_sid)
        return super().claim_reply(message_sid, record, expires_at)


class CounterWithoutLimit(MemoryStore):
    def count_upload_request(self, site_id: str, device_id: str, minute: str, limit: int, expires_at: int) -> bool:
        return super().count_upload_request(site_id, device_id, minute, 10**9, expires_at)


class UpdateWithoutExpect(MemoryStore):
    def update_incident(self, incident_id: str, fields: Mapping[str, Any], **kw: Any) -> bool:
        kw.pop("expect", None)
        return super().update_incident(incident_id, fields, **kw)


class RangerWithoutPhoneIndex(MemoryStore):
    """A fake whose items differ from the table's (here: no gsi1sk on rangers) fails the comparison."""

    def put_ranger(self, site_id: str, ranger: Mapping[str, Any]) -> None:
        super().put_ranger(site_id, ranger)
        self.items[(f"SITE#{site_id}", f"RANGER#{ranger['ranger_id']}")].pop("gsi1sk")


BROKEN: list[tuple[type[MemoryStore], Callable[[Repositories], None]]] = [
    (ClaimsWithoutCondition, test_a_send_is_claimed_once),
    (SlotWithoutCondition, test_opening_takes_the_slot_and_a_second_opener_finds_it_taken),
    (SlotWithoutCondition, test_a_stale_incident_is_replaced_only_while_the_slot_still_holds_it),
    (JoinsClosedIncidents, test_joining_counts_raises_and_refuses_closed_incidents),
    (DueUnordered, test_incidents_fall_due_in_order_and_leave_the_index),
    (SendsOldestFirst, test_sends_come_by_key_and_by_phone_newest_first),
    (RepliesWithoutCondition, test_a_reply_acts_once_unless_released),
    (CounterWithoutLimit, test_upload_requests_stop_at_the_limit_per_minute),
    (UpdateWithoutExpect, test_an_incident_update_is_conditional),
]


@pytest.mark.parametrize(("fake", "check"), BROKEN, ids=lambda x: getattr(x, "__name__", "?"))
def test_the_contract_fails_a_fake_without_the_semantics(fake: type[MemoryStore],
                                                         check: Callable[[Repositories], None]) -> None:
    check(MemoryStore())  # the honest fake passes ...
    with pytest.raises(AssertionError):
        check(fake())  # ... the broken one does not


def test_the_comparison_fails_a_fake_with_other_items(dynamodb: Store) -> None:
    with pytest.raises(AssertionError):
        _same_items(dynamodb, RangerWithoutPhoneIndex())
