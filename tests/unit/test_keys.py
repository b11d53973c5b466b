from datetime import UTC, datetime

import pytest

from sentinela.domain.keys import BadKey, make_key, parse_event_key, parse_key


def test_parses_a_good_key() -> None:
    k = parse_key("clips/nahuelbuta-norte/rec_01/20261128T143210Z.flac")
    assert (k.site_id, k.device_id, k.ext) == ("nahuelbuta-norte", "rec_01", "flac")
    assert k.recorded_at == datetime(2026, 11, 28, 14, 32, 10, tzinfo=UTC)
    assert k.key == "clips/nahuelbuta-norte/rec_01/20261128T143210Z.flac"


def test_event_keys_are_url_decoded() -> None:
    assert parse_event_key("clips/site-1/dev-1/20261128T143210Z.WAV").ext == "wav"
    with pytest.raises(BadKey, match="site_id 'site 1'"):
        parse_event_key("clips/site+1/dev-1/20261128T143210Z.wav")
    with pytest.raises(BadKey, match="device_id"):
        parse_event_key("clips/site-1/d%C3%A9v/20261128T143210Z.wav")  # 'dév'


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty key"),
        ("uploads/s/d/20261128T143210Z.wav", "must start with 'clips/'"),
        ("clips/s/20261128T143210Z.wav", "got 3 parts"),
        ("clips/s/d/x/20261128T143210Z.wav", "got 5 parts"),
        ("clips/../d/20261128T143210Z.wav", "may not be '..'"),
        ("clips/s/d/20261328T143210Z.wav", "not a valid time"),
        ("clips/s/d/2026-11-28.wav", "not a UTC time"),
        ("clips/s/d/20261128T143210Z", "no extension"),
        ("clips/s/d/20261128T143210Z.txt", "'.txt' is not one of"),
        ("clips/sité/d/20261128T143210Z.wav", "site_id"),
        ("clips/s/d d/20261128T143210Z.wav", "device_id"),
        ("clips//d/20261128T143210Z.wav", "missing site_id"),
    ],
)
def test_rejects_keys_outside_the_scheme_with_a_reason(key: str, reason: str) -> None:
    with pytest.raises(BadKey, match=reason.replace("(", r"\(").replace(".", r"\.")):
        parse_key(key)


def test_make_key_round_trips() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_key(make_key("s1", "d1", when, ".OGG")).recorded_at == when
    with pytest.raises(BadKey):
        make_key("s 1", "d1", when, "wav")
