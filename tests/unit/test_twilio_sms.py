"""The Twilio SMS channel (sentinela.adapters.twilio_sms) against the channel protocol: signatures computed
by twilio-python's own RequestValidator, Twilio's webhook fields parsed into channel-neutral types,
TwiML answers, and sends through the real client to the Twilio-compatible stub."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sentinela.adapters.twilio_sms import TwilioSecretError, TwilioSms, sign_request
from sentinela.domain.channel import Channel, ChannelError, ChannelUnavailable, InboundError, InboundRequest
from sentinela_tools.local.twilio_stub import TwilioStub

pytest.importorskip("twilio")

TOKEN = "12345678901234567890123456789012"
SECRET = {"account_sid": "AC" + "0" * 32, "auth_token": TOKEN}
URL = "https://abc123.execute-api.us-east-1.amazonaws.com/sms/reply"
STATUS_URL = "https://abc123.execute-api.us-east-1.amazonaws.com/sms/status?i=norte%2Fshots%2F1&s=open&r=ana"
FORM = {"MessageSid": "SM" + "a" * 32, "AccountSid": SECRET["account_sid"], "From": "+56912345678",
        "To": "+15005550006", "Body": "1 ABC123", "NumMedia": "0"}


def _channel(secret: Any = SECRET, **kw: Any) -> TwilioSms:
    return TwilioSms(lambda: secret, "+15005550006", **kw)


def _signed(url: str, form: dict[str, str], token: str = TOKEN) -> InboundRequest:
    from twilio.request_validator import RequestValidator

    return InboundRequest(url=url, headers={"x-twilio-signature": RequestValidator(token).compute_signature(url, form)},
                          form=form)


def test_it_is_a_channel() -> None:
    channel: Channel = _channel()
    assert channel.name == "sms"
    assert channel.address({"ranger_id": "ana", "phone": "+56912345678"}) == "+56912345678"
    assert channel.address({"ranger_id": "ana"}) is None


def test_a_request_twilio_signed_is_verified() -> None:
    req = _signed(URL, FORM)
    assert req.headers["x-twilio-signature"] == sign_request(TOKEN, URL, FORM)  # the stack plays Twilio with it
    assert _channel().verify(req)


@pytest.mark.parametrize("change", ["body", "url", "token", "no header", "empty header"])
def test_anything_else_is_refused(change: str) -> None:
    req = _signed(URL, FORM, token="another-token" if change == "token" else TOKEN)
    if change == "body":
        req = InboundRequest(req.url, req.headers, FORM | {"Body": "2"})
    elif change == "url":
        req = InboundRequest(URL + "?x=1", req.headers, req.form)
    elif change in ("no header", "empty header"):
        req = InboundRequest(req.url, {} if change == "no header" else {"x-twilio-signature": ""}, req.form)
    assert not _channel().verify(req)


@pytest.mark.parametrize("secret", [{"account_sid": "AC0", "auth_token": ""}, {"account_sid": "AC0"},
                                    {"account_sid": "AC0", "auth_token": "  "}, "not a dict"])
def test_a_secret_without_a_token_verifies_nothing(secret: Any) -> None:
    """Signed with the empty key, which an empty token would accept: refused, and said why."""
    with pytest.raises(ChannelUnavailable) as err:
        _channel(secret).verify(_signed(URL, FORM, token=""))
    assert isinstance(err.value, TwilioSecretError) and err.value.setting == "the Twilio secret"
    assert "auth_token" in str(err.value)


def test_an_unreadable_secret_is_said_plainly() -> None:
    def unreadable() -> Any:
        raise ValueError("not JSON")

    with pytest.raises(TwilioSecretError, match="could not be read: ValueError: not JSON"):
        TwilioSms(unreadable).verify(_signed(URL, FORM))


def test_an_inbound_message_is_parsed() -> None:
    msg = _channel().parse_message(_signed(URL, FORM))
    assert (msg.sender, msg.body, msg.message_id) == ("+56912345678", "1 ABC123", FORM["MessageSid"])
    assert _channel().parse_message(InboundRequest(URL, {}, FORM | {"Body": ""})).body == ""
    for missing in ("From", "MessageSid"):
        with pytest.raises(InboundError, match="From and MessageSid are required"):
            _channel().parse_message(InboundRequest(URL, {}, {k: v for k, v in FORM.items() if k != missing}))


@pytest.mark.parametrize(("fields", "undelivered"), [
    ({"MessageStatus": "delivered"}, False),
    ({"MessageStatus": "sent"}, False),
    ({"MessageStatus": "undelivered", "ErrorCode": "30003"}, True),
    ({"SmsStatus": "failed", "ErrorCode": "30008"}, True),  # the older field name
])
def test_a_status_callback_is_a_delivery_report(fields: dict[str, str], undelivered: bool) -> None:
    form = {"MessageSid": "SM" + "b" * 32, "AccountSid": SECRET["account_sid"], "To": "+56912345678"} | fields
    report = _channel().parse_status(_signed(STATUS_URL, form))
    assert report is not None and report.channel == "sms" and report.message_id == form["MessageSid"]
    assert report.status == (fields.get("MessageStatus") or fields["SmsStatus"])
    assert report.undelivered is undelivered and report.error_code == fields.get("ErrorCode")
    assert report.callback == {"i": "norte/shots/1", "s": "open", "r": "ana"}


def test_a_form_without_a_status_is_not_a_report() -> None:
    assert _channel().parse_status(InboundRequest(STATUS_URL, {}, FORM)) is None


def test_the_answer_is_twiml() -> None:
    ans = _channel().answer("Gracias Ana <3 & voy")
    assert ans.content_type == "text/xml"
    assert "<Response><Message>Gracias Ana &lt;3 &amp; voy</Message></Response>" in ans.body


# --- sending through the real client, to the stub ------------------------------------------------
@pytest.fixture()
def stub() -> Iterator[TwilioStub]:
    s = TwilioStub(account_sid=SECRET["account_sid"], auth_token=TOKEN).start()
    yield s
    s.stop()


def test_a_send_is_a_receipt_and_the_secret_is_read_at_the_first_one(stub: TwilioStub) -> None:
    reads: list[int] = []

    def secret() -> dict[str, str]:
        reads.append(1)
        return SECRET

    channel = TwilioSms(secret, "+15005550006", api_base=stub.url)
    assert reads == []  # built without reading anything: a function that never texts never reads it
    got = channel.send("+56912345678", "hola", "https://example.org/sms/status?i=x&s=open&r=ana")
    channel.send("+56912345678", "otra vez")
    assert got.id.startswith("SM") and got.status
    assert [(m.to, m.body, m.status_callback) for m in stub.outbox] == [
        ("+56912345678", "hola", "https://example.org/sms/status?i=x&s=open&r=ana"),
        ("+56912345678", "otra vez", None)]
    assert len(reads) == 1  # the client is kept for the process


def test_a_number_that_cannot_be_texted_is_a_permanent_error(stub: TwilioStub) -> None:
    stub.fail(400, 21211, "The 'To' number +56912345678 is not a valid phone number.")
    with pytest.raises(ChannelError) as err:
        _channel(api_base=stub.url).send("+56912345678", "hola")
    assert err.value.permanent and err.value.code == 21211
    assert "12345678" not in str(err.value)  # Twilio's text quotes the number: masked


@pytest.mark.parametrize(("status", "code"), [(503, 20503), (429, 20429), (500, 20500)])
def test_a_busy_or_failing_twilio_is_a_retryable_error(stub: TwilioStub, status: int, code: int) -> None:
    stub.fail(status, code, "try later")
    with pytest.raises(ChannelError) as err:
        _channel(api_base=stub.url).send("+56912345678", "hola")
    assert not err.value.permanent and err.value.code == code


def test_an_unreachable_twilio_is_a_retryable_error() -> None:
    with pytest.raises(ChannelError, match="Twilio unreachable") as err:
        _channel(api_base="http://127.0.0.1:9", timeout=2).send("+56912345678", "hola")
    assert not err.value.permanent and err.value.code is None


def test_no_sender_number_is_a_configuration_error(stub: TwilioStub) -> None:
    with pytest.raises(RuntimeError, match="no sender number"):
        TwilioSms(lambda: SECRET, None, api_base=stub.url).send("+56912345678", "hola")
    assert TwilioSms(lambda: SECRET | {"from_number": "+15005550006"}, None, api_base=stub.url).send(
        "+56912345678", "hola").id
