"""Settings from the environment (template.yaml sets them on AWS; the local stack sets them locally)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# models/card.json beside the repository's layers/ when run from a checkout; /opt/card.json in Lambda.
_REPO_CARD = Path(__file__).resolve().parents[3] / "models" / "card.json"


# template.yaml's MaxClipBytes and MaxClipSeconds defaults, which reach every function as MAX_CLIP_BYTES and
# MAX_CLIP_SECONDS; these apply only where no template set them (the CLI). tests/unit/test_template.py
# checks that the two agree, so that code and template cannot drift apart again.
DEFAULT_MAX_CLIP_BYTES = 200_000_000
DEFAULT_MAX_CLIP_SECONDS = 7200


def default_card_path() -> Path:
    env = os.environ.get("MODEL_CARD")
    if env:
        return Path(env)
    return _REPO_CARD if _REPO_CARD.exists() else Path("/opt/card.json")


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

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        override = float(env.get("ALERT_THRESHOLD", "0") or 0)
        return cls(
            table_name=env.get("TABLE_NAME", "sentinela-data"),
            bucket=env.get("CLIPS_BUCKET"),
            max_clip_bytes=int(env.get("MAX_CLIP_BYTES", str(DEFAULT_MAX_CLIP_BYTES))),
            max_clip_seconds=float(env.get("MAX_CLIP_SECONDS", str(DEFAULT_MAX_CLIP_SECONDS))),
            alert_threshold_override=override if override > 0 else None,
            twilio_secret=env.get("TWILIO_SECRET_ARN"),
            sms_from=env.get("SMS_FROM_NUMBER"),
            twilio_api_base=env.get("TWILIO_API_BASE"),
            batch_size=int(env.get("SENTINELA_BATCH", "8")),
            sms_attempts=int(env.get("SMS_SEND_ATTEMPTS", "3")),
            sms_backoff_s=float(env.get("SMS_BACKOFF_S", "0.5")),
        )
