"""`sentinela replay` and `sentinela status`: what ops do with dead letters, and what they look at first.

Both work against a deployed stack (``--stack NAME``: queue URLs, function and table names from the stack's
outputs) and, in-process, against the embedded local stack (:func:`local_replayer`, :func:`local_status`;
``sentinela demo`` prints the status at its end).

Replay: ClassifyDLQ messages are Lambda's OnFailure records of the async S3 invocation; their
``requestPayload`` is the original S3 event, re-invoked unchanged (idempotency keys on bucket, key,
version and sequencer, so a clip that did get through is not processed twice). NotifyDLQ messages are
the stream's OnFailure records: on AWS they name the shard and sequence range (the records are read back
from the stream, which keeps them 24 h); the local stack also carries the records. They are re-delivered
to notify as a Lambda batch; sends are claimed per (incident|alert, ranger, step), so nobody is texted
twice. A message is deleted only after its replay succeeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote_plus

QUEUES = ("ClassifyDLQ", "NotifyDLQ")
# classify's 3 attempts (300 s each) with Lambda's retry delays between them are over within ~20 min: a clip
# still "processing" after this was killed mid-way (out of memory) or could not record its end (DynamoDB
# refusing every write); its event is in ClassifyDLQ, and `sentinela replay` runs it again.
STUCK_AFTER = dt.timedelta(minutes=30)
ALERT_FILTER_EVENT = "INSERT"


class ReplayError(Exception):
    """A replay that did not succeed; the message stays in its queue."""


@dataclass
class Replayed:
    queue: str
    message_id: str
    what: str
    error_before: str | None
    status: str  # listed | replayed | failed
    error: str | None = None


@dataclass
class Replayer:
    sqs: Any
    queue_urls: dict[str, str]
    invoke_classify: Callable[[dict[str, Any]], None]
    deliver_notify: Callable[[list[dict[str, Any]]], None]
    read_stream: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    visibility_s: int = 60
    results: list[Replayed] = field(default_factory=list)

    def run(self, queues: tuple[str, ...] = QUEUES, dry_run: bool = False) -> list[Replayed]:
        for q in queues:
            self._drain(q, dry_run)
        return self.results

    def _drain(self, queue: str, dry_run: bool) -> None:
        url = self.queue_urls[queue]
        held: list[str] = []  # receipt handles to make visible again (listed or failed)
        seen: set[str] = set()
        while True:
            msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=self.visibility_s,
                                            MessageAttributeNames=["All"]).get("Messages", [])
            fresh = [m for m in msgs if m["MessageId"] not in seen]
            if not fresh:
                held += [m["ReceiptHandle"] for m in msgs]
                break
            for m in fresh:
                seen.add(m["MessageId"])
                item = self._one(queue, m, dry_run)
                self.results.append(item)
                if item.status == "replayed":
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                else:
                    held.append(m["ReceiptHandle"])
        for rh in held:
            self.sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=rh, VisibilityTimeout=0)

    def _one(self, queue: str, m: dict[str, Any], dry_run: bool) -> Replayed:
        try:
            body = json.loads(m["Body"])
        except ValueError:
            return Replayed(queue, m["MessageId"], "(not JSON)", None, "failed", "message body is not JSON")
        before = (body.get("responseContext") or {}).get("functionError") or \
            (body.get("requestContext") or {}).get("condition")
        try:
            if queue == "ClassifyDLQ":
                event = body.get("requestPayload")
                if not isinstance(event, dict) or not event.get("Records"):
                    raise ReplayError("no requestPayload with Records: not a Lambda OnFailure record")
                keys = [unquote_plus(r["s3"]["object"]["key"]) for r in event["Records"]]
                what = "classify " + ", ".join(keys)
                if not dry_run:
                    self.invoke_classify(event)
            else:
                records = body.get("records")
                if records is None:
                    if self.read_stream is None:
                        raise ReplayError("no records in the message and no stream reader")
                    records = self.read_stream(body)
                records = [r for r in records if _is_alert_insert(r)]
                clips = sorted({str(_image(r).get("clip_id", {}).get("S", "?")) for r in records})
                what = f"notify {len(records)} alert record(s): " + ", ".join(clips)
                if not dry_run and records:
                    self.deliver_notify(records)
        except Exception as exc:  # a replay error is reported and the message kept, never a traceback
            return Replayed(queue, m["MessageId"], locals().get("what", "?"), before, "failed",
                            f"{type(exc).__name__}: {exc}")
        return Replayed(queue, m["MessageId"], what, before, "listed" if dry_run else "replayed")


def _image(rec: dict[str, Any]) -> dict[str, Any]:
    img: dict[str, Any] = (rec.get("dynamodb") or {}).get("NewImage") or {}
    return img


def _is_alert_insert(rec: dict[str, Any]) -> bool:
    """The template's FilterCriteria, applied again: a stream range also holds records notify never saw."""
    return rec.get("eventName") == ALERT_FILTER_EVENT and _image(rec).get("alert", {}).get("BOOL") is True


