"""Alert policy, on-call shifts, reply codes and the incident texts' segment budget (pure logic)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from sentinela.domain.alert import Alert
from sentinela.domain.messages import render_alert, render_escalation, render_reply, render_update
from sentinela.domain.phone import segments
from sentinela.domain.policy import class_policy, evaluate, load_policy, validate_override, windows_within
from sentinela.services.incidents import reply_code
from sentinela.services.roster import RosterError, is_on_call, parse_shift, validate

ALERT = Alert(clip_id="s/d/20261128T140000Z@v1", threat="gunshot", confidence=0.91, threshold=0.5,
         alerting_windows=2, first_s=3.0, site_id="s", device_id="d",
         recorded_at="2026-11-28T14:00:00Z")
SITE = {"site_id": "s", "name": "Nahuelbuta Norte, sector Pehuén", "lat": -37.7936, "lon": -72.9911,
        "tz": "America/Santiago"}


def test_shipped_policy_is_valid_and_site_overrides_win() -> None:
    pol = load_policy()
    assert validate_override(pol, file=True) == []
    base = class_policy("engine", None, pol)
    assert base.group == "vehicle" and base.confirm.windows == 2
    site = {"policy": {"defaults": {"escalation_delay_s": 60},
                       "classes": {"engine": {"confirm": {"windows": 4}, "threshold": 0.8}}}}
    over = class_policy("engine", site, pol)
    assert (over.confirm.windows, over.confirm.within_s, over.threshold, over.escalation_delay_s) == (4, 120, 0.8, 60)
    assert class_policy("gunshot", site, pol).group == "gunshot"


def test_bad_overrides_are_named() -> None:
    problems = validate_override({"classes": {"gunshot": {"cooldown": 5, "threshold": 2}}, "extra": 1})
    text = "; ".join(problems)
    assert "unknown section(s) ['extra']" in text and "unknown key(s) ['cooldown']" in text
    assert "threshold must be null, 'quiet' or a number within 0..1" in text
    assert validate_override({"defaults": {"threshold": "quiet"}}) == []
    assert "threshold must be" in "; ".join(validate_override({"defaults": {"threshold": "loud"}}))


def test_yields_to_holds_an_alert_when_its_clip_alerted_a_stronger_class() -> None:
    assert class_policy("engine").yields_to == ("chainsaw",)  # shipped: BirdNET's Engine hears chainsaws
    cp = class_policy("gunshot", {"policy": {"classes": {"gunshot": {"yields_to": ["chainsaw"]}}}})
    held = evaluate(ALERT, cp, [], [], stronger=["chainsaw"])
    assert not held.alert and held.trace[0].rule == "yields_to" and held.trace[0].numbers == {"classes": ["chainsaw"]}
    assert evaluate(ALERT, cp, [], [], stronger=["dog"]).alert
    assert evaluate(ALERT, cp, [], []).alert
    assert "yields_to must be a list of threat classes" in "; ".join(
        validate_override({"classes": {"engine": {"yields_to": ["trucks"]}}}))
    # alert items are written in class order: yielding to a later class could race on AWS, so it is refused
    assert "a class can only yield to one before it" in "; ".join(
        validate_override({"classes": {"gunshot": {"yields_to": ["chainsaw"]}}}))
    assert validate_override({"classes": {"engine": {"yields_to": ["chainsaw", "gunshot"]}}}) == []


def test_quiet_threshold_reads_the_cards_quiet_point_from_the_alert() -> None:
    cp = class_policy("gunshot", {"policy": {"defaults": {"threshold": "quiet"}}})
    assert cp.threshold == "quiet"
    held = evaluate(replace(ALERT, threshold=0.6, quiet_threshold=0.95), cp, [], [])
    assert not held.alert and held.trace[0].numbers == {"confidence": 0.91, "threshold": 0.95}
    assert held.reason == "confidence 0.91 < 0.95 (model card, quiet operating point)"
    assert evaluate(replace(ALERT, threshold=0.6, quiet_threshold=0.9), cp, [], []).alert
    # a card without a quiet point: its own threshold, and the trace says so
    old = evaluate(replace(ALERT, threshold=0.6), cp, [], [])
    assert old.alert and "it has no quiet operating point" in old.trace[0].detail


def test_windows_within_counts_the_densest_span() -> None:
    evs = [{"t": 0, "n": 1}, {"t": 50, "n": 2}, {"t": 200, "n": 3}]
    assert windows_within(evs, 60) == 3 and windows_within(evs, 10) == 3 and windows_within(evs, 300) == 6


def test_threshold_and_confirmation_traces() -> None:
    cp = class_policy("gunshot", {"policy": {"classes": {"gunshot": {"threshold": 0.95}}}})
    v = evaluate(ALERT, cp, [], [])
    assert not v.alert and v.trace[0].rule == "threshold" and v.trace[0].numbers == {
        "confidence": 0.91, "threshold": 0.95}
    assert v.reason == "confidence 0.91 < 0.95 (policy)"
    cp = class_policy("gunshot", {"policy": {"classes": {"gunshot": {"confirm": {"windows": 3, "within_s": 30}}}}})
    held = evaluate(ALERT, cp, [{"t": 3.0, "n": 2}], [])
    assert not held.alert and held.trace[-1].numbers == {"windows": 2, "need": 3, "within_s": 30.0}
    earlier = [replace(ALERT, clip_id="s/d/20261128T135950Z@v0", recorded_at="2026-11-28T13:59:50Z",
                    alerting_windows=1, first_s=5.0)]
    ok = evaluate(ALERT, cp, [{"t": 3.0, "n": 2}], earlier)
    assert ok.alert and ok.trace[-1].numbers["scope"] == "device" and ok.trace[-1].numbers["windows"] == 3
    far = [replace(earlier[0], recorded_at="2026-11-28T13:58:00Z")]
    assert not evaluate(ALERT, cp, [{"t": 3.0, "n": 2}], far).alert


def test_shifts_in_local_time_including_overnight() -> None:
    night = {"ranger_id": "n", "shifts": [parse_shift("mon-fri 20:00-08:00")]}
    sat_morning = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)  # Sat 07:00 in Santiago: Friday's night
    sun_morning = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)  # Sun 07:00: no Saturday shift
    assert is_on_call(night, SITE, sat_morning) and not is_on_call(night, SITE, sun_morning)
    assert is_on_call({"ranger_id": "x"}, SITE, sun_morning)  # no shifts: always on call
    assert not is_on_call({"ranger_id": "x", "on_call": False}, SITE, sun_morning)
    assert not is_on_call({"ranger_id": "x", "number_invalid": True}, SITE, sun_morning)
    assert parse_shift({"days": "sat-sun", "start": "10:00", "end": "12:00"})["days"] == ["sat", "sun"]
    with pytest.raises(RosterError):
        parse_shift("weekdays 8-20")


def test_roster_validation_names_every_problem() -> None:
    sites = [{"site_id": "s", "tz": "Mars/Olympus", "lead": "zoe"}]
    rangers = [{"ranger_id": "a", "phone": "0912", "lang": "fr", "sites": ["s", "t"], "shifts": ["25:00-26:00"],
                "role": "boss"}]
    text = "; ".join(validate(sites, rangers))
    for part in ("time zone 'Mars/Olympus' is unknown", "not E.164", "lang must be one of es, en",
                 "unknown site(s) ['t']", "shift time '25:00' is not HH:MM", "role must be one of", "lead 'zoe'"):
        assert part in text, part


@pytest.mark.parametrize("body,code", [("1", "acknowledged"), ("sí", "acknowledged"), ("SI", "acknowledged"),
                                       (" Voy! ", "acknowledged"), ("yes", "acknowledged"), ("2", "false_alarm"),
                                       ("Falsa alarma", "false_alarm"), ("FALSE", "false_alarm"),
                                       ("3", "resolved"), ("hola", None), ("", None)])
def test_reply_codes(body: str, code: str | None) -> None:
    assert reply_code(body) == code


def _incident(threat: str) -> dict[str, Any]:
    return {"incident_id": "s/g/x", "ref": "4FA808", "site_id": "s", "threat": threat, "alerts": 12,
            "max_confidence": 0.97, "first_heard": "2026-11-28T14:00:00Z", "last_heard": "2026-11-28T14:20:00Z"}


LONG_SITE = dict(SITE, name="Reserva Nacional Nahuelbuta, sector Pehuén, camino a Cañete y Angol (Araucanía)")


@pytest.mark.parametrize("lang", ["es", "en"])
@pytest.mark.parametrize("threat", sorted(load_policy()["classes"]))
@pytest.mark.parametrize("site", [SITE, LONG_SITE], ids=["site", "long-site"])
def test_every_incident_text_is_gsm7_within_two_segments(lang: str, threat: str, site: dict[str, Any]) -> None:
    inc = _incident(threat)
    alert = replace(ALERT, threat=threat, recorded_at="2026-11-28T14:20:00Z")
    texts = [render_alert(alert, site, lang, "4FA808"), render_update(inc, alert, site, lang),
             render_escalation(inc, site, lang, 15)]
    texts += [render_reply(k, lang, ref="4FA808", name="María José Ñancupil")
              for k in ("acknowledged", "already", "false_alarm", "resolved", "help", "no_incident", "unknown_number")]
    for text in texts:
        seg = segments(text)
        assert seg.encoding == "GSM-7" and seg.segments <= 2, (text, seg)
    assert "4FA808" in texts[0] and "%" in texts[0] and ("1=voy" in texts[0] or "1=on my way" in texts[0])


DEVICE = {"site_id": "s", "device_id": "rec-07", "lat": -37.801234, "lon": -72.954321}


@pytest.mark.parametrize("lang", ["es", "en"])
@pytest.mark.parametrize("threat", sorted(load_policy()["classes"]))
@pytest.mark.parametrize("site", [SITE, LONG_SITE], ids=["site", "long-site"])
def test_texts_name_the_recorder_its_place_and_a_late_sounds_age(lang: str, threat: str,
                                                                 site: dict[str, Any]) -> None:
    from datetime import UTC, datetime

    long_id = "grabadora-norte-quebrada-07-bis"
    alert = replace(ALERT, threat=threat, recorded_at="2026-11-28T14:20:00Z", device_id=long_id)
    late = datetime(2026, 11, 28, 17, 5, tzinfo=UTC)  # 2 h 45 min after it was recorded
    text = render_alert(alert, site, lang, "4FA808", dict(DEVICE, device_id=long_id), late)
    seg = segments(text)
    assert seg.encoding == "GSM-7" and seg.segments <= 2, (text, seg)
    assert long_id[:20] in text
    assert ("hace 3 h" if lang == "es" else "3 h ago") in text
    if site is SITE:
        assert "q=-37.80123,-72.95432" in text  # the recorder's point, not the site's centre
    esc = render_escalation(_incident(threat), site, lang, 15, DEVICE)
    assert segments(esc).segments <= 2 and (site is not SITE or "q=-37.80123,-72.95432" in esc)


@pytest.mark.parametrize("lang", ["es", "en"])
def test_a_fresh_sound_has_no_age_and_an_unplaced_recorder_links_the_site(lang: str) -> None:
    from datetime import UTC, datetime

    alert = replace(ALERT, recorded_at="2026-11-28T14:20:00Z", device_id="rec-01")
    text = render_alert(alert, SITE, lang, "4FA808", None, datetime(2026, 11, 28, 14, 30, tzinfo=UTC))
    assert "hace" not in text and "ago" not in text  # 10 min is not late
    assert f"q={SITE['lat']:.5f},{SITE['lon']:.5f}" in text and "rec-01" in text
    later = render_alert(alert, SITE, lang, "4FA808", None, datetime(2026, 11, 28, 14, 45, tzinfo=UTC))
    assert ("hace 25 min" if lang == "es" else "25 min ago") in later


def test_an_alert_is_parsed_once_and_a_bad_one_is_named() -> None:
    from sentinela.domain.alert import AlertShapeError

    item = ALERT.to_item() | {"pk": "CLIP#x", "sk": "ALERT#gunshot", "outcome": "opened"}
    assert Alert.from_item(item) == ALERT  # what notify annotated is not part of the alert
    with pytest.raises(AlertShapeError, match="no threat"):
        Alert.from_item({k: v for k, v in item.items() if k != "threat"})
    with pytest.raises(AlertShapeError, match="confidence is not a number"):
        Alert.from_item(item | {"confidence": "high"})
    with pytest.raises(AlertShapeError, match="not an alert item"):
        Alert.from_item(item | {"alert": False})
