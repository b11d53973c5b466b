"""Everything that talks to Twilio: sending, signatures, TwiML.

The real ``twilio`` client is used everywhere; locally its HTTP client is pointed at the embedded
Twilio-compatible stub (``TWILIO_API_BASE``), so nothing in the send path is re-implemented.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from sentinela.domain.phone import mask_numbers

# Twilio codes that will fail the same way every time: do not retry, tell ops, move on.
PERMANENT_CODES = {21211, 21214, 21408, 21610, 21612, 21614}


class SmsError(Exception):
    def __init__(self, message: str, code: int | None, status: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    @property
    def permanent(self) -> bool:
        return self.code in PERMANENT_CODES


@dataclass(frozen=True)
class Sent:
    sid: str
    status: str


def _http_client(api_base: str | None, timeout: float) -> Any:
    """The real Twilio HTTP client; with ``api_base``, its API host is swapped for that base URL (the
    local stub). twilio is imported here: only the functions that text carry it in their layers."""
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


class SmsGateway:
    def __init__(self, account_sid: str, auth_token: str, from_number: str,
                 api_base: str | None = None, timeout: float = 10.0) -> None:
        from twilio.rest import Client

        self.client = Client(account_sid, auth_token, http_client=_http_client(api_base, timeout))
        self.from_number = from_number

    def send(self, to: str, body: str, status_callback: str | None = None) -> Sent:
        kw: dict[str, Any] = {"to": to, "from_": self.from_number, "body": body}
        if status_callback:
            kw["status_callback"] = status_callback
        from twilio.base.exceptions import TwilioRestException

        try:
            msg = self.client.messages.create(**kw)
        except TwilioRestException as exc:
            raise SmsError(f"Twilio {exc.status} code {exc.code}: {mask_numbers(str(exc.msg))}", exc.code,
                           exc.status) from exc
        except Exception as exc:  # connection errors, timeouts: the send may be retried
            raise SmsError(f"Twilio unreachable: {type(exc).__name__}: {mask_numbers(str(exc))}", None,
                           None) from exc
        return Sent(sid=str(msg.sid), status=str(msg.status))


# --- inbound webhooks (SMS replies, delivery status callbacks: functions/sms_reply) -----------------
def valid_signature(auth_token: str, url: str, params: dict[str, str], signature: str | None) -> bool:
    """Twilio signs every webhook with the account's auth token over the exact URL it called and the
    POSTed form fields; anything else (a forged or replayed-elsewhere request) fails here."""
    from twilio.request_validator import RequestValidator

    if not signature or not auth_token:  # an empty key signs for anyone
        return False
    return bool(RequestValidator(auth_token).validate(url, params, signature))


def sign_request(auth_token: str, url: str, params: dict[str, str]) -> str:
    """The X-Twilio-Signature Twilio would send (the local stack and tests play Twilio with it)."""
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(auth_token).compute_signature(url, params))


def twiml_message(text: str) -> str:
    """A TwiML answer that texts ``text`` back to the sender."""
    from twilio.twiml.messaging_response import MessagingResponse

    resp = MessagingResponse()
    resp.message(text)
    return str(resp)
