"""A channel: how a person is reached (SMS today) and how their answers come back.

The services text through :class:`Sender` (name, address, send) and never learn a provider's names;
the webhook handler of a channel uses the inbound half of :class:`Channel` (verify, parse, answer).
One adapter per provider implements both (``sentinela.adapters.twilio_sms``: Twilio SMS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Receipt:
    """What the channel said when it took a message: its id for the message, and its first status."""

    id: str
    status: str


class ChannelError(Exception):
    """A send the channel refused or could not make. ``permanent``: it will fail the same way every time
    (a number that cannot be texted): do not retry, tell ops, move on. Otherwise it may succeed later."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class ChannelUnavailable(RuntimeError):
    """The channel cannot check or send anything until ops fix ``setting`` (e.g. a secret): webhooks are
    refused, never accepted unchecked."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class InboundError(ValueError):
    """A signed inbound request that lacks what the channel needs (said plainly, answered with a 400)."""


@dataclass(frozen=True)
class InboundRequest:
    """An HTTP request a channel's provider made to us: the URL it called (as it was configured, with
    the query), the lower-cased headers, and the form fields it posted."""

    url: str
    headers: Mapping[str, str]
    form: Mapping[str, str]


@dataclass(frozen=True)
class InboundMessage:
    """A person's message: who wrote (their address on the channel), what, and the channel's message id
    (a retried or replayed webhook carries the same one)."""

    sender: str
    body: str
    message_id: str


@dataclass(frozen=True)
class DeliveryReport:
    """A channel's report on a message sent earlier. ``status`` is the channel's own word, stored as is;
    ``undelivered``: final, the message never reached the person. ``callback`` is the query of the
    ``status_callback`` URL the send named (whoever sent it reads back which send this is)."""

    channel: str
    message_id: str | None
    status: str
    undelivered: bool
    error_code: str | None = None
    callback: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """What to answer an inbound message with (the channel's reply format)."""

    content_type: str
    body: str


def channel_metric(channel: str, event: str) -> str:
    """A channel's figures are its own, named after it: ("sms", "Sent") -> "SmsSent" (also "Failed",
    "Undelivered"); template.yaml's alarms name them."""
    return channel.title().replace("_", "") + event


class Sender(Protocol):
    """What a service texts through."""

    @property
    def name(self) -> str:
        """The channel's name ("sms"): in send claims, metric names (:func:`channel_metric`) and log lines."""
        ...

    def address(self, person: Mapping[str, Any]) -> str | None:
        """Where ``person`` (a ranger item) is reached on this channel; None: not on it."""
        ...

    def send(self, to: str, body: str, status_callback: str | None = None) -> Receipt:
        """Send ``body`` to ``to``; :class:`ChannelError` when it cannot. The channel reports delivery to
        ``status_callback`` when it can (a channel without reports ignores it)."""
        ...


class Channel(Sender, Protocol):
    """A channel with its inbound webhook: replies from people, and delivery reports."""

    def verify(self, request: InboundRequest) -> bool:
        """True only for a request the provider signed for this URL and form;
        :class:`ChannelUnavailable` when nothing can be verified (a misconfigured secret)."""
        ...

    def parse_message(self, request: InboundRequest) -> InboundMessage:
        """A verified inbound message; :class:`InboundError` when it lacks the sender or the id."""
        ...

    def parse_status(self, request: InboundRequest) -> DeliveryReport | None:
        """A verified delivery report; None when it is not one."""
        ...

    def answer(self, text: str) -> Answer:
        """The response that sends ``text`` back to the person who wrote."""
        ...
