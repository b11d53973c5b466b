"""Threat classes are data: the model card names them, the policy file says what each one is; the model
is whatever implements the ThreatModel protocol (pure logic, plus the tiny model's card)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sentinela.domain.alert import Alert
from sentinela.domain.card import CardError, ModelCard, card_threat_classes, load_card
from sentinela.domain.messages import render_alert, render_note, threat_words
from sentinela.domain.policy import check_against_card, class_traits, load_policy, validate_override
from sentinela.domain.scoring import ThreatModel, WindowBatch
from sentinela.services.classify import classify_source
from sentinela.services.pipeline import ClassifyService
from tests.conftest import encode, noise

REPO = Path(__file__).resolve().parents[2]
ALERT = Alert(clip_id="s/d/20261128T140000Z@v1", threat="gunshot", confidence=0.91, site_id="s", device_id="d",
              recorded_at="2026-11-28T14:00:00Z")


def _card_with(tiny_card_path: Path, tmp_path: Path, threats: dict[str, object]) -> Path:
    raw = json.loads(tiny_card_path.read_text())
    raw["threats"] = threats
    for name in ("tiny.onnx", "labels.txt"):
        (tmp_path / name).write_bytes((tiny_card_path.parent / name).read_bytes())
    (tmp_path / "card.json").write_text(json.dumps(raw))
    return tmp_path / "card.json"


def test_the_card_names_the_classes_in_its_order(tiny_card_path: Path, tmp_path: Path) -> None:
    from sentinela_tools.classes import THREAT_CLASSES

    shipped = ("gunshot", "chainsaw", "engine", "human_voice", "dog")
    assert card_threat_classes(REPO / "models" / "card.json") == shipped == THREAT_CLASSES
    raw = json.loads(tiny_card_path.read_text())
    path = _card_with(tiny_card_path, tmp_path, {"drone": {"model_labels": ["Noise_Noise"]}, **raw["threats"]})
    card = load_card(path)
    assert card.threat_classes == ("drone", *shipped) and card.threats["drone"].alert == 0.5


@pytest.mark.parametrize("name,why", [("Drone!", "lower case letters, digits and _"),
                                      ("background", "no-threat column")])
def test_a_class_name_must_be_usable_in_keys_metrics_and_tags(tiny_card_path: Path, tmp_path: Path, name: str,
                                                              why: str) -> None:
    with pytest.raises(CardError, match=why):
        load_card(_card_with(tiny_card_path, tmp_path, {name: {"model_labels": []}}))


def test_shipped_traits_keep_todays_behaviour() -> None:
    voice, gun, saw = class_traits("human_voice"), class_traits("gunshot"), class_traits("chainsaw")
    assert (voice.audio_link, voice.retention, voice.false_alarm_confirm_s) == (False, "voice", None)
    assert (gun.audio_link, gun.retention, gun.false_alarm_confirm_s) == (True, None, 600.0)
    assert (saw.audio_link, saw.retention, saw.false_alarm_confirm_s) == (True, None, None)
    words = {lang: [threat_words(c, lang) for c in ("gunshot", "chainsaw", "engine", "human_voice", "dog")]
             for lang in ("es", "en")}
    assert words == {"es": ["DISPARO", "MOTOSIERRA", "MOTOR/VEHICULO", "VOCES", "PERROS"],
                     "en": ["GUNSHOT", "CHAINSAW", "ENGINE/VEHICLE", "VOICES", "DOGS"]}
    assert ClassifyService._retention(["gunshot", "human_voice"]) == "voice"
    assert ClassifyService._retention(["gunshot", "dog"]) is None


def test_a_class_the_policy_does_not_name_gets_the_defaults() -> None:
    drone = class_traits("drone")
    assert (drone.audio_link, drone.retention, drone.false_alarm_confirm_s) == (True, None, None)
    assert "DRONE 91%" in render_alert(replace(ALERT, threat="drone"), None, "es", "4FA808")
    assert "es un DRONE:" in render_note("confirm_false", "es", ref="4FA808", threat="drone", minutes=5)
    named = {"classes": {"drone": {"names": {"es": "DRÓN", "en": "DRONE"}}}}
    assert class_traits("drone", named).name("es") == "DRÓN"  # threat_words folds it to GSM-7 (DRON)


def test_traits_are_the_policy_files_not_a_sites() -> None:
    site = validate_override({"classes": {"gunshot": {"audio_link": False, "window_s": 60}}})
    assert len(site) == 1 and "unknown key(s) ['audio_link']" in site[0] and "policy file's" in site[0]
    assert validate_override({"classes": {"gunshot": {"audio_link": False}}}, file=True) == []
    bad = "; ".join(validate_override({"defaults": {"names": {"es": "X"}}, "classes": {"gunshot": {
        "names": ["DISPARO"], "audio_link": "no", "retention": "forever", "false_alarm_confirm_s": 0}}}, file=True))
    for why in ("defaults.names: name each class", "classes.gunshot.names must map a language",
                "audio_link must be true or false", "retention must be null or one of voice",
                "false_alarm_confirm_s must be null or a number of seconds > 0"):
        assert why in bad, (why, bad)


def test_the_policy_lists_its_classes_in_the_cards_order() -> None:
    pol = load_policy()
    assert check_against_card(pol, card_threat_classes(REPO / "models" / "card.json")) == []
    assert check_against_card(pol, ("drone", "gunshot", "chainsaw", "engine", "human_voice", "dog")) == []
    problems = check_against_card(pol, ("chainsaw", "gunshot", "engine", "human_voice", "dog"))
    assert len(problems) == 1 and "the model card's is chainsaw, gunshot" in problems[0]
    # yields_to follows the file's order, in a site's override too
    assert validate_override({"classes": {"drone": {"yields_to": ["gunshot"]}}},
                             classes=("gunshot", "drone")) == []
    assert "can only yield to one before it" in "; ".join(
        validate_override({"classes": {"gunshot": {"yields_to": ["drone"]}}}, classes=("gunshot", "drone")))


class LoudnessModel:
    """Another model behind the protocol, no ONNX: a window's RMS is its one label and its one class."""

    def __init__(self, card: ModelCard) -> None:
        self._card = card

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def threat_classes(self) -> tuple[str, ...]:
        return ("gunshot",)

    @property
    def model_id(self) -> str:
        return "loudness-1"

    def label_kind(self, label: str) -> str:
        return "other"

    def run(self, windows: Iterable[tuple[float, np.ndarray]], batch_size: int = 8) -> Iterator[WindowBatch]:
        for start, w in windows:
            rms = np.float32(np.sqrt(np.mean(np.square(w))))
            scores = np.zeros((1, len(self._card.labels)), np.float32)
            yield WindowBatch(np.array([start]), scores, np.array([[min(1.0, 10 * rms)]], np.float32), None)


def test_classify_runs_any_model_behind_the_protocol(tiny_card: ModelCard, tmp_path: Path) -> None:
    from dataclasses import replace

    card = replace(tiny_card, threats={"gunshot": tiny_card.threats["gunshot"]})
    model: ThreatModel = LoudnessModel(card)
    clip = tmp_path / "loud.wav"
    clip.write_bytes(encode(noise(6.0, amp=0.2)))
    out = classify_source(str(clip), model)
    (decision,) = out.result.decisions
    assert decision.threat == "gunshot" and decision.alert and out.result.windows == 3
