"""`sentinela labels export` on the local stack: ranger verdicts become a folder `sentinela train` takes."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from sentinela.adapters.store import Store
from sentinela_tools.cli import main
from sentinela_tools.devtools import tiny_model
from sentinela_tools.evaluate import scan_dataset
from sentinela_tools.local.stack import LocalStack
from tests.conftest import encode, impulse

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 29, 14, 0, tzinfo=dt.UTC)


def _at(monkeypatch: pytest.MonkeyPatch, t: dt.datetime) -> None:
    from sentinela.domain import clock

    monkeypatch.setattr(clock, "_pinned", t)  # pinned for this test only: monkeypatch lets it run again


def _incidents(store: Store, sid: str) -> list[dict[str, Any]]:
    return sorted((i for i in store.list_incidents() if i["site_id"] == sid), key=lambda i: i["opened_at"])


def test_labels_export_round_trips_into_train(stack: LocalStack, store: Store, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sid, phone = "lab-a", "+56900000901"
    store.put_site({"site_id": sid, "name": "Sitio lab", "lat": -37.8, "lon": -73.0, "tz": "America/Santiago"})
    store.put_ranger(sid, {"ranger_id": "eva", "name": "Eva", "phone": phone, "lang": "es", "order": 0})
    _at(monkeypatch, T0)
    # rec-1 hears something the ranger calls a false alarm ("2"; a gunshot may ask for it twice)
    stack.upload(encode(impulse()), sid, "rec-1", T0)
    stack.run_until_idle()
    for _ in range(2):
        stack.sms_reply(phone, "2")
    assert _incidents(store, sid)[0]["state"] == "false_alarm"
    # rec-2 hears one the ranger goes to and resolves: a confirmed gunshot
    _at(monkeypatch, T0 + dt.timedelta(minutes=20))
    stack.upload(encode(impulse()), sid, "rec-2", T0 + dt.timedelta(minutes=20))
    stack.run_until_idle()
    stack.sms_reply(phone, "1")
    stack.sms_reply(phone, "3")
    assert [i["state"] for i in _incidents(store, sid)] == ["false_alarm", "resolved"]

    out = tmp_path / "labelled"
    capsys.readouterr()
    assert main(["labels", "export", "--table", stack.names["DataTable"], "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["per_label"] == {"background": 1, "gunshot": 1} and not result["missing"]
    want = {("background", f"{sid}/rec-1"), ("gunshot", f"{sid}/rec-2")}
    rows = list(csv.DictReader((out / "MANIFEST.csv").open(encoding="utf-8")))
    assert {(r["label"], r["source_repo"]) for r in rows} == want
    clips = scan_dataset(out)
    assert {(c.label, c.source) for c in clips} == want
    assert all(c.path.read_bytes()[:4] in (b"RIFF", b"fLaC") for c in clips)  # the audio itself came down

    # ... and `sentinela train` takes the folder (each recorder held out in turn)
    card = tiny_model.build(tmp_path / "model")
    assert main(["train", str(out), "--card", str(card), "--no-cache", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert Path(trained["head"]).is_file()
    report = json.loads((Path(trained["head"]).parent / "training_report.json").read_text())
    assert set(report["cross_source"]["committed"]["per_source"]) == {f"{sid}/rec-1", f"{sid}/rec-2"}
