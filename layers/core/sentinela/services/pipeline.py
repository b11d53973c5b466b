"""One S3 object through classify: key check, size check, decode, model, DynamoDB, object tags.

Every way a clip can fail ends as a clip record with a status and a reason, and a tag on the object,
which stays in the bucket. Anything unexpected (a cloud error, a bug) raises, so that the platform
retries; the last attempt (``max_attempts``: 1 + the template's MaximumRetryAttempts) first records the
clip ``failed`` with the error and tags it, then raises so that the event is dead-lettered for replay.
No clip is left ``processing``, unless even that record cannot be written (then the dead letter is it).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from sentinela.adapters.audio import AudioError
from sentinela.adapters.metrics import MetricSink, NullMetrics, add_dimensioned_metric
from sentinela.domain import clock
from sentinela.domain.alert import Alert
from sentinela.domain.detect import AlertDecision
from sentinela.domain.keys import BadKey, ClipRef, clip_id_for, decode_event_key, parse_key
from sentinela.domain.phone import mask_numbers
from sentinela.domain.policy import class_traits
from sentinela.domain.repositories import ClipsAndDevices
from sentinela.domain.scoring import ThreatModel
from sentinela.services.classify import classify_source

_TAG_SAFE = re.compile(r"[^A-Za-z0-9 +\-=._:/@]")
# Processed, but worth a look: recorded on the clip, tagged on the object, counted as ClipQuality_<flag>.
QUALITY_FLAGS = ("silent", "dc_offset", "clipped", "truncated", "no_audible_band")


def alert_for(ref: ClipRef, decision: AlertDecision, model_id: str, duration_s: float) -> Alert:
    """The alert a clip's decision makes: what classify writes and the stream carries to notify."""
    return Alert(clip_id=ref.clip_id, threat=decision.threat, confidence=decision.confidence,
                 site_id=str(ref.site_id), device_id=ref.device_id, recorded_at=ref.recorded_at,
                 threshold=decision.threshold, quiet_threshold=decision.quiet_threshold,
                 alerting_windows=decision.alerting_windows, first_s=decision.first_s, reason=decision.reason,
                 bucket=ref.bucket, key=ref.key, version_id=ref.version_id, model_id=model_id,
                 duration_s=duration_s, created_at=clock.stamp())


@dataclass
class Outcome:
    clip_id: str
    status: str  # processed | rejected | missing (failed: recorded, then raised)
    reason: str | None = None
    alerts: list[str] = field(default_factory=list)
    detections: int = 0
    duration_s: float = 0.0
    # Each threat class's decision (alert or not, and why): logged, so "why did this clip not alert" is
    # answered from the logs (the saved Logs Insights query) as well as from the clip record.
    decisions: list[dict[str, Any]] = field(default_factory=list)


# How long before the time limit the last attempt records the clip failed (a timeout runs no handler).
TIMEOUT_MARGIN_S = 10.0


