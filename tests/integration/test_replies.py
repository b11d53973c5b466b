"""Ranger replies on the local stack, over real HTTP: each Twilio MessageSid acts at most once, a reply
acts on the incident it names, the other rangers are told who is on the way, a gunshot needs two "2",
and a misconfigured Twilio secret refuses every webhook instead of accepting them.

Twilio is played by signing each POST with twilio-python's own RequestValidator over the URL called.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from sentinela.adapters.store import Store
from sentinela.adapters.twilio_sms import sign_request
from sentinela.domain.phone import segments
from sentinela_tools.local.stack import LocalStack
from tests.conftest import encode, impulse, tone
from tests.integration.test_incidents import incidents, site, texts

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)
GUNSHOT = encode(impulse())
CHAINSAW = encode(tone(6.0))



class Twilio:
    """Signed inbound-message webhooks sent over HTTP to the stack's API, as Twilio sends them."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.url = f"{stack.http_api.url}/sms/reply"

    def signed(self, from_: str, body: str, sid: str | None = None, token: str | None = None) -> tuple[bytes, str]:
        form = {"MessageSid": sid or "SM" + uuid.uuid4().hex, "AccountSid": self.stack.twilio.account_sid,
                "From": from_, "To": self.stack.sms_from, "Body": body, "NumMedia": "0"}
        sig = sign_request(self.stack.twilio.auth_token if token is None else token, self.url, form)
        return urllib.parse.urlencode(form).encode(), sig

    def post(self, data: bytes, signature: str) -> tuple[int, str]:
        req = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def reply(self, from_: str, body: str) -> str:
        status, text = self.post(*self.signed(from_, body))
        assert status == 200 and "<Message>" in text, (status, text)
        return text


@pytest.fixture()
def twilio(stack: LocalStack) -> Twilio:
    return Twilio(stack)


def _open(stack: LocalStack, store: Store, sid: str, data: bytes, at: dt.datetime) -> dict[str, Any]:
    before = {i["incident_id"] for i in incidents(store, sid)}
    stack.upload(data, sid, "rec-1", at)
    stack.run_until_idle()
    (new,) = [i for i in incidents(store, sid) if i["incident_id"] not in before]
    return new


def _state(store: Store, inc: dict[str, Any]) -> str:
    got = store.get_incident(inc["incident_id"])
    assert got is not None
    return str(got["state"])


def test_a_replayed_reply_changes_nothing(stack: LocalStack, store: Store, clock: Any, twilio: Twilio) -> None:
    site(store, "rep-a", [{"ranger_id": "ana", "phone": "+56900000301"}])
    first = _open(stack, store, "rep-a", GUNSHOT, T0)
    captured = twilio.signed("+56900000301", "3")  # "3 = resolved", captured on the wire
    status, answer = twilio.post(*captured)
    assert status == 200 and "resuelto" in answer and _state(store, first) == "resolved"
    clock(T0 + dt.timedelta(hours=3))
    second = _open(stack, store, "rep-a", GUNSHOT, T0 + dt.timedelta(hours=3))
    # Hours later the very same signed POST (same MessageSid, same signature) is sent again.
    status, again = twilio.post(*captured)
    assert status == 200 and again == answer  # the first answer, word for word
    assert _state(store, second) == "open" and "closed_by" not in (store.get_incident(second["incident_id"]) or {})
    claim = store.get_reply(urllib.parse.parse_qs(captured[0].decode())["MessageSid"][0])
    assert claim is not None and claim["answer"] and "+5690" not in json.dumps(claim)  # the number is masked
    # the same words in a new message (a new MessageSid) do act: it is the replay that is refused
    assert "resuelto" in twilio.reply("+56900000301", "3") and _state(store, second) == "resolved"


def test_a_reply_acts_on_the_incident_it_names(stack: LocalStack, store: Store, clock: Any, twilio: Twilio) -> None:
    site(store, "rep-b", [{"ranger_id": "ana", "phone": "+56900000302"}])
    older = _open(stack, store, "rep-b", GUNSHOT, T0)
    newer = _open(stack, store, "rep-b", CHAINSAW, T0 + dt.timedelta(minutes=1))
    assert older["group"] != newer["group"]
    answer = twilio.reply("+56900000302", f"1 {older['ref']}")
    assert f"Incidente {older['ref']} confirmado" in answer
    assert _state(store, older) == "acknowledged" and _state(store, newer) == "open"
    assert "resuelto" in twilio.reply("+56900000302", f"3 {older['ref'].lower()}")  # any case
    # naming a closed incident changes nothing and says so; the open one is untouched
    answer = twilio.reply("+56900000302", f"2 {older['ref']}")
    assert f"Incidente {older['ref']} ya esta cerrado (resuelto)" in answer
    assert _state(store, older) == "resolved" and _state(store, newer) == "open"
    # a reference this number was never texted about
    assert "no hay un incidente ABCDEF para este numero" in twilio.reply("+56900000302", "1 ABCDEF")
    assert _state(store, newer) == "open"
    # without a reference: the latest open incident, as before
    assert f"Incidente {newer['ref']} confirmado" in twilio.reply("+56900000302", "voy")


