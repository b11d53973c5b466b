"""Twilio SMS, the one adapter of the channel protocol (``sentinela.domain.channel``): sending, the
X-Twilio-Signature, the inbound-message and status-callback fields, TwiML, Twilio's error codes.

The real ``twilio`` client is used everywhere; locally its HTTP client is pointed at the embedded
Twilio-compatible stub (``TWILIO_API_BASE``), so nothing in the send path is re-implemented. twilio is
imported where it is used: only the functions that text or check webhooks carry it in their layers.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from sentinela.domain.channel import (
    Answer,
    ChannelError,
    ChannelUnavailable,
    DeliveryReport,
    InboundError,
    InboundMessage,
    InboundRequest,
    Receipt,
)
from sentinela.domain.phone import mask_numbers

# Twilio codes that will fail the same way every time: do not retry, tell ops, move on.
PERMANENT_CODES = {21211, 21214, 21408, 21610, 21612, 21614}
# Twilio's final statuses for a text that never reached the phone.
UNDELIVERED = {"undelivered", "failed"}
SIGNATURE_HEADER = "x-twilio-signature"


class TwilioSecretError(ChannelUnavailable):
    """The Twilio secret is missing, unreadable or has no auth token: a deployment problem ops must fix.
    Webhooks are refused (never accepted unchecked) until it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message, setting="the Twilio secret")


def checked_secret(read: Callable[[], Any]) -> dict[str, Any]:
    """The Twilio secret ``read`` returns, refused without an auth token: with an empty token, a signature
    computed with an empty key would validate, i.e. anyone could sign."""
    try:
        secret = read()
    except TwilioSecretError:
        raise
    except Exception as exc:  # unreadable or not JSON: the same fix (put a valid secret value)
        raise TwilioSecretError(f"the Twilio secret could not be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(secret, dict) or not isinstance(secret.get("auth_token"), str) \
            or not secret["auth_token"].strip():
        raise TwilioSecretError("the Twilio secret has no auth_token (missing or empty): set it with "
                                "`aws secretsmanager put-secret-value` (README, Deploying)")
    return secret


def _http_client(api_base: str | None, timeout: float) -> Any:
    """The real Twilio HTTP client; with ``api_base``, its API host is swapped for that base URL (the
    local stub)."""
    from twilio.http.http_client import TwilioHttpClient

    if not api_base:
        return TwilioHttpClient(timeout=timeout)
    base_url = api_base.rstrip("/")

    class LocalHttpClient(TwilioHttpClient):  # type: ignore[misc]
        def request(self, method: str, url: str, *args: Any, **kw: Any) -> Any:
            parts = urllib.parse.urlsplit(url)
            target = base_url + parts.path + (f"?{parts.query}" if parts.query else "")
            return super().request(method, target, *args, **kw)

    return LocalHttpClient(timeout=timeout)


class TwilioSms:
    """The "sms" channel. ``secret`` reads the Twilio secret ({account_sid, auth_token, from_number?}):
    at the first send (the client is then kept for the process, as a Lambda container keeps it) and at
    every webhook check (the reader may cache; a rotated token is picked up when its cache expires).
    Nothing is read before it is needed."""

    name = "sms"

    def __init__(self, secret: Callable[[], Any], from_number: str | None = None, *,
                 api_base: str | None = None, timeout: float = 10.0) -> None:
        self._secret = secret
        self.from_number, self.api_base, self.timeout = from_number, api_base, timeout
        self._client: Any = None
        self._sender: str | None = None
        self._lock = threading.Lock()

    def address(self, person: Mapping[str, Any]) -> str | None:
        phone = person.get("phone")
        return str(phone) if phone else None

    def _connect(self) -> tuple[Any, str]:
        with self._lock:
            if self._client is None:
                from twilio.rest import Client

                secret = checked_secret(self._secret)
                sender = self.from_number or secret.get("from_number")
                if not sender:
                    raise RuntimeError("no sender number: set SMS_FROM_NUMBER or from_number in the Twilio secret")
                self._client = Client(secret["account_sid"], secret["auth_token"],
                                      http_client=_http_client(self.api_base, self.timeout))
                self._sender = str(sender)
            assert self._sender is not None
            return self._client, self._sender

    def send(self, to: str, body: str, status_callback: str | None = None) -> Receipt:
        client, sender = self._connect()
        kw: dict[str, Any] = {"to": to, "from_": sender, "body": body}
        if status_callback:
            kw["status_callback"] = status_callback
        from twilio.base.exceptions import TwilioRestException

        try:
            msg = client.messages.create(**kw)
        except TwilioRestException as exc:
            raise ChannelError(f"Twilio {exc.status} code {exc.code}: {mask_numbers(str(exc.msg))}",
                               permanent=exc.code in PERMANENT_CODES, code=exc.code) from exc
        except Exception as exc:  # connection errors, timeouts: the send may be retried
            raise ChannelError(f"Twilio unreachable: {type(exc).__name__}: {mask_numbers(str(exc))}",
                               permanent=False) from exc
        return Receipt(id=str(msg.sid), status=str(msg.status))

    # --- inbound webhooks (SMS replies, delivery status callbacks: functions/sms_reply) -------------
    def verify(self, request: InboundRequest) -> bool:
        """Twilio signs every webhook with the account's auth token over the exact URL it called and the
        POSTed form fields; anything else (a forged or replayed-elsewhere request) fails here."""
        token = str(checked_secret(self._secret)["auth_token"])
        return valid_signature(token, request.url, dict(request.form), request.headers.get(SIGNATURE_HEADER))

    def parse_message(self, request: InboundRequest) -> InboundMessage:
        sender, sid = request.form.get("From", ""), request.form.get("MessageSid", "")
        if not sender or not sid:
            raise InboundError("From and MessageSid are required")
        return InboundMessage(sender=sender, body=request.form.get("Body", ""), message_id=sid)

    def parse_status(self, request: InboundRequest) -> DeliveryReport | None:
        form = request.form
        status = form.get("MessageStatus") or form.get("SmsStatus")
        if not status:
            return None
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.url).query))
        return DeliveryReport(channel=self.name, message_id=form.get("MessageSid"), status=status,
                              undelivered=status in UNDELIVERED, error_code=form.get("ErrorCode") or None,
                              callback=query)

    def answer(self, text: str) -> Answer:
        return Answer("text/xml", twiml_message(text))


def valid_signature(auth_token: str, url: str, params: dict[str, str], signature: str | None) -> bool:
    from twilio.request_validator import RequestValidator

    if not signature or not auth_token:  # an empty key signs for anyone
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def sign_request(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The X-Twilio-Signature Twilio would send (the local stack and tests play Twilio with it)."""
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


def twiml_message(text: str) -> str:
    """A TwiML answer that texts ``text`` back to the sender."""
    from twilio.twiml.messaging_response import MessagingResponse

    resp = MessagingResponse()
    resp.message(text)
    return str(resp)