# --- the local stack -------------------------------------------------------------------------------
def local_replayer(stack: Any) -> Replayer:
    from sentinela_tools.local.stack import FakeContext

    def classify(event: dict[str, Any]) -> None:
        stack._complete_s3_event(event)
        ok, err = stack.invoke_classify(event)
        if not ok:
            raise ReplayError(err or "classify failed")

    def notify(records: list[dict[str, Any]]) -> None:
        resp = stack.notify.handler({"Records": records}, FakeContext("notify", 60)) or {}
        if resp.get("batchItemFailures"):
            raise ReplayError(f"{len(resp['batchItemFailures'])} record(s) failed again")

    return Replayer(stack.client("sqs"), {q: stack.names[q] for q in QUEUES}, classify, notify, visibility_s=30)


# --- a deployed stack ------------------------------------------------------------------------------
def stack_outputs(name: str, cfn: Any = None) -> dict[str, str]:
    import boto3

    cfn = cfn or boto3.client("cloudformation")
    stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    return {o["OutputKey"]: str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}


def deployed_replayer(outputs: dict[str, str], session: Any = None) -> Replayer:
    import boto3

    session = session or boto3.session.Session()
    lam, streams = session.client("lambda"), session.client("dynamodbstreams")

    def classify(event: dict[str, Any]) -> None:
        # Asynchronous, as S3 invokes it: retries and the DLQ apply again if it fails again.
        res = lam.invoke(FunctionName=outputs["ClassifyFunctionName"], InvocationType="Event",
                         Payload=json.dumps(event).encode())
        if res.get("StatusCode") != 202:
            raise ReplayError(f"lambda invoke answered {res.get('StatusCode')}")

    def notify(records: list[dict[str, Any]]) -> None:
        res = lam.invoke(FunctionName=outputs["NotifyFunctionName"], InvocationType="RequestResponse",
                         Payload=json.dumps({"Records": records}).encode())
        payload = json.loads(res["Payload"].read() or b"{}")
        if res.get("FunctionError"):
            raise ReplayError(f"notify failed: {payload.get('errorMessage', res['FunctionError'])}")
        if (payload or {}).get("batchItemFailures"):
            raise ReplayError(f"{len(payload['batchItemFailures'])} record(s) failed again")

    def read_stream(body: dict[str, Any]) -> list[dict[str, Any]]:
        info = body.get("DDBStreamBatchInfo") or {}
        arn, shard = info.get("streamArn"), info.get("shardId")
        start, end = info.get("startSequenceNumber"), info.get("endSequenceNumber")
        if not (arn and shard and start and end):
            raise ReplayError("DDBStreamBatchInfo lacks streamArn/shardId/sequence numbers")
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER",
                                        SequenceNumber=start)["ShardIterator"]
        out: list[dict[str, Any]] = []
        while it:
            page = streams.get_records(ShardIterator=it, Limit=1000)
            for r in page["Records"]:
                if int(r["dynamodb"]["SequenceNumber"]) > int(end):
                    return out
                out.append(_lambda_record(r, arn))
            if not page["Records"]:
                break
            it = page.get("NextShardIterator")
        return out

    return Replayer(session.client("sqs"), {"ClassifyDLQ": outputs["ClassifyDLQUrl"],
                                            "NotifyDLQ": outputs["NotifyDLQUrl"]}, classify, notify, read_stream)