def test_the_other_rangers_are_told_who_is_on_the_way(stack: LocalStack, store: Store, clock: Any,
                                                      twilio: Twilio) -> None:
    site(store, "rep-c", [{"ranger_id": "ana", "name": "Ana Perez", "phone": "+56900000303"},
                          {"ranger_id": "tom", "name": "Tom Reed", "phone": "+15005550303", "lang": "en"},
                          {"ranger_id": "eva", "name": "Eva Soto", "phone": "+56900000313"}])
    inc = _open(stack, store, "rep-c", GUNSHOT, T0)
    opening = texts(stack, "+56900000303", "+15005550303", "+56900000313")
    assert len(opening) == 3
    clock(T0 + dt.timedelta(minutes=3))
    assert "Gracias Ana" in twilio.reply("+56900000303", "1")
    notes = texts(stack, "+56900000303", "+15005550303", "+56900000313")[3:]
    assert sorted(notes) == [("+15005550303", f"SENTINELA {inc['ref']}: Ana is on the way."),
                             ("+56900000313", f"SENTINELA {inc['ref']}: Ana va en camino.")]
    for _, body in notes:
        assert segments(body).encoding == "GSM-7" and segments(body).segments == 1
    # a second acknowledgement is told who is already going, and nobody gets a second note
    assert "already acknowledged by Ana" in twilio.reply("+15005550303", "1")
    assert len(texts(stack, "+56900000303", "+15005550303", "+56900000313")) == 5
    trace = (store.get_incident(inc["incident_id"]) or {})["trace"]
    assert any("told 2 other ranger(s) that ana is on the way" in line for line in trace)


def test_a_gunshot_needs_a_second_2_within_10_minutes(stack: LocalStack, store: Store, clock: Any,
                                                      twilio: Twilio) -> None:
    site(store, "rep-d", [{"ranger_id": "ana", "phone": "+56900000304"},
                          {"ranger_id": "tom", "phone": "+15005550304", "lang": "en"}])
    inc = _open(stack, store, "rep-d", GUNSHOT, T0)
    answer = twilio.reply("+56900000304", "2")
    assert f"Incidente {inc['ref']} es un DISPARO" in answer and "responda 2 otra vez" in answer
    assert segments(answer).encoding == "GSM-7"
    assert _state(store, inc) == "open"
    # another ranger's "2" is not the confirmation: they are asked too
    assert "reply 2 again within 10 min" in twilio.reply("+15005550304", "2")
    assert _state(store, inc) == "open"
    # past 10 minutes the first "2" has lapsed: a "2" asks again instead of closing
    clock(T0 + dt.timedelta(minutes=11))
    assert "responda 2 otra vez" in twilio.reply("+56900000304", "2")
    assert _state(store, inc) == "open"
    members = store.incident_members(inc["incident_id"])
    clips = {c["clip_id"]: c for c in store.scan_all() if c.get("type") == "clip"}
    assert all("label" not in clips[m["clip_id"]] for m in members)
    clock(T0 + dt.timedelta(minutes=15))
    assert "cerrado como falsa alarma" in twilio.reply("+56900000304", f"2 {inc['ref']}")
    assert _state(store, inc) == "false_alarm"
    clips = {c["clip_id"]: c for c in store.scan_all() if c.get("type") == "clip"}
    assert all(clips[m["clip_id"]]["label"] == "false_alarm" for m in members)
    # a chainsaw is closed by one "2"
    saw = _open(stack, store, "rep-d", CHAINSAW, T0 + dt.timedelta(minutes=20))
    assert "cerrado como falsa alarma" in twilio.reply("+56900000304", "2")
    assert _state(store, saw) == "false_alarm"


@pytest.fixture()
def secret_value(stack: LocalStack) -> Iterator[Any]:
    sm = stack.client("secretsmanager")
    arn = stack.names["TwilioSecret"]
    original = sm.get_secret_value(SecretId=arn)["SecretString"]

    def put(value: str) -> None:
        sm.put_secret_value(SecretId=arn, SecretString=value)
        parameters.clear_caches()  # Powertools caches the secret for 5 minutes, as a container would

    yield put
    put(original)


@pytest.mark.parametrize("n,value", enumerate([
    json.dumps({"account_sid": "AC0", "auth_token": ""}),
    json.dumps({"account_sid": "AC0"}),
    json.dumps({"account_sid": "AC0", "auth_token": "   "}),
    "not json",
]))
def test_a_secret_without_a_token_refuses_every_webhook(stack: LocalStack, store: Store, clock: Any,
                                                        twilio: Twilio, secret_value: Any, n: int, value: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    sid = f"rep-e{n}"
    site(store, sid, [{"ranger_id": "ana", "phone": "+56900000305"}])
    inc = _open(stack, store, sid, GUNSHOT, T0)
    secret_value(value)
    # signed with the empty key (what an empty token would have accepted), and with the real token
    for token in ("", stack.twilio.auth_token):
        status, text = twilio.post(*twilio.signed("+56900000305", "3", token=token))
        assert status == 503 and text == "service unavailable" and "Traceback" not in text
    assert _state(store, inc) == "open"
    logged = [r for r in caplog.records if "the Twilio secret is misconfigured" in r.getMessage()]
    assert len(logged) == 2 and all(r.levelname == "ERROR" for r in logged), caplog.records
    reasons = [str(getattr(r, "reason", "")) for r in logged]
    assert all("auth_token" in why or "could not be read" in why for why in reasons), reasons
