"""Builds the services a handler needs from the environment, once per process (Lambda container).

Handlers call these; so does the local stack, through the very same handlers.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import boto3

from sentinela.adapters.metrics import MetricSink
from sentinela.adapters.store import Store
from sentinela.config import Settings
from sentinela.domain.alert import Alert

# Each function's layers carry only what it uses (classify: numpy/onnxruntime; notify: twilio), so
# the heavy modules are imported where they are needed, not here.
if TYPE_CHECKING:
    from sentinela.domain.channel import Channel, Sender
    from sentinela.domain.scoring import ThreatModel
    from sentinela.services.incidents import IncidentService
    from sentinela.services.notify import NotifyService
    from sentinela.services.pipeline import ClassifyService
    from sentinela.services.presign import PresignService


@functools.cache
def settings() -> Settings:
    """Every environment setting, read and checked once per container (handlers call this at cold start:
    a bad value stops the function there, naming it). The policy file it names is the one the domain reads."""
    from sentinela.domain.policy import use_policy_file

    s = Settings.from_env()
    use_policy_file(s.policy_file)
    return s


@functools.cache
def model() -> ThreatModel:
    """Loaded once per container: session creation is the bulk of a cold start. The card's classes and
    the policy file must agree (their order), or classify refuses to start with the reason."""
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import load_card, with_alert_override
    from sentinela.domain.policy import PolicyError, check_against_card, load_policy

    s = settings()
    card = with_alert_override(load_card(s.model_card), s.alert_threshold_override)
    problems = check_against_card(load_policy(), card.threat_classes)
    if problems:
        raise PolicyError("; ".join(problems))
    return BirdNetOnnx(card, threads=s.threads)


@functools.cache
def store() -> Store:
    return Store(settings().table_name)


@functools.cache
def s3() -> Any:
    return boto3.client("s3")


def classify_service(metrics: MetricSink | None = None) -> ClassifyService:
    from sentinela.services.pipeline import ClassifyService

    s = settings()
    # 1 + EventInvokeConfig.MaximumRetryAttempts in template.yaml: the last attempt records a terminal status.
    return ClassifyService(store(), s3(), model(), max_bytes=s.max_clip_bytes, max_seconds=s.max_clip_seconds,
                           batch_size=s.batch_size, metrics=metrics, max_attempts=s.classify_max_attempts)


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
    """STATUS_CALLBACK_URL (delivery reports; unset: none), SMS_AUDIO_LINKS=1 (a presigned clip link in an
    SMS of its own; default off), AUDIO_LINK_MINUTES (default 60); POLICY_FILE: sentinela.domain.policy."""
    s = settings()
    minutes = s.audio_link_minutes
    presign = None
    if s.audio_links:
        def presign(alert: Alert) -> str:
            params = {"Bucket": alert.bucket, "Key": alert.key}
            if alert.version_id:
                params["VersionId"] = alert.version_id
            return str(_s3_sigv4().generate_presigned_url("get_object", Params=params, ExpiresIn=minutes * 60))
    return {"status_callback": s.status_callback_url, "presign": presign, "link_minutes": minutes}


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
    attempts: UPLOAD_FAILED_ATTEMPTS_PER_DEVICE (10, from one address), _PER_DEVICE_ALL (100, from all) and
    _PER_IP (20) per UPLOAD_FAILED_ATTEMPTS_WINDOW_S (600)."""
    from sentinela.services.presign import PresignService

    s = settings()
    if not s.bucket:
        raise RuntimeError("CLIPS_BUCKET is not set")
    return PresignService(store(), s3(), s.bucket, max_bytes=s.max_clip_bytes, ttl_s=s.upload_url_ttl_s,
                          skew_s=s.upload_clock_skew_s, per_minute=s.upload_rate_per_minute, metrics=metrics,
                          failures_per_device=s.upload_failures_per_device,
                          failures_per_ip=s.upload_failures_per_ip, failure_window_s=s.upload_failure_window_s,
                          failures_per_device_all=s.upload_failures_per_device_all)


# --- silence alarm (sentinela.services.silence) -------------------------------------------------------------
def silence_service(metrics: MetricSink | None = None) -> Any:
    """SILENCE_DEFAULT_CADENCE_S (3600), SILENCE_MISSED_UPLOADS (2), OPS_TOPIC_ARN (unset: no e-mail).
    A channel's secret is read only when a message is actually sent."""
    from sentinela.services.silence import SilenceService

    s = settings()
    topic = s.ops_topic_arn

    def publish(subject: str, text: str) -> None:
        boto3.client("sns").publish(TopicArn=topic, Subject=subject, Message=text)

    return SilenceService(store(), _senders(), publish if topic else None,
                          default_cadence_s=s.silence_default_cadence_s, missed_uploads=s.silence_missed_uploads,
                          metrics=metrics)


def reset() -> None:
    """Forget cached clients, settings and the policy file (the local stack calls this when it restarts)."""
    from sentinela.domain.policy import forget_policy

    for f in (settings, model, store, s3, channels, _s3_sigv4):
        f.cache_clear()
    forget_policy()