def _lambda_record(r: dict[str, Any], arn: str) -> dict[str, Any]:
    """A boto3 stream record, shaped as Lambda delivers it (epoch seconds, eventSourceARN)."""
    rec: dict[str, Any] = json.loads(json.dumps(r, default=str))
    ts = r["dynamodb"].get("ApproximateCreationDateTime")
    if isinstance(ts, dt.datetime):
        rec["dynamodb"]["ApproximateCreationDateTime"] = int(ts.timestamp())
    rec["eventSourceARN"] = arn
    return rec


# --- status ----------------------------------------------------------------------------------------
def status_report(store: Any, sqs: Any, queue_urls: dict[str, str], now: dt.datetime | None = None) -> dict[str, Any]:
    """Per site: last upload per device, clips by status in the last 24 h (by recording time), open
    incidents; and the dead letters waiting in each queue."""
    now = now or dt.datetime.now(dt.UTC)
    since = (now - dt.timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sites = []
    for site in sorted(store.list_sites(), key=lambda s: s["site_id"]):
        sid = site["site_id"]
        items = store.site_items(sid)
        devices = sorted(({"device_id": i["device_id"], "last_upload_at": i.get("last_upload_at"),
                           "uploads": i.get("uploads", 0), "silent_since": i.get("silence_episode")}
                          for i in items if i.get("type") == "device_seen"), key=lambda d: d["device_id"])
        recent = store.clips_since(sid, since)
        clips = Counter(c.get("status", "?") for c in recent)
        stale = (now - STUCK_AFTER).strftime("%Y-%m-%dT%H:%M:%S")
        stuck = sorted((c for c in recent if c.get("status") == "processing"
                        and str(c.get("updated_at") or c.get("received_at") or "") < stale),
                       key=lambda c: str(c.get("updated_at") or ""))
        incidents = []
        for slot in (i for i in items if i.get("type") == "incident_slot" and i.get("incident_id")):
            inc = store.incident_item(slot["incident_id"]) or {}
            if inc.get("state", "open") not in ("closed", "resolved", "false_alarm"):
                incidents.append({k: inc.get(k, slot.get(k)) for k in
                                  ("incident_id", "state", "threat", "opened_at", "group")})
        sites.append({"site_id": sid, "name": site.get("name", sid), "devices": devices,
                      "clips_24h": dict(sorted(clips.items())), "open_incidents": incidents,
                      "stuck_processing": [{"clip_id": c.get("clip_id"), "key": c.get("key"),
                                            "since": c.get("updated_at") or c.get("received_at"),
                                            "attempts": c.get("attempts")} for c in stuck]})
    bad_keys = Counter(c.get("status", "?") for c in store.unsited_clips(since))
    dead = {}
    for q, url in queue_urls.items():
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                       "ApproximateNumberOfMessagesNotVisible"])
        a = attrs["Attributes"]
        dead[q] = int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])
    return {"at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "sites": sites, "clips_24h_without_site": dict(bad_keys),
            "dead_letters": dead}


def render_status(rep: dict[str, Any]) -> str:
    lines = [f"status at {rep['at']}"]
    for s in rep["sites"]:
        clips = ", ".join(f"{k} {v}" for k, v in s["clips_24h"].items()) or "none"
        lines.append(f"site {s['site_id']} ({s['name']}): clips in the last 24 h: {clips}")
        for d in s["devices"]:
            silent = f"  SILENT since {d['silent_since']}" if d["silent_since"] else ""
            lines.append(f"  device {d['device_id']:<12} last upload {d['last_upload_at']}  ({d['uploads']} uploads)"
                         f"{silent}")
        if not s["devices"]:
            lines.append("  no uploads seen")
        for c in s.get("stuck_processing", [])[:10]:
            lines.append(f"  clip {c['clip_id']} STUCK processing since {c['since']} ({c['attempts']} attempt(s)): "
                         "its event is in ClassifyDLQ (sentinela replay)")
        if len(s.get("stuck_processing", [])) > 10:
            lines.append(f"  ... and {len(s['stuck_processing']) - 10} more clips stuck processing")
        for i in s["open_incidents"]:
            lines.append(f"  open incident {i['incident_id']}: {i.get('threat')} {i.get('state')} "
                         f"since {i.get('opened_at')}")
    if rep["clips_24h_without_site"]:
        lines.append("clips with keys outside the scheme (24 h): "
                     + ", ".join(f"{k} {v}" for k, v in rep["clips_24h_without_site"].items()))
    lines.append("dead letters waiting: " + ", ".join(f"{q} {n}" for q, n in rep["dead_letters"].items())
                 + ("  (sentinela replay)" if any(rep["dead_letters"].values()) else ""))
    return "\n".join(lines)


