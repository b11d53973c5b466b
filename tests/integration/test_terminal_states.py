"""Whatever fails inside classify, no clip is left ``processing``: an exception is injected at each stage on
the local stack (the real handler, the router's retries and its ClassifyDLQ), and each clip ends
``failed`` (reason and attempts on the record, the object tagged, the event dead-lettered for replay),
or ``processed`` where the failure is one classify rides out. The "classify failures" section of
docs/BAD_INPUT.md is this test's output.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError

from sentinela import runtime
from sentinela.adapters.audio import SignalStats
from sentinela.adapters.model import BirdNetOnnx
from sentinela.adapters.store import Store
from sentinela.services.pipeline import TIMEOUT_MARGIN_S
from sentinela_tools.local.stack import LocalStack
from tests.conftest import encode, impulse
from tests.integration.docs_section import check_section

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
SITE = "terminal"


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "Injected")


def _raiser(exc: Exception) -> Callable[..., Any]:
    def boom(*a: Any, **kw: Any) -> Any:
        raise exc
    return boom


def _once(real: Callable[..., Any], exc: Exception) -> Callable[..., Any]:
    calls = {"n": 0}

    def flaky(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(*a, **kw)
    return flaky


# (stage, what is injected, how to inject it with a monkeypatch, the clip's final status)
STAGES: list[tuple[str, str, Callable[[pytest.MonkeyPatch], None], str]] = [
    ("clip record (start)", "DynamoDB InternalServerError",
     lambda m: m.setattr(Store, "mark_processing", _raiser(_client_error("InternalServerError"))), "none"),
    ("download", "S3 SlowDown on every attempt",
     lambda m: m.setattr(runtime.s3(), "download_fileobj", _raiser(_client_error("SlowDown"))), "failed"),
    ("download (once)", "S3 SlowDown on the first attempt only",
     lambda m: m.setattr(runtime.s3(), "download_fileobj", _once(runtime.s3().download_fileobj,
                                                                _client_error("SlowDown"))), "processed"),
    ("decode", "RuntimeError in the decoder",
     lambda m: m.setattr("sentinela.services.pipeline.classify_source",
                         _raiser(RuntimeError("decoder crashed"))), "failed"),
    ("model", "onnxruntime error",
     lambda m: m.setattr(BirdNetOnnx, "run", _raiser(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION"))),
     "failed"),
    ("detections", "DynamoDB ProvisionedThroughputExceededException",
     lambda m: m.setattr(Store, "write_detections",
                         _raiser(_client_error("ProvisionedThroughputExceededException"))), "failed"),
    ("alert items", "ValueError",
     lambda m: m.setattr(Store, "put_alert", _raiser(ValueError("injected"))), "failed"),
    ("clip record (end)", "DynamoDB ValidationException",
     lambda m: m.setattr(Store, "mark_processed", _raiser(_client_error("ValidationException"))), "failed"),
    ("tagging", "S3 AccessDenied",
     lambda m: m.setattr(runtime.s3(), "put_object_tagging", _raiser(_client_error("AccessDenied"))), "processed"),
    ("signal statistics", "an infinite RMS",
     lambda m: m.setattr(SignalStats, "rms", property(lambda self: float("inf"))), "processed"),
]


def test_no_clip_is_left_processing_whatever_fails(stack: LocalStack, store: Store) -> None:
    rows = []
    keys = []
    for i, (stage, what, inject, expected) in enumerate(STAGES):
        with pytest.MonkeyPatch.context() as m:
            runtime.s3()  # the same client the handler uses, so that the patch reaches it
            inject(m)
            key, version = stack.upload(encode(impulse()), SITE, f"st-{i:02d}", T0 + dt.timedelta(minutes=i))
            stack.run_until_idle()
        keys.append(key)
        clips = [c for c in store.scan_all() if c.get("type") == "clip" and c["key"] == key]
        assert len(clips) <= 1
        status = clips[0]["status"] if clips else "none"
        assert status == expected, (stage, clips)
        assert status != "processing"
        reason = clips[0].get("reason", "") if clips else ""
        tags = {t["Key"]: t["Value"] for t in stack.client("s3").get_object_tagging(
            Bucket=stack.names["ClipsBucket"], Key=key, VersionId=version)["TagSet"]}
        if status == "failed":
            assert reason.startswith("failed after 3 attempt(s): ") and clips[0]["attempts"] == 3, clips[0]
            assert tags["sentinela-status"] == "failed" and tags["sentinela-reason"]
        if stage == "signal statistics":
            assert "rms" not in clips[0] and clips[0]["status"] == "processed"  # inf never reaches DynamoDB
        if stage == "download (once)":
            assert clips[0]["attempts"] == 2
        rows.append((stage, what, status if clips else "no record (DynamoDB refused the first write)",
                     reason or (f"tag: {tags.get('sentinela-status', '-')}" if clips else "event in ClassifyDLQ")))
    dead = [unquote_plus(d["requestPayload"]["Records"][0]["s3"]["object"]["key"])
            for d in stack.dead_letters("ClassifyDLQ")]
    for (stage, _, _, expected), key in zip(STAGES, keys, strict=True):
        if expected in ("failed", "none"):
            assert key in dead, (stage, key, dead)  # replayable: nothing is lost
    assert not [c for c in store.scan_all() if c.get("type") == "clip" and c["status"] == "processing"]

    lines = [
        "## Classify failures: an exception at each stage",
        "",
        "Generated by `tests/integration/test_terminal_states.py`: one gunshot clip per stage, the failure "
        "injected there, the real classify handler on the local stack retried as Lambda retries an "
        "asynchronous invocation (3 attempts), then dead-lettered to ClassifyDLQ. No clip is left "
        "`processing`: the last attempt records `failed` with the error and tags the object, and the event "
        "stays in ClassifyDLQ for `sentinela replay`.",
        "",
        "| # | stage | injected | final status | reason / tag |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {stage} | {what} | {status} | {reason.replace('|', chr(92) + '|')} |"
              for i, (stage, what, status, reason) in enumerate(rows, 1)]
    check_section("classify failures", "\n".join(lines))


def test_the_last_attempt_records_failed_before_its_time_limit(stack: LocalStack, store: Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout stops the process: no ``except`` runs. So the last attempt arms a timer that records the
    clip failed shortly before the limit. Here the limit is already that close: the model sees the record
    turn ``failed`` while it runs; the clip, finishing after all, ends ``processed``."""
    key, version = stack.upload(encode(impulse()), SITE, "st-timeout", T0 + dt.timedelta(hours=1))
    real_run = BirdNetOnnx.run
    seen: dict[str, Any] = {}

    def slow_run(self: BirdNetOnnx, *a: Any, **kw: Any) -> Any:
        for _ in range(200):  # wait (bounded) for the watchdog, as a model still running would be overtaken
            (clip,) = [c for c in store.scan_all() if c.get("type") == "clip" and c["key"] == key]
            if clip["status"] != "processing":
                seen.update(clip)
                break
            threading.Event().wait(0.05)
        return real_run(self, *a, **kw)

    monkeypatch.setattr(BirdNetOnnx, "run", slow_run)
    service = runtime.classify_service()
    service.max_attempts = 1  # this is the last attempt
    out = service.handle(stack.names["ClipsBucket"], key, version, None, remaining_s=lambda: TIMEOUT_MARGIN_S)
    assert seen["status"] == "failed" and "before the invocation's time limit" in seen["reason"], seen
    tags = {t["Key"]: t["Value"] for t in stack.client("s3").get_object_tagging(
        Bucket=stack.names["ClipsBucket"], Key=key, VersionId=version)["TagSet"]}
    assert out.status == "processed" and tags["sentinela-status"] == "processed"
    (clip,) = [c for c in store.scan_all() if c.get("type") == "clip" and c["key"] == key]
    assert clip["status"] == "processed" and "reason" not in clip
