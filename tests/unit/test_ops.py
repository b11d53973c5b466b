"""Issue 6 units: phone numbers masked in free text, silence texts, the replayer's delete-only-after-success
rule (fake SQS), and the WAV header check behind the `truncated` flag."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from sentinela.adapters.audio import _wav_declared_frames
from sentinela.domain.phone import mask_numbers
from sentinela.services.silence import recovery_text, silence_text
from sentinela_tools.ops_cli import Replayer
from tests.conftest import encode, noise


def test_numbers_in_twilio_errors_are_masked() -> None:
    msg = "The 'To' number +56912345678 is not a valid phone number (+1 (500) 555-0006, 56912345678)."
    masked = mask_numbers(msg)
    assert "12345678" not in masked and "555-0006" not in masked and "+569*****678" in masked
    assert mask_numbers("Read timed out at 2026-01-01 (read timeout=10)") == \
        "Read timed out at 2026-01-01 (read timeout=10)"


def test_silence_texts_fit_one_sms_and_name_the_device() -> None:
    site = {"site_id": "s", "name": "Nahuelbuta Norte", "tz": "America/Santiago"}
    last = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    es = silence_text("es", "rec-01", site, last, last + timedelta(hours=3), 600)
    en = silence_text("en", "rec-01", site, last, last + timedelta(hours=3), 600)
    assert "rec-01" in es and "01/03 09:00" in es and "3.0 h" in es and "cada 10 min" in es
    assert "expected every 10 min" in en
    assert "volvio" in recovery_text("es", "rec-01", site, last, last + timedelta(hours=5))
    assert all(len(t) <= 160 for t in (es, en))


class FakeSqs:
    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.msgs = {f"m{i}": json.dumps(b) for i, b in enumerate(bodies)}
        self.invisible: set[str] = set()
        self.deleted: list[str] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        out = [{"MessageId": k, "ReceiptHandle": k, "Body": v} for k, v in self.msgs.items()
               if k not in self.invisible][:10]
        self.invisible |= {m["MessageId"] for m in out}
        return {"Messages": out}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        self.deleted.append(ReceiptHandle)
        del self.msgs[ReceiptHandle]

    def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
        self.invisible.discard(ReceiptHandle)


def _event(key: str) -> dict[str, Any]:
    return {"requestContext": {"condition": "RetriesExhausted"}, "responseContext": {"functionError": "boom"},
            "requestPayload": {"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": key}}}]}}


def test_replayer_deletes_only_what_replayed_and_dry_run_changes_nothing() -> None:
    sqs = FakeSqs([_event("clips/a/r/1.wav"), _event("clips/a/r/2.wav"), {"not": "a lambda record"}])
    calls: list[str] = []

    def classify(event: dict[str, Any]) -> None:
        key = event["Records"][0]["s3"]["object"]["key"]
        calls.append(key)
        if key.endswith("2.wav"):
            raise RuntimeError("still failing")

    def notify(records: list[dict[str, Any]]) -> None:
        raise AssertionError("no notify records here")

    listed = Replayer(sqs, {"ClassifyDLQ": "q"}, classify, notify).run(("ClassifyDLQ",), dry_run=True)
    assert [r.status for r in listed] == ["listed", "listed", "failed"] and calls == [] and not sqs.deleted
    assert not sqs.invisible  # listed messages are visible again at once
    done = Replayer(sqs, {"ClassifyDLQ": "q"}, classify, notify).run(("ClassifyDLQ",))
    assert [r.status for r in done] == ["replayed", "failed", "failed"]
    assert sqs.deleted == ["m0"] and set(sqs.msgs) == {"m1", "m2"}
    assert done[1].error == "RuntimeError: still failing" and done[1].error_before == "boom"


def test_wav_header_promising_more_than_the_file_holds() -> None:
    wav = encode(noise(2.0))
    assert _wav_declared_frames(wav, len(wav)) is None  # complete
    assert _wav_declared_frames(wav[:5000], 5000) == 96000  # cut: the header still says 2 s at 48 kHz
    streaming = wav[:40] + (0xFFFFFFFF).to_bytes(4, "little") + wav[44:5000]
    assert _wav_declared_frames(streaming, 5000) is None  # a streaming writer's "unknown" is not a claim
    assert _wav_declared_frames(np.zeros(10).tobytes(), 80) is None
