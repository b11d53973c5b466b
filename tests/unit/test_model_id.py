"""model_id names the base model and the exact head; it is a metric dimension of its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sentinela.adapters.metrics import add_dimensioned_metric
from sentinela.domain.card import load_card

REPO = Path(__file__).resolve().parents[2]


def test_model_id_is_the_base_model_plus_the_heads_hash(tiny_card_path: Path, tmp_path: Path) -> None:
    """The committed head on the tiny base model (the built BirdNET need not be there): the id names both."""
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_card_path.parent, model_dir)
    shutil.copy(REPO / "models" / "threat_head.onnx", model_dir / "threat_head.onnx")
    raw = json.loads((model_dir / tiny_card_path.name).read_text())
    raw["head"] = json.loads((REPO / "models" / "card.json").read_text())["head"]
    (model_dir / "card.json").write_text(json.dumps(raw))
    card = load_card(model_dir / "card.json")
    assert card.head is not None
    sha = hashlib.sha256((REPO / "models" / "threat_head.onnx").read_bytes()).hexdigest()
    assert card.model_id == f"{card.id}+head-{sha[:12]}"


def test_a_card_without_head_is_its_base_id(tiny_card_path: Path) -> None:
    card = load_card(tiny_card_path)
    assert card.head is None and card.model_id == card.id


def test_dimensioned_metric_is_a_record_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    from aws_lambda_powertools import Metrics

    metrics = Metrics(namespace="Sentinela", service="classify")
    add_dimensioned_metric(metrics, "ClipsByModel", "Count", 1, {"model_id": "birdnet+head-abc"})
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    cw = line["_aws"]["CloudWatchMetrics"][0]
    assert cw["Dimensions"] == [["service", "model_id"]] and line["model_id"] == "birdnet+head-abc"
    assert not metrics.metric_set  # the function's own metrics keep their dimensions
