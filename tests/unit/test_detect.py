import numpy as np

from sentinela.adapters.model import BirdNetOnnx
from sentinela.domain.card import ModelCard
from sentinela.domain.detect import Detector
from sentinela.domain.scoring import WindowBatch
from sentinela.services.classify import classify_source
from tests.conftest import SR, encode, impulse, noise, tone


def _batch(card: ModelCard, starts: list[float], threat: list[list[float]]) -> WindowBatch:
    n = len(starts)
    return WindowBatch(np.array(starts), np.zeros((n, len(card.labels)), np.float32),
                       np.array(threat, np.float32), None)


def test_overlapping_windows_merge_into_one_event(tiny_card: ModelCard) -> None:
    names = tuple(tiny_card.threats)
    det = Detector(tiny_card, names)
    g = names.index("gunshot")
    rows = [[0.0] * 5 for _ in range(5)]
    for i, s in enumerate([0.1, 0.5, 0.95, 0.2, 0.9]):
        rows[i][g] = s
    det.add(_batch(tiny_card, [0.0, 1.5, 3.0, 4.5, 6.0], rows))
    res = det.finish(9.0)
    ev = [d for d in res.detections if d.label == "gunshot"]
    # store threshold 0.3: windows 1-2 are one event (1.5 .. 6.0); window 3 is below it, so window 4
    # (6.0 .. 9.0) starts another
    assert [(d.start_s, d.end_s, d.windows, d.alerting_windows) for d in ev] == [(1.5, 6.0, 2, 1), (6.0, 9.0, 1, 1)]
    gun = next(d for d in res.decisions if d.threat == "gunshot")
    assert gun.alert and gun.alerting_windows == 2 and "2 window(s) >= alert threshold 0.80" in gun.reason


def test_confirmation_rule_holds_back_a_single_window(tiny_card: ModelCard) -> None:
    from dataclasses import replace

    rules = dict(tiny_card.threats)
    rules["gunshot"] = replace(rules["gunshot"], min_windows=3)
    card = replace(tiny_card, threats=rules)
    names = tuple(card.threats)
    det = Detector(card, names)
    row = [0.0] * 5
    row[names.index("gunshot")] = 0.99
    det.add(_batch(card, [0.0], [row]))
    gun = next(d for d in det.finish().decisions if d.threat == "gunshot")
    assert not gun.alert and gun.reason == "held: 1 window(s) >= 0.80, rule needs 3"


def test_decisions_carry_the_quiet_operating_point_and_eval_can_apply_it(tiny_card: ModelCard) -> None:
    from dataclasses import replace

    from sentinela.domain.card import at_operating_point

    rules = dict(tiny_card.threats)
    rules["gunshot"] = replace(rules["gunshot"], quiet=0.97)
    card = replace(tiny_card, threats=rules)
    names = tuple(card.threats)
    row = [0.0] * 5
    row[names.index("gunshot")] = 0.9
    det = Detector(card, names)
    det.add(_batch(card, [0.0], [row]))
    gun = next(d for d in det.finish().decisions if d.threat == "gunshot")
    # classify alerts at the balanced threshold and hands the quiet one on (the alert item carries it)
    assert gun.alert and gun.threshold == 0.8 and gun.quiet_threshold == 0.97
    quiet = at_operating_point(card, "quiet")
    assert quiet.threats["gunshot"].alert == 0.97 and quiet.threats["dog"] == card.threats["dog"]
    det = Detector(quiet, names)
    det.add(_batch(quiet, [0.0], [row]))
    assert not next(d for d in det.finish().decisions if d.threat == "gunshot").alert


def test_tiny_model_hears_what_the_tests_generate(tiny: BirdNetOnnx) -> None:
    out = classify_source(encode(impulse()), tiny)
    assert [a.threat for a in out.result.alerts] == ["gunshot"]
    out = classify_source(encode(tone()), tiny)
    assert [a.threat for a in out.result.alerts] == ["chainsaw"]
    assert any(d.kind == "species" for d in out.result.detections)
    out = classify_source(encode(noise(), SR), tiny)
    assert out.result.alerts == [] and not [d for d in out.result.detections if d.threat]
