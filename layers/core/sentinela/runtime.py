"""Builds the services a handler needs from the environment, once per process (Lambda container).

Handlers call these; so does the local stack, through the very same handlers.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import boto3

from sentinela.adapters.metrics import MetricSink
from sentinela.adapters.store import Store
from sentinela.config import Settings, default_card_path
from sentinela.domain.alert import Alert

# Each function's layers carry only what it uses (classify: numpy/onnxruntime; notify: twilio), so
# the heavy modules are imported where they are needed, not here.
if TYPE_CHECKING:
    from sentinela.adapters.model import Model
    from sentinela.domain.channel import Channel, Sender
    from sentinela.services.incidents import IncidentService
    from sentinela.services.notify import NotifyService
    from sentinela.services.pipeline import ClassifyService
    from sentinela.services.presign import PresignService


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def model() -> Model:
    """Loaded once per container: session creation is the bulk of a cold start."""
    from sentinela.adapters.model import Model
    from sentinela.domain.card import load_card, with_alert_override

    card = with_alert_override(load_card(default_card_path()), settings().alert_threshold_override)
    return Model(card)


@functools.cache
def store() -> Store:
    return Store(settings().table_name)


@functools.cache
def s3() -> Any:
    return boto3.client("s3")


def classify_service(metrics: MetricSink | None = None) -> ClassifyService:
    from sentinela.services.pipeline import ClassifyService

    s = settings()
    import os

    # 1 + EventInvokeConfig.MaximumRetryAttempts in template.yaml: the last attempt records a terminal status.
    return ClassifyService(store(), s3(), model(), max_bytes=s.max_clip_bytes, max_seconds=s.max_clip_seconds,
                           batch_size=s.batch_size, metrics=metrics,
                           max_attempts=int(os.environ.get("CLASSIFY_MAX_ATTEMPTS", "3")))


# --- channels (sentinela.domain.channel): how rangers are texted and answer -------------------------
@functools.cache
def channels() -> dict[str, Channel]:
    """Every channel, by name, in order of preference (a ranger is texted on the first that reaches them).
    Nothing is read (no secret, no client) until a channel sends or checks a webhook."""
    from sentinela.adapters.twilio_sms import TwilioSms

    s = settings()
    sms = TwilioSms(_twilio_secret, s.sms_from, api_base=s.twilio_api_base)
    return {sms.name: sms}


def channel(name: str) -> Channel:
    """The channel whose webhooks a handler answers (functions/sms_reply: "sms")."""
    return channels()[name]


def _senders() -> tuple[Sender, ...]:
    """The channels as the services send through them: with bounded retries (SMS_SEND_ATTEMPTS, SMS_BACKOFF_S)."""
    from sentinela.services.channels import Retrying

    s = settings()
    return tuple(Retrying(c, attempts=s.sms_attempts, backoff_s=s.sms_backoff_s) for c in channels().values())


def notify_service(metrics: MetricSink | None = None) -> NotifyService:
    from sentinela.services.incidents import IncidentService
    from sentinela.services.notify import NotifyService

    return NotifyService(IncidentService(store(), _senders(), metrics=metrics, **_incident_options()))


# --- incidents, escalation and SMS replies (sentinela.services.incidents) ------------------------------------
def _incident_options() -> dict[str, Any]:
    """STATUS_CALLBACK_URL (Twilio delivery reports; unset: none), SMS_AUDIO_LINKS=1 (a presigned clip link
    in an SMS of its own; default off), AUDIO_LINK_MINUTES (default 60), POLICY_FILE (sentinela.domain.policy)."""
    import os

    env = os.environ
    minutes = int(env.get("AUDIO_LINK_MINUTES", "60"))
    presign = None
    if env.get("SMS_AUDIO_LINKS", "0").lower() in ("1", "true", "yes"):
        def presign(alert: Alert) -> str:
            params = {"Bucket": alert.bucket, "Key": alert.key}
            if alert.version_id:
                params["VersionId"] = alert.version_id
            return str(_s3_sigv4().generate_presigned_url("get_object", Params=params, ExpiresIn=minutes * 60))
    return {"status_callback": env.get("STATUS_CALLBACK_URL") or None, "presign": presign, "link_minutes": minutes}


@functools.cache
def _s3_sigv4() -> Any:
    """Presigned links signed with SigV4 (X-Amz-Expires): what every region accepts."""
    from botocore.config import Config

    return boto3.client("s3", config=Config(signature_version="s3v4"))


def incident_service(metrics: MetricSink | None = None) -> IncidentService:
    """The escalation sweep and the replies; sends go through the channels (bounded retries)."""
    from sentinela.services.incidents import IncidentService

    opts = _incident_options()
    return IncidentService(store(), _senders(), metrics=metrics, status_callback=opts["status_callback"])


def _twilio_secret() -> Any:
    """The Twilio secret's value (cached by Powertools for 5 minutes); the adapter checks it
    (sentinela.adapters.twilio_sms.checked_secret)."""
    from aws_lambda_powertools.utilities import parameters

    from sentinela.adapters.twilio_sms import TwilioSecretError

    s = settings()
    if not s.twilio_secret:
        raise TwilioSecretError("TWILIO_SECRET_ARN is not set")
    return parameters.get_secret(s.twilio_secret, transform="json", max_age=300)


# --- presign (recorder uploads) -----------------------------------------------------------------
def presign_service(metrics: MetricSink | None = None) -> PresignService:
    """UPLOAD_URL_TTL_S (default 600), UPLOAD_CLOCK_SKEW_S (300), UPLOAD_RATE_PER_MINUTE (30); failed
    attempts: UPLOAD_FAILED_ATTEMPTS_PER_DEVICE (10) and _PER_IP (20) per UPLOAD_FAILED_ATTEMPTS_WINDOW_S (600)."""
    import os

    from sentinela.services.presign import PresignService

    s = settings()
    if not s.bucket:
        raise RuntimeError("CLIPS_BUCKET is not set")
    env = os.environ
    return PresignService(store(), s3(), s.bucket, max_bytes=s.max_clip_bytes,
                          ttl_s=int(env.get("UPLOAD_URL_TTL_S", "600")),
                          skew_s=int(env.get("UPLOAD_CLOCK_SKEW_S", "300")),
                          per_minute=int(env.get("UPLOAD_RATE_PER_MINUTE", "30")), metrics=metrics,
                          failures_per_device=int(env.get("UPLOAD_FAILED_ATTEMPTS_PER_DEVICE", "10")),
                          failures_per_ip=int(env.get("UPLOAD_FAILED_ATTEMPTS_PER_IP", "20")),
                          failure_window_s=int(env.get("UPLOAD_FAILED_ATTEMPTS_WINDOW_S", "600")))


# --- silence alarm (sentinela.services.silence) -------------------------------------------------------------
def silence_service(metrics: MetricSink | None = None) -> Any:
    """SILENCE_DEFAULT_CADENCE_S (3600), SILENCE_MISSED_UPLOADS (2), OPS_TOPIC_ARN (unset: no e-mail).
    A channel's secret is read only when a message is actually sent."""
    import os

    import boto3

    from sentinela.services.silence import SilenceService

    env = os.environ
    topic = env.get("OPS_TOPIC_ARN") or None

    def publish(subject: str, text: str) -> None:
        boto3.client("sns").publish(TopicArn=topic, Subject=subject, Message=text)

    return SilenceService(store(), _senders(), publish if topic else None,
                          default_cadence_s=float(env.get("SILENCE_DEFAULT_CADENCE_S", "3600")),
                          missed_uploads=float(env.get("SILENCE_MISSED_UPLOADS", "2")), metrics=metrics)


def reset() -> None:
    """Forget cached clients and settings (the local stack calls this when it restarts)."""
    for f in (settings, model, store, s3, channels, _s3_sigv4):
        f.cache_clear()
