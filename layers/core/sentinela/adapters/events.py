"""The shapes of the events the handlers accept, checked before anything acts on them.

Lambda hands a function whatever it was invoked with: the event source it is wired to, but also a test
event from the console, a replay, an S3 test event, a record of another source, or junk from a caller
who is not who they claim. Each check here either returns the parts a handler needs, typed, or says
why the event is not one of them; a handler turns that into a clean rejection (an HTTP 4xx, an
ignored record with its reason in the log), never a traceback or an HTTP 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Twilio's webhooks are a few hundred bytes (an SMS is at most 1,600 characters); a presign request is
# well under 1 KiB. Anything far larger is not one of them and is refused before it is decoded.
MAX_FORM_BYTES = 32 * 1024
MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 16
MAX_FORM_FIELDS = 100


class BadRequest(Exception):
    """An HTTP request refused before it was acted on: ``status`` (400/413), ``code``, ``reason``."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


@dataclass(frozen=True)
class HttpRequest:
    """What a handler needs of an API Gateway HTTP API (payload format 2.0) event."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    source_ip: str
    domain: str


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def http_v2(event: Any, max_body: int) -> HttpRequest:
    """An HTTP API payload-2.0 event, or :class:`BadRequest`. The body is size-checked before decoding."""
    if not isinstance(event, Mapping) or event.get("version") != "2.0" or not isinstance(event.get("rawPath"), str):
        raise BadRequest(400, "bad_request", "not an HTTP API (payload format 2.0) request")
    ctx = event.get("requestContext")
    http = ctx.get("http") if isinstance(ctx, Mapping) else None
    if not isinstance(http, Mapping):
        raise BadRequest(400, "bad_request", "not an HTTP API (payload format 2.0) request")
    raw_headers = event.get("headers")
    headers = ({str(k).lower(): v for k, v in raw_headers.items() if isinstance(v, str)}
               if isinstance(raw_headers, Mapping) else {})
    raw = event.get("body")
    if raw is not None and not isinstance(raw, str):
        raise BadRequest(400, "bad_request", "the request body is not text")
    raw = raw or ""
    b64 = event.get("isBase64Encoded") is True
    # base64 is 4 characters for 3 bytes: the limit applies to what the caller sent, before any decoding.
    if len(raw) > (max_body * 4 // 3 + 4 if b64 else max_body):
        raise BadRequest(413, "too_large", f"the request body is over {max_body} bytes")
    if b64:
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, "bad_request", "the request body is not valid base64") from None
    else:
        body = raw.encode("utf-8", "surrogatepass")
    if len(body) > max_body:
        raise BadRequest(413, "too_large", f"the request body is over {max_body} bytes")
    return HttpRequest(method=_str(http.get("method")).upper(), path=event["rawPath"],
                       query=_str(event.get("rawQueryString")), headers=headers, body=body,
                       source_ip=_str(http.get("sourceIp")) or "unknown",
                       domain=_str(ctx.get("domainName")) if isinstance(ctx, Mapping) else "")


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "bad_request", f"the request body is not UTF-8 (byte 0x{body[exc.start]:02X} "
                         f"at {exc.start})") from None


def form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (Twilio's webhooks)."""
    try:
        pairs = urllib.parse.parse_qsl(_text(body), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS,
                                       errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(400, "bad_request", "a form field is not UTF-8 once percent-decoded") from None
    except ValueError:
        raise BadRequest(400, "bad_request", f"the form has more than {MAX_FORM_FIELDS} fields") from None
    return dict(pairs)


def _depth(value: Any) -> int:
    """Nesting depth, without recursion (a hostile body must not exhaust the stack here either)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def json_body(body: bytes) -> Any:
    """A JSON body of at most :data:`MAX_JSON_DEPTH` levels."""
    text = _text(body)
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequest(400, "bad_request", f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        raise BadRequest(400, "bad_request", "the body must be JSON") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(400, "bad_request", f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


# --- S3 notifications (classify) ---------------------------------------------------------------------
def s3_created_records(event: Any, bucket: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The S3 ``ObjectCreated:*`` records of ``bucket`` in a notification event, and why each other part of
    the event was ignored. Nothing else (deletions, test events, other buckets, other sources) is a clip."""
    if not isinstance(event, Mapping):
        return [], [f"not an S3 notification (a {type(event).__name__})"]
    if event.get("Event") == "s3:TestEvent":
        return [], ["s3:TestEvent (sent by S3 when a notification is configured)"]
    records = event.get("Records")
    if not isinstance(records, list):
        what = event.get("detail-type") or event.get("source") or "no Records list"
        return [], [f"not an S3 notification ({what})"]
    if not bucket:
        return [], ["CLIPS_BUCKET is not set: no record can be checked against the clips bucket"]
    ok: list[dict[str, Any]] = []
    ignored: list[str] = []
    for i, rec in enumerate(records):
        why = _s3_record_problem(rec, bucket)
        if why:
            ignored.append(f"record {i}: {why}")
        else:
            ok.append(rec)
    return ok, ignored


def _s3_record_problem(rec: Any, bucket: str) -> str | None:
    if not isinstance(rec, Mapping):
        return "not an object"
    if rec.get("eventSource") != "aws:s3":
        return f"event source {rec.get('eventSource')!r}, not aws:s3"
    name = _str(rec.get("eventName"))
    if not name.startswith("ObjectCreated:"):
        return f"event {name or '(none)'} is not ObjectCreated:*"
    s3 = rec.get("s3")
    b = s3.get("bucket") if isinstance(s3, Mapping) else None
    obj = s3.get("object") if isinstance(s3, Mapping) else None
    if not isinstance(b, Mapping) or not isinstance(obj, Mapping):
        return "no s3.bucket / s3.object"
    if b.get("name") != bucket:
        return f"bucket {b.get('name')!r} is not the clips bucket"
    if not isinstance(obj.get("key"), str) or not obj["key"]:
        return "no object key"
    size = obj.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return f"object size {size!r} is not a byte count"
    for f in ("versionId", "sequencer"):
        if obj.get(f) is not None and not isinstance(obj.get(f), str):
            return f"object {f} {obj.get(f)!r} is not a string"
    return None


# --- DynamoDB stream batches (notify) ----------------------------------------------------------------
def stream_records(event: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The DynamoDB stream records of a batch, and why anything else in it was ignored."""
    if not isinstance(event, Mapping) or not isinstance(event.get("Records"), list):
        return [], ["not a DynamoDB stream batch (no Records list)"]
    ok: list[dict[str, Any]] = []
    ignored: list[str] = []
    for i, rec in enumerate(event["Records"]):
        if not isinstance(rec, Mapping) or rec.get("eventSource") != "aws:dynamodb":
            src = rec.get("eventSource") if isinstance(rec, Mapping) else type(rec).__name__
            ignored.append(f"record {i}: {src!r} is not a DynamoDB stream record")
        elif not isinstance(rec.get("dynamodb"), Mapping) or not isinstance(
                rec["dynamodb"].get("SequenceNumber"), str):
            ignored.append(f"record {i}: no dynamodb.SequenceNumber")
        else:
            ok.append(dict(rec))
    return ok, ignored


# --- EventBridge schedules (escalate, silence) ----------------------------------------------------------
def scheduled_time(event: Any) -> datetime:
    """The time of an EventBridge ``Scheduled Event``; ValueError (with the reason) for anything else."""
    if not isinstance(event, Mapping) or event.get("source") != "aws.events" \
            or event.get("detail-type") != "Scheduled Event":
        what = event.get("detail-type") or event.get("source") if isinstance(event, Mapping) else None
        raise ValueError(f"not an EventBridge scheduled event ({what or type(event).__name__})")
    raw = event.get("time")
    if not isinstance(raw, str):
        raise ValueError("scheduled event without a time")
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return when.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"scheduled event time {raw[:40]!r} is not an ISO 8601 UTC time ({exc})") from None
