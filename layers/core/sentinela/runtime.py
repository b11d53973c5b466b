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

# Each function's layers carry only what it uses (classify: numpy/onnxruntime; notify: twilio), so
# the heavy modules are imported where they are needed, not here.
if TYPE_CHECKING:
    from sentinela.adapters.sms import SmsGateway
    from sentinela.domain.scoring import ThreatModel
    from sentinela.services.incidents import IncidentService
    from sentinela.services.notify import NotifyService
    from sentinela.services.pipeline import ClassifyService
    from sentinela.services.presign import PresignService


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def model() -> ThreatModel:
    """Loaded once per container: session creation is the bulk of a cold start. The card's classes and
    the policy file must agree (their order), or classify refuses to start with the reason."""
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import load_card, with_alert_override
    from sentinela.domain.policy import PolicyError, check_against_card, load_policy

    card = with_alert_override(load_card(default_card_path()), settings().alert_threshold_override)
    problems = check_against_card(load_policy(), card.threat_classes)
    if problems:
        raise PolicyError("; ".join(problems))
    return BirdNetOnnx(card)


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


@functools.cache
def _gateway() -> SmsGateway:
    from sentinela.adapters.sms import SmsGateway

    s = settings()
    secret = twilio_secret()
    from_number = s.sms_from or secret.get("from_number")
    if not from_number:
        raise RuntimeError("no sender number: set SMS_FROM_NUMBER or from_number in the Twilio secret")
    return SmsGateway(secret["account_sid"], secret["auth_token"], from_number, api_base=s.twilio_api_base)


def notify_service(metrics: MetricSink | None = None) -> NotifyService:
    from sentinela.services.notify import NotifyService

    s = settings()
    return NotifyService(store(), _gateway, metrics=metrics, attempts=s.sms_attempts, backoff_s=s.sms_backoff_s,
                         **_incident_options())


# --- incidents, escalation and SMS replies (sentinela.services.incidents) ------------------------------------
def _incident_options() -> dict[str, Any]:
    """STATUS_CALLBACK_URL (Twilio delivery reports; unset: none), SMS_AUDIO_LINKS=1 (a presigned clip link
    in an SMS of its own; default off), AUDIO_LINK_MINUTES (default 60), POLICY_FILE (sentinela.domain.policy)."""
    import os

    env = os.environ
    minutes = int(env.get("AUDIO_LINK_MINUTES", "60"))
    presign = None
    if env.get("SMS_AUDIO_LINKS", "0").lower() in ("1", "true", "yes"):
        def presign(alert: Any) -> str:
            params = {"Bucket": alert["bucket"], "Key": alert["key"]}
            if alert.get("version_id"):
                params["VersionId"] = alert["version_id"]
            return str(_s3_sigv4().generate_presigned_url("get_object", Params=params, ExpiresIn=minutes * 60))
    return {"status_callback": env.get("STATUS_CALLBACK_URL") or None, "presign": presign, "link_minutes": minutes}


@functools.cache
def _s3_sigv4() -> Any:
    """Presigned links signed with SigV4 (X-Amz-Expires): what every region accepts."""
    from botocore.config import Config

    return boto3.client("s3", config=Config(signature_version="s3v4"))


def incident_service(metrics: MetricSink | None = None) -> IncidentService:
    """The escalation sweep and the SMS replies; sends go through NotifyService (bounded retries)."""
    from sentinela.services.incidents import IncidentService

    notifier = notify_service(metrics)
    opts = _incident_options()
    return IncidentService(store(), notifier._send, metrics=metrics, status_callback=opts["status_callback"])


class TwilioSecretError(RuntimeError):
    """The Twilio secret is missing, unreadable or has no auth token: a deployment problem ops must fix.
    Webhooks are refused (never accepted unchecked) until it is."""


def twilio_secret() -> dict[str, Any]:
    """The Twilio secret (cached by Powertools for 5 minutes). Refuses one without an auth token: with an
    empty token, a signature computed with an empty key would validate, i.e. anyone could sign."""
    from aws_lambda_powertools.utilities import parameters

    s = settings()
    if not s.twilio_secret:
        raise TwilioSecretError("TWILIO_SECRET_ARN is not set")
    try:
        secret: Any = parameters.get_secret(s.twilio_secret, transform="json", max_age=300)
    except Exception as exc:  # unreadable or not JSON: the same fix (put a valid secret value)
        raise TwilioSecretError(f"the Twilio secret could not be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(secret, dict) or not isinstance(secret.get("auth_token"), str) \
            or not secret["auth_token"].strip():
        raise TwilioSecretError("the Twilio secret has no auth_token (missing or empty): set it with "
                                "`aws secretsmanager put-secret-value` (README, Deploying)")
    return secret


def twilio_auth_token() -> str:
    """For X-Twilio-Signature: the auth token from the Twilio secret; :class:`TwilioSecretError` if none."""
    return str(twilio_secret()["auth_token"])


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
    The Twilio secret is read only when a message is actually sent."""
    import os

    import boto3

    from sentinela.services.silence import SilenceService

    env = os.environ
    topic = env.get("OPS_TOPIC_ARN") or None

    def publish(subject: str, text: str) -> None:
        boto3.client("sns").publish(TopicArn=topic, Subject=subject, Message=text)

    return SilenceService(store(), lambda to, body: notify_service(metrics)._send(to, body),
                          publish if topic else None,
                          default_cadence_s=float(env.get("SILENCE_DEFAULT_CADENCE_S", "3600")),
                          missed_uploads=float(env.get("SILENCE_MISSED_UPLOADS", "2")), metrics=metrics)


def reset() -> None:
    """Forget cached clients, settings and the policy file (the local stack calls this when it restarts)."""
    from sentinela.domain.policy import load_policy

    for f in (settings, model, store, s3, _gateway, _s3_sigv4, load_policy):
        f.cache_clear()