class ClassifyService:
    def __init__(self, store: ClipsAndDevices, s3: Any, model: ThreatModel, *, max_bytes: int, max_seconds: float,
                 batch_size: int = 8, metrics: MetricSink | None = None, max_attempts: int = 3) -> None:
        self.store, self.s3, self.model = store, s3, model
        self.max_bytes, self.max_seconds, self.batch_size = max_bytes, max_seconds, batch_size
        self.metrics: MetricSink = metrics or NullMetrics()
        self.max_attempts = max_attempts
        # The watchdog's "failed" and the attempt's own final record and tag never interleave.
        self._final = threading.Lock()
        self._started = time.monotonic()

    def handle(self, bucket: str, raw_key: str, version_id: str | None, size: int | None,
               remaining_s: Callable[[], float] | None = None) -> Outcome:
        """``remaining_s``: seconds left before the platform stops the invocation (Lambda's context)."""
        self._started = time.monotonic()
        key = decode_event_key(raw_key)
        clip_id = clip_id_for(key, version_id)
        self.metrics.add_metric("ClipsReceived", "Count", 1)
        try:
            ck = parse_key(key)
        except BadKey as exc:
            ref = ClipRef(bucket, key, version_id, clip_id)
            return self._reject(ref, f"bad key: {exc}")
        ref = ClipRef(bucket, key, version_id, clip_id, ck.site_id, ck.device_id, ck.recorded_iso)
        self._seen(ck.site_id, ck.device_id, key)
        if size is not None and size > self.max_bytes:
            return self._reject(ref, f"object is {size / 1e6:.1f} MB, over the {self.max_bytes / 1e6:.0f} MB cap")
        attempt = self.store.mark_processing(ref, clock.stamp())
        watchdog = self._watchdog(ref, attempt, remaining_s)
        try:
            return self._classify(ref, ck.ext, version_id, attempt)
        except Exception as exc:
            error = mask_numbers(f"{type(exc).__name__}: {exc}")[:300]
            if attempt < self.max_attempts:
                self._note(ref, error, attempt)
                raise
            reason = f"failed after {attempt} attempt(s): {error}"
            with self._final:
                try:
                    self.store.mark_rejected(ref, reason, {"status": "failed", "attempts": attempt})
                except ClientError:  # DynamoDB is what fails: the dead letter (and the tag) carry the reason
                    self.metrics.add_metric("ClipStatusUnrecorded", "Count", 1)
                self._tag(ref, "failed", reason)
            self.metrics.add_metric("ClipsFailed", "Count", 1)
            raise  # still an error: the event goes to ClassifyDLQ, from where it can be replayed
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def _watchdog(self, ref: ClipRef, attempt: int, remaining_s: Callable[[], float] | None) -> threading.Timer | None:
        """On the last attempt, a timer that records the clip ``failed`` shortly before the time limit: a
        timeout stops the process and no ``except`` runs. Conditional on the clip still being
        ``processing``, so a clip that finishes meanwhile is recorded ``processed`` all the same."""
        if attempt < self.max_attempts or remaining_s is None:
            return None
        left = remaining_s()
        limit = left + (time.monotonic() - self._started)

        def mark() -> None:
            reason = (f"failed after {attempt} attempt(s): still running {TIMEOUT_MARGIN_S:g} s before the "
                      f"invocation's time limit (about {limit:.0f} s); a longer clip needs a longer Timeout")
            with self._final, contextlib.suppress(ClientError):  # else the dead letter carries the event
                if self.store.mark_failed_if_processing(ref, reason, attempt):
                    self._tag(ref, "failed", reason)
                    self.metrics.add_metric("ClipsFailed", "Count", 1)

        timer = threading.Timer(max(left - TIMEOUT_MARGIN_S, 0.0), mark)
        timer.daemon = True
        timer.start()
        return timer

    def _note(self, ref: ClipRef, error: str, attempt: int) -> None:
        with contextlib.suppress(ClientError):  # the retry matters more than the note
            self.store.note_clip_error(ref.clip_id, error, attempt)

    def _classify(self, ref: ClipRef, key_ext: str, version_id: str | None, attempt: int) -> Outcome:
        bucket, key, clip_id = ref.bucket, ref.key, ref.clip_id
        t0 = time.perf_counter()
        with tempfile.NamedTemporaryFile(prefix="clip-", suffix="." + key_ext) as tmp:
            try:
                extra = {"VersionId": version_id} if version_id and version_id != "null" else {}
                self.s3.download_fileobj(bucket, key, tmp, ExtraArgs=extra or None)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("404", "NoSuchKey", "NoSuchVersion"):
                    self.store.mark_rejected(ref, "object was deleted before it could be processed",
                                             {"status": "missing"})
                    return Outcome(clip_id, "missing", "object deleted")
                raise
            tmp.flush()
            try:
                out = classify_source(tmp.name, self.model, max_seconds=self.max_seconds,
                                      batch_size=self.batch_size)
            except AudioError as exc:
                return self._reject(ref, exc.reason)
        model_id = self.model.model_id
        n = self.store.write_detections(clip_id, out.result.detections, model_id)
        alerts = []
        for decision in out.result.alerts:
            self.store.put_alert(alert_for(ref, decision, model_id, out.info.duration_s))
            alerts.append(decision.threat)
            self.metrics.add_metric(f"Alerts_{decision.threat}", "Count", 1)
        decisions = [{"threat": d.threat, "alert": d.alert, "confidence": d.confidence,
                      "alerting_windows": d.alerting_windows, "threshold": d.threshold, "reason": d.reason}
                     for d in out.result.decisions]
        notes = list(out.flags)
        if out.info.ext != key_ext:
            notes.append(f"content_is_{out.info.ext}")
        with self._final:
            self.store.mark_processed(ref, {
                "duration_s": out.info.duration_s, "sample_rate": out.info.sample_rate,
                "channels": out.info.channels, "format": out.info.format, "subtype": out.info.subtype,
                "model_id": model_id, "windows": out.result.windows, "detections": n,
                "threat_detections": sum(1 for d in out.result.detections if d.threat),
                "max_scores": out.result.max_scores, "alerts": alerts, "flags": notes,
                "decisions": decisions,
                "peak": out.peak, "rms": out.rms, "processing_ms": round((time.perf_counter() - t0) * 1000),
                "attempts": attempt,
            })
            quality = [f for f in notes if f in QUALITY_FLAGS]
            self._tag(ref, "processed", None, retention=self._retention(alerts), quality=quality)
        for flag in quality:
            self.metrics.add_metric(f"ClipQuality_{flag}", "Count", 1)
        self.metrics.add_metric("ClipsProcessed", "Count", 1)
        # Which model (base + head) is deciding now: the dashboard's "model in use" widget.
        add_dimensioned_metric(self.metrics, "ClipsByModel", "Count", 1, {"model_id": model_id})
        self.metrics.add_metric("AudioSeconds", "Seconds", out.info.duration_s)
        self.metrics.add_metric("ProcessingLatency", "Milliseconds", (time.perf_counter() - t0) * 1000)
        for d in out.result.detections:
            if d.threat:
                self.metrics.add_metric(f"Detections_{d.label}", "Count", 1)
        return Outcome(clip_id, "processed", None, alerts, n, out.info.duration_s, decisions)

    def _reject(self, ref: ClipRef, reason: str) -> Outcome:
        self.store.mark_rejected(ref, reason)
        self._tag(ref, "rejected", reason)
        self.metrics.add_metric("ClipsRejected", "Count", 1)
        return Outcome(ref.clip_id, "rejected", reason)

    def _seen(self, site_id: str, device_id: str, key: str) -> None:
        """The device's last upload, for the silence alarm. Any upload with a valid key counts, broken or
        not: a recorder sending broken files is not silent. Never costs the clip its processing."""
        try:
            self.store.mark_device_seen(site_id, device_id, clock.stamp(), key)
        except ClientError:
            self.metrics.add_metric("DeviceSeenFailed", "Count", 1)

    @staticmethod
    def _retention(alerts: list[str]) -> str | None:
        """The retention tag of the first alerted class that has one (the policy's ``retention``:
        human_voice's clips are kept for less time); the policy knows one tag, so they never differ."""
        return next((r for r in (class_traits(t).retention for t in alerts) if r), None)

    def _tag(self, ref: ClipRef, status: str, reason: str | None, retention: str | None = None,
             quality: list[str] | None = None) -> None:
        """Tags let ops find a clip's fate from the bucket itself; a failed tag never fails the clip."""
        tags = [{"Key": "sentinela-status", "Value": status}]
        if reason:
            tags.append({"Key": "sentinela-reason", "Value": _TAG_SAFE.sub("_", reason)[:256]})
        if retention:
            tags.append({"Key": "sentinela-retention", "Value": retention})
        if quality:
            tags.append({"Key": "sentinela-quality", "Value": " ".join(quality)})
        kw: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key, "Tagging": {"TagSet": tags}}
        if ref.version_id and ref.version_id != "null":
            kw["VersionId"] = ref.version_id
        try:
            self.s3.put_object_tagging(**kw)
        except ClientError:
            self.metrics.add_metric("TaggingFailed", "Count", 1)
