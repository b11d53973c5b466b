"""One Settings for every environment read, checked all at once (a handler reads it at cold start)."""

from __future__ import annotations

import pytest

from sentinela.config import DEFAULT_MAX_CLIP_BYTES, Settings, SettingsError


def test_defaults_when_nothing_is_set() -> None:
    s = Settings.from_env({})
    assert (s.table_name, s.max_clip_bytes, s.sms_attempts, s.classify_max_attempts) == (
        "sentinela-data", DEFAULT_MAX_CLIP_BYTES, 3, 3)
    assert (s.audio_links, s.audio_link_minutes, s.upload_url_ttl_s, s.silence_missed_uploads) == (False, 60, 600, 2.0)
    assert s.alert_threshold_override is None and s.policy_file is None and s.ops_topic_arn is None


def test_values_are_read_and_typed() -> None:
    s = Settings.from_env({"SMS_AUDIO_LINKS": "yes", "AUDIO_LINK_MINUTES": "30", "ALERT_THRESHOLD": "0.7",
                           "UPLOAD_RATE_PER_MINUTE": "2", "OPS_TOPIC_ARN": "", "SENTINELA_THREADS": "1"})
    assert (s.audio_links, s.audio_link_minutes, s.alert_threshold_override) == (True, 30, 0.7)
    assert (s.upload_rate_per_minute, s.ops_topic_arn, s.threads) == (2, None, 1)


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SMS_SEND_ATTEMPTS": "three", "UPLOAD_URL_TTL_S": "-5", "ALERT_THRESHOLD": "2",
                           "SILENCE_MISSED_UPLOADS": "1.5"})
    text = str(err.value)
    assert "SMS_SEND_ATTEMPTS='three' is not a whole number" in text
    assert "UPLOAD_URL_TTL_S='-5' is below 1" in text and "ALERT_THRESHOLD='2' is above 1" in text
    assert "SILENCE_MISSED_UPLOADS" not in text  # 1.5 is a fine number of missed uploads
