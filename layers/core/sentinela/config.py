"""Every setting Sentinela reads from the environment, in one place (template.yaml sets them on AWS; the
local stack sets them locally). :meth:`Settings.from_env` reads and checks them all at once: a handler
calls it at cold start (``runtime.settings()``), so a bad value stops the function there with every
problem named (:class:`SettingsError`), never half-way through a clip or an incident.

Nothing else in the runtime reads ``os.environ``; tests/unit/test_layout.py checks that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

# models/card.json beside the repository's layers/ when run from a checkout; /opt/card.json in Lambda.
_REPO_CARD = Path(__file__).resolve().parents[3] / "models" / "card.json"


# template.yaml's MaxClipBytes and MaxClipSeconds defaults, which reach every function as MAX_CLIP_BYTES and
# MAX_CLIP_SECONDS; these apply only where no template set them (the CLI). tests/unit/test_template.py
# checks that the two agree, so that code and template cannot drift apart again.
DEFAULT_MAX_CLIP_BYTES = 200_000_000
DEFAULT_MAX_CLIP_SECONDS = 7200
TRUE = ("1", "true", "yes")


class SettingsError(ValueError):
    """One or more environment settings are unusable; the message names each variable and its value."""


def default_card_path(env: Mapping[str, str] | None = None) -> Path:
    """MODEL_CARD, else the checkout's models/card.json, else the model layer's /opt/card.json."""
    named = (os.environ if env is None else env).get("MODEL_CARD")
    if named:
        return Path(named)
    return _REPO_CARD if _REPO_CARD.exists() else Path("/opt/card.json")


def default_threads(env: Mapping[str, str] | None = None) -> int:
    """SENTINELA_THREADS, else up to 2 (Lambda's vCPUs at the template's memory size)."""
    named = (os.environ if env is None else env).get("SENTINELA_THREADS")
    return int(named) if named else max(1, min(2, os.cpu_count() or 1))


T = TypeVar("T", int, float)


@dataclass(frozen=True)
class Settings:
    table_name: str
    bucket: str | None
    max_clip_bytes: int
    max_clip_seconds: float
    alert_threshold_override: float | None
    twilio_secret: str | None
    sms_from: str | None
    twilio_api_base: str | None
    batch_size: int
    sms_attempts: int
    sms_backoff_s: float
    # classify
    model_card: Path
    threads: int
    classify_max_attempts: int  # 1 + EventInvokeConfig.MaximumRetryAttempts: the last one records `failed`
    idempotency_table: str
    # incidents and texts
    policy_file: str | None
    status_callback_url: str | None
    audio_links: bool
    audio_link_minutes: int
    public_api_url: str | None
    # uploads (presign)
    upload_url_ttl_s: int
    upload_clock_skew_s: int
    upload_rate_per_minute: int
    upload_failures_per_device: int
    upload_failures_per_ip: int
    upload_failures_per_device_all: int
    upload_failure_window_s: int
    # silence alarm
    silence_default_cadence_s: float
    silence_missed_uploads: float
    ops_topic_arn: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source: Mapping[str, str] = os.environ if env is None else env
        problems: list[str] = []

        def number(name: str, default: T, kind: Callable[[str], T], low: float | None = 0) -> T:
            raw = source.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not {'a whole number' if kind is int else 'a number'}")
                return default
            if low is not None and value < low:
                problems.append(f"{name}={raw!r} is below {low:g}")
                return default
            return value

        def text(name: str) -> str | None:
            return source.get(name) or None

        override = number("ALERT_THRESHOLD", 0.0, float)
        if override > 1:
            problems.append(f"ALERT_THRESHOLD={source.get('ALERT_THRESHOLD')!r} is above 1 (0 or unset: the card's)")
        settings = cls(
            table_name=source.get("TABLE_NAME") or "sentinela-data",
            bucket=text("CLIPS_BUCKET"),
            max_clip_bytes=number("MAX_CLIP_BYTES", DEFAULT_MAX_CLIP_BYTES, int, 1),
            max_clip_seconds=number("MAX_CLIP_SECONDS", float(DEFAULT_MAX_CLIP_SECONDS), float, 1),
            alert_threshold_override=override if override > 0 else None,
            twilio_secret=text("TWILIO_SECRET_ARN"),
            sms_from=text("SMS_FROM_NUMBER"),
            twilio_api_base=text("TWILIO_API_BASE"),
            batch_size=number("SENTINELA_BATCH", 8, int, 1),
            sms_attempts=number("SMS_SEND_ATTEMPTS", 3, int, 1),
            sms_backoff_s=number("SMS_BACKOFF_S", 0.5, float),
            model_card=default_card_path(source),
            threads=number("SENTINELA_THREADS", default_threads({}), int, 1),  # {}: the machine's default
            classify_max_attempts=number("CLASSIFY_MAX_ATTEMPTS", 3, int, 1),
            idempotency_table=source.get("IDEMPOTENCY_TABLE") or "idempotency",
            policy_file=text("POLICY_FILE"),
            status_callback_url=text("STATUS_CALLBACK_URL"),
            audio_links=(source.get("SMS_AUDIO_LINKS") or "0").strip().lower() in TRUE,
            audio_link_minutes=number("AUDIO_LINK_MINUTES", 60, int, 1),
            public_api_url=text("PUBLIC_API_URL"),
            upload_url_ttl_s=number("UPLOAD_URL_TTL_S", 600, int, 1),
            upload_clock_skew_s=number("UPLOAD_CLOCK_SKEW_S", 300, int),
            upload_rate_per_minute=number("UPLOAD_RATE_PER_MINUTE", 30, int, 1),
            upload_failures_per_device=number("UPLOAD_FAILED_ATTEMPTS_PER_DEVICE", 10, int, 1),
            upload_failures_per_ip=number("UPLOAD_FAILED_ATTEMPTS_PER_IP", 20, int, 1),
            upload_failures_per_device_all=number("UPLOAD_FAILED_ATTEMPTS_PER_DEVICE_ALL", 100, int, 1),
            upload_failure_window_s=number("UPLOAD_FAILED_ATTEMPTS_WINDOW_S", 600, int, 1),
            silence_default_cadence_s=number("SILENCE_DEFAULT_CADENCE_S", 3600.0, float, 1),
            silence_missed_uploads=number("SILENCE_MISSED_UPLOADS", 2.0, float, 1),
            ops_topic_arn=text("OPS_TOPIC_ARN"),
        )
        if problems:
            raise SettingsError("bad settings: " + "; ".join(problems))
        return settings