def local_status(stack: Any, now: dt.datetime | None = None) -> dict[str, Any]:
    from sentinela.adapters.store import Store

    return status_report(Store(stack.names["DataTable"]), stack.client("sqs"),
                         {q: stack.names[q] for q in QUEUES}, now)


# --- the commands ----------------------------------------------------------------------------------
def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _outputs(args: argparse.Namespace) -> dict[str, str] | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return stack_outputs(args.stack)
    except (BotoCoreError, ClientError) as exc:
        _err(f"cannot read stack {args.stack}: {exc}")
        return None


def cmd_replay(args: argparse.Namespace) -> int:
    outs = _outputs(args)
    if outs is None:
        return 2
    missing = [k for k in ("ClassifyDLQUrl", "NotifyDLQUrl", "ClassifyFunctionName", "NotifyFunctionName")
               if k not in outs]
    if missing:
        return _err(f"stack {args.stack} has no output(s) {', '.join(missing)}")
    queues = tuple(q for q in QUEUES if args.queue in (None, q))
    results = deployed_replayer(outs).run(queues, dry_run=args.dry_run)
    print_replay(results, args.json)
    return 1 if any(r.status == "failed" for r in results) else 0


def print_replay(results: list[Replayed], as_json: bool = False) -> None:
    if as_json:
        from sentinela_tools.output import emit_json

        emit_json([asdict(r) for r in results])
        return
    for r in results:
        print(f"{r.status:8} {r.queue} {r.message_id}: {r.what}"
              + (f"  (failed before: {r.error_before})" if r.error_before else "")
              + (f"  error: {r.error}" if r.error else ""))
    n = Counter(r.status for r in results)
    print(f"{len(results)} dead letter(s): " + (", ".join(f"{k} {v}" for k, v in sorted(n.items())) or "none"))


def cmd_status(args: argparse.Namespace) -> int:
    outs = _outputs(args)
    if outs is None:
        return 2
    import boto3

    from sentinela.adapters.store import Store

    missing = [k for k in ("DataTableName", "ClassifyDLQUrl", "NotifyDLQUrl") if k not in outs]
    if missing:
        return _err(f"stack {args.stack} has no output(s) {', '.join(missing)}")
    rep = status_report(Store(outs["DataTableName"]), boto3.client("sqs"),
                        {"ClassifyDLQ": outs["ClassifyDLQUrl"], "NotifyDLQ": outs["NotifyDLQUrl"]})
    if args.json:
        from sentinela_tools.output import emit_json

        emit_json(rep)
    else:
        print(render_status(rep))
    return 0


def register(sub: Any) -> None:
    r = sub.add_parser("replay", help="replay dead letters (ClassifyDLQ, NotifyDLQ) of a deployed stack")
    r.add_argument("--stack", required=True, help="the deployed stack's name")
    r.add_argument("--queue", choices=QUEUES, help="only this queue (default: both)")
    r.add_argument("--dry-run", action="store_true", help="list what would be replayed; change nothing")
    r.add_argument("--json", action="store_true", help="print JSON")
    r.set_defaults(fn=cmd_replay)
    s = sub.add_parser("status", help="per site: devices' last uploads, clips by status (24 h), open incidents, "
                                      "dead letters")
    s.add_argument("--stack", required=True, help="the deployed stack's name (the demo prints the local status)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_status)
