"""The embedded local stack: the whole flow on one machine, with the real handlers.

moto's server (in-process, 127.0.0.1, a free port) stands in for S3, DynamoDB + Streams, SQS and
Secrets Manager; its resources are made from ``template.yaml`` itself. What AWS would do between the
resources is done by :class:`LocalStack`'s router: S3 notification -> SQS -> the classify handler with
the S3 event body unchanged (retried, then dead-lettered as Lambda's OnFailure destination would), and a
stream poller that applies the template's FilterCriteria, builds Lambda-shaped batches, calls the notify
handler and redelivers what ``batchItemFailures`` names, then dead-letters after the retry limit.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from sentinela import runtime
from sentinela.domain.keys import make_key
from sentinela_tools.devtools.template_reader import (
    load_template,
    notify_filter_patterns,
    queue_specs,
    s3_event_rules,
    stream_event_settings,
    table_specs,
)
from sentinela_tools.local.http_api import HttpApi
from sentinela_tools.local.twilio_stub import TwilioStub

REPO = Path(__file__).resolve().parents[3]
log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeContext:
    """What a handler reads from Lambda's context object."""

    function_name: str
    timeout_s: float
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _load_handler(name: str) -> ModuleType:
    """Import functions/<name>/app.py, the file Lambda runs, under a unique module name."""
    path = REPO / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"sentinela_fn_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class LocalStack:
    def __init__(self, *, stack_name: str = "sentinela-local", template: Path | None = None,
                 card: Path | None = None, sms_from: str = "+15005550006", quiet: bool = True,
                 escalate_every_s: float = 60.0) -> None:
        self.stack_name = stack_name
        self.template_path = template or REPO / "template.yaml"
        self.card = card
        self.sms_from = sms_from
        self.quiet = quiet
        self.twilio = TwilioStub()
        self.names: dict[str, str] = {}
        self._server: Any = None
        self._lock = threading.RLock()
        self._stream_iters: dict[str, str] = {}  # shard id -> the last sequence number read
        self._stream_pending: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self._bg: threading.Thread | None = None
        self._bg_stop = threading.Event()
        self.invocations = {"classify": 0, "notify": 0}
        # The HTTP API (presign, POST /uploads): real HTTP on 127.0.0.1 in front of the real handler.
        self.http_api = HttpApi({"POST /uploads": self._invoke_presign})
        # Twilio's webhooks (SMS replies, delivery status) -> the sms_reply handler; the escalation sweep
        # runs on a timer in pump(), as the template's rate(1 minute) schedule would run it.
        self.http_api.routes.update({"POST /sms/reply": self._invoke_sms_reply,
                                     "POST /sms/status": self._invoke_sms_reply})
        self.escalate_every_s = escalate_every_s
        self._last_escalate = time.monotonic()
        # The silence check runs on a timer too, on an injectable clock: a test sets ``stack.clock`` to a
        # later time and the next pump() runs the check as EventBridge would at that time.
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
        self.silence_every_s = 900.0
        self._last_silence: dt.datetime | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        from moto.server import ThreadedMotoServer

        for noisy in ("werkzeug", "moto"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        # moto's backends are process-wide and outlive a stopped server: a second stack in the same process
        # (the next test module) must not meet the last one's tables.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"), timeout=10)
        # Powertools keeps its parameter providers (and their boto3 clients, bound to the last endpoint).
        from aws_lambda_powertools.utilities.parameters import base as _pt_parameters

        _pt_parameters.DEFAULT_PROVIDERS.clear()  # type: ignore[attr-defined]
        self.twilio.start()
        self.tpl = load_template(self.template_path)
        self._env_base()
        self._create_resources()
        self._env_functions()
        runtime.reset()
        self.classify = _load_handler("classify")
        self.notify = _load_handler("notify")
        self.presign = _load_handler("presign")
        self.http_api.start()
        # What Twilio is told to call (status callbacks) and signs; the sms_reply handler rebuilds the
        # same URL from PUBLIC_API_URL (on AWS: the API's own domain).
        os.environ.update({"PUBLIC_API_URL": self.http_api.url,
                           "STATUS_CALLBACK_URL": f"{self.http_api.url}/sms/status"})
        runtime.reset()  # settings are read once per container: these two are known only now
        self.escalate = _load_handler("escalate")
        self.silence = _load_handler("silence")
        self._last_silence = self.clock()
        self.sms_reply_fn = _load_handler("sms_reply")
        return self

    def stop(self) -> None:
        self.stop_background()
        self.http_api.stop()
        self.twilio.stop()
        if self._server is not None:
            self._server.stop()
            self._server = None
        runtime.reset()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env_base(self) -> None:
        os.environ.update({
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_METRICS_NAMESPACE": "Sentinela",
            "POWERTOOLS_SERVICE_NAME": "sentinela-local",
            "AWS_LAMBDA_FUNCTION_NAME": f"{self.stack_name}-local",
        })
        if self.quiet:
            os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1")

    def _create_resources(self) -> None:
        ddb, sqs, s3, sm = self.client("dynamodb"), self.client("sqs"), self.client("s3"), self.client("secretsmanager")
        for logical, spec in table_specs(self.tpl).items():
            name = f"{self.stack_name}-{logical}"
            ddb.create_table(TableName=name, **spec["create_table"])
            if spec["ttl_attribute"]:
                ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                    "Enabled": True, "AttributeName": spec["ttl_attribute"]})
            self.names[logical] = name
        for logical, attrs in queue_specs(self.tpl).items():
            name = f"{self.stack_name}-{logical}"
            self.names[logical] = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        # S3 invokes classify asynchronously; locally its notifications land in a queue the router reads.
        self.names["ClipEvents"] = sqs.create_queue(QueueName=f"{self.stack_name}-clip-events")["QueueUrl"]
        qarn = sqs.get_queue_attributes(QueueUrl=self.names["ClipEvents"], AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        rules = s3_event_rules(self.tpl, "ClassifyFunction")
        bucket = f"{self.stack_name}-clips"
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": qarn, "Events": r["events"], "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": r["prefix"]}, {"Name": "suffix", "Value": r["suffix"]}]}}}
            for r in rules]})
        self.names["ClipsBucket"] = bucket
        # Ops notices (silence alarm; CloudWatch alarms on AWS): subscribe a queue to read them in tests.
        self.names["OpsTopic"] = self.client("sns").create_topic(Name=f"{self.stack_name}-ops")["TopicArn"]
        secret = sm.create_secret(Name=f"{self.stack_name}/twilio", SecretString=json.dumps(
            {"account_sid": self.twilio.account_sid, "auth_token": self.twilio.auth_token}))
        self.names["TwilioSecret"] = secret["ARN"]
        self.stream = stream_event_settings(self.tpl, "NotifyFunction")
        self.filters = notify_filter_patterns(self.tpl, "NotifyFunction")
        self.stream_arn = ddb.describe_table(TableName=self.names[self.stream["Table"]])["Table"]["LatestStreamArn"]
        # Drain the queue's s3:TestEvent so that idle means idle.
        self._drain_test_events()

    def _env_functions(self) -> None:
        env = {
            "TABLE_NAME": self.names["DataTable"], "IDEMPOTENCY_TABLE": self.names["IdempotencyTable"],
            "CLIPS_BUCKET": self.names["ClipsBucket"], "TWILIO_SECRET_ARN": self.names["TwilioSecret"],
            "SMS_FROM_NUMBER": self.sms_from, "TWILIO_API_BASE": self.twilio.url,
            "OPS_TOPIC_ARN": self.names["OpsTopic"],
            # presign: a deployed stack takes these from template.yaml; here they are its defaults, except
            # that every local caller is 127.0.0.1 (one address for all the tests' failed attempts).
            "UPLOAD_URL_TTL_S": "600", "UPLOAD_CLOCK_SKEW_S": "300", "UPLOAD_RATE_PER_MINUTE": "600",
            "UPLOAD_FAILED_ATTEMPTS_PER_DEVICE": "10", "UPLOAD_FAILED_ATTEMPTS_PER_IP": "1000",
            "UPLOAD_FAILED_ATTEMPTS_WINDOW_S": "600",
            # The caps from the template's parameters, as the deployed functions receive them.
            "MAX_CLIP_BYTES": str(self.tpl["Parameters"]["MaxClipBytes"]["Default"]),
            "MAX_CLIP_SECONDS": str(self.tpl["Parameters"]["MaxClipSeconds"]["Default"]),
            "CLASSIFY_MAX_ATTEMPTS": str(self._classify_retries() + 1),
        }
        if self.card:
            env["MODEL_CARD"] = str(self.card)
        os.environ.update(env)

    # --- what a test or the demo does -----------------------------------------------------------
    @property
    def table(self) -> Any:
        return boto3.resource("dynamodb", endpoint_url=self.endpoint, region_name="us-east-1").Table(
            self.names["DataTable"])

    def upload(self, data: bytes | Path, site: str, device: str, when: dt.datetime | None = None,
               ext: str = "wav", key: str | None = None) -> tuple[str, str | None]:
        body = data.read_bytes() if isinstance(data, Path) else data
        key = key or make_key(site, device, when or dt.datetime.now(dt.UTC), ext)
        res = self.client("s3").put_object(Bucket=self.names["ClipsBucket"], Key=key, Body=body)
        return key, res.get("VersionId")

    def _invoke_presign(self, event: dict[str, Any]) -> Any:
        """What API Gateway does for POST /uploads: call the presign handler with the v2 event."""
        self.invocations["presign"] = self.invocations.get("presign", 0) + 1
        return self.presign.handler(event, FakeContext("presign", 30))

    @property
    def uploads_url(self) -> str:
        """The endpoint a recorder is given (``sentinela upload --endpoint``)."""
        return f"{self.http_api.url}/uploads"

    # --- the router -----------------------------------------------------------------------------
    def _drain_test_events(self) -> None:
        sqs = self.client("sqs")
        for m in sqs.receive_message(QueueUrl=self.names["ClipEvents"], MaxNumberOfMessages=10).get("Messages", []):
            if json.loads(m["Body"]).get("Event") == "s3:TestEvent":
                sqs.delete_message(QueueUrl=self.names["ClipEvents"], ReceiptHandle=m["ReceiptHandle"])

    def pump(self) -> int:
        """One round of deliveries; returns how many handler invocations it made."""
        with self._lock:
            return self._pump_s3() + self._pump_stream() + self._pump_escalate() + self._pump_silence()

    # --- the silence alarm's schedule (functions/silence) ------------------------------------------
    def _pump_silence(self) -> int:
        now = self.clock()
        if self._last_silence is not None and (now - self._last_silence).total_seconds() < self.silence_every_s:
            return 0
        self._last_silence = now
        self.invoke_silence(now)
        return 0  # a sweep is not a delivery: it must not keep run_until_idle busy

    def invoke_silence(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """One run of the silence handler with the scheduled event EventBridge would send at ``now``."""
        self.invocations["silence"] = self.invocations.get("silence", 0) + 1
        when = (now or self.clock()).astimezone(dt.UTC)
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                 "source": "aws.events", "account": "123456789012", "region": "us-east-1",
                 "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{self.stack_name}-silence"],
                 "detail": {}}
        result: dict[str, Any] = self.silence.handler(event, FakeContext("silence", 60))
        return result

    # --- incidents: the escalation schedule and Twilio's webhooks --------------------------------
    def _pump_escalate(self) -> int:
        if self.escalate_every_s <= 0 or time.monotonic() - self._last_escalate < self.escalate_every_s:
            return 0
        self._last_escalate = time.monotonic()
        self.invoke_escalate()
        return 0  # a sweep is not a delivery: it must not keep run_until_idle busy

    def invoke_escalate(self) -> dict[str, Any]:
        """One run of the escalate handler with a scheduled event, as EventBridge would send it."""
        self.invocations["escalate"] = self.invocations.get("escalate", 0) + 1
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                 "source": "aws.events", "account": "123456789012", "region": "us-east-1",
                 "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{self.stack_name}-escalate"],
                 "detail": {}}
        result: dict[str, Any] = self.escalate.handler(event, FakeContext("escalate", 60))
        return result

    def _invoke_sms_reply(self, event: dict[str, Any]) -> Any:
        self.invocations["sms_reply"] = self.invocations.get("sms_reply", 0) + 1
        return self.sms_reply_fn.handler(event, FakeContext("sms_reply", 30))

    def twilio_webhook(self, path: str, form: dict[str, str], *, query: str = "",
                       signature: str | None = None) -> dict[str, Any]:
        """Play Twilio: POST ``form`` to ``path`` of the HTTP API with a valid X-Twilio-Signature (or the
        ``signature`` given, e.g. a forged one) and return the handler's response."""
        import urllib.parse

        from sentinela.adapters.twilio_sms import sign_request

        url = f"{self.http_api.url}{path}" + (f"?{query}" if query else "")
        sig = signature if signature is not None else sign_request(self.twilio.auth_token, url, form)
        body = urllib.parse.urlencode(form).encode()
        event = self.http_api.event("POST", path + (f"?{query}" if query else ""), {
            "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": sig,
            "user-agent": "TwilioProxy/1.1", "x-forwarded-proto": "https"}, body, route_key=f"POST {path}")
        result: dict[str, Any] = self._invoke_sms_reply(event)
        return result

    def sms_reply(self, from_: str, body: str, *, signature: str | None = None) -> dict[str, Any]:
        """A ranger texts ``body`` back: Twilio's inbound-message webhook."""
        return self.twilio_webhook("/sms/reply", {
            "MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": self.twilio.account_sid, "From": from_,
            "To": self.sms_from, "Body": body, "NumMedia": "0"}, signature=signature)

    def sms_status(self, message: Any, status: str, error_code: str | None = None) -> dict[str, Any]:
        """Twilio reports the delivery of an outbox message to its StatusCallback URL."""
        import urllib.parse

        cb = urllib.parse.urlsplit(message.status_callback or "")
        form = {"MessageSid": message.sid, "MessageStatus": status, "AccountSid": self.twilio.account_sid,
                "To": message.to, "From": message.from_}
        if error_code:
            form["ErrorCode"] = error_code
        return self.twilio_webhook(cb.path or "/sms/status", form, query=cb.query)

    def _classify_retries(self) -> int:
        cfg = self.tpl["Resources"]["ClassifyFunction"]["Properties"].get("EventInvokeConfig", {})
        return int(cfg.get("MaximumRetryAttempts", 2))

    def _pump_s3(self) -> int:
        sqs = self.client("sqs")
        url = self.names["ClipEvents"]
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
        n = 0
        for m in msgs:
            event = json.loads(m["Body"])
            if event.get("Event") == "s3:TestEvent":
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                continue
            n += 1
            self._complete_s3_event(event)
            ok, err = self.invoke_classify(event)
            attempts = self._attempts.get(m["MessageId"], 0) + 1
            self._attempts[m["MessageId"]] = attempts
            if ok or attempts > self._classify_retries():
                if not ok:
                    self.dead_letter("ClassifyDLQ", "RetriesExhausted", {
                        "requestContext": {"condition": "RetriesExhausted", "approximateInvokeCount": attempts,
                                           "functionArn": "classify"},
                        "responseContext": {"functionError": err}, "requestPayload": event})
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return n

    def _complete_s3_event(self, event: dict[str, Any]) -> None:
        """moto's notification lacks the ``versionId`` and ``sequencer`` that AWS sends for a versioned
        bucket; find the version by its ETag, as AWS would have named it, so a new version is a new clip."""
        s3 = self.client("s3")
        for rec in event.get("Records", []):
            obj = rec["s3"]["object"]
            if obj.get("versionId"):
                continue
            from urllib.parse import unquote_plus

            key = unquote_plus(obj["key"])
            versions = s3.list_object_versions(Bucket=rec["s3"]["bucket"]["name"], Prefix=key).get("Versions", [])
            same = [v for v in versions if v["Key"] == key and v["ETag"].strip('"') == obj.get("eTag")]
            if same:
                oldest = min(same, key=lambda v: v["LastModified"])
                obj["versionId"] = oldest["VersionId"]
                obj.setdefault("sequencer", f"{int(oldest['LastModified'].timestamp() * 1e6):016X}")

    def invoke_classify(self, event: dict[str, Any]) -> tuple[bool, str | None]:
        self.invocations["classify"] += 1
        try:
            self.classify.handler(event, FakeContext("classify", 300))
            return True, None
        except Exception as exc:  # a function error: Lambda retries the async event
            log.warning("classify failed: %s", exc)
            return False, f"{type(exc).__name__}: {exc}"

    def dead_letter(self, queue: str, reason: str, payload: dict[str, Any]) -> None:
        self.client("sqs").send_message(QueueUrl=self.names[queue], MessageBody=json.dumps(payload, default=str),
                                        MessageAttributes={"reason": {"DataType": "String", "StringValue": reason}})

    def _read_stream(self) -> None:
        streams = self.client("dynamodbstreams")
        desc = streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
        for shard in desc["Shards"]:
            sid = shard["ShardId"]
            # A fresh iterator after the last record seen, every round: moto rolls a cancelled transaction
            # back by swapping in a deep copy of the table, stream shard included, and an iterator kept
            # from before would read the orphaned shard forever after (DynamoDB has no such effect).
            last = self._stream_iters.get(sid)
            kw: dict[str, Any] = ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last} if last
                                  else {"ShardIteratorType": "TRIM_HORIZON"})
            iterator = streams.get_shard_iterator(StreamArn=self.stream_arn, ShardId=sid, **kw)["ShardIterator"]
            # Read the shard to its end: a full page of records the filter drops must not look like idle.
            while True:
                res = streams.get_records(ShardIterator=iterator, Limit=1000)
                iterator = res["NextShardIterator"]
                for r in res["Records"]:
                    self._stream_iters[sid] = r["dynamodb"]["SequenceNumber"]
                    rec = self._lambda_record(r)
                    if self._matches(rec):
                        self._stream_pending.append(rec)
                if len(res["Records"]) < 1000:
                    break

    def _lambda_record(self, r: dict[str, Any]) -> dict[str, Any]:
        rec: dict[str, Any] = json.loads(json.dumps(r, default=str))
        ts = r["dynamodb"].get("ApproximateCreationDateTime")
        if isinstance(ts, dt.datetime):
            rec["dynamodb"]["ApproximateCreationDateTime"] = int(ts.timestamp())
        rec["eventSourceARN"] = self.stream_arn
        rec["awsRegion"] = "us-east-1"
        rec.setdefault("eventSource", "aws:dynamodb")
        return rec

    def _matches(self, rec: dict[str, Any]) -> bool:
        if not self.filters:
            return True
        from moto.events.models import EventPattern

        return any(EventPattern.load(json.dumps(p)).matches_event(rec) for p in self.filters)  # type: ignore[arg-type]

    def _pump_stream(self) -> int:
        self._read_stream()
        n = 0
        size = int(self.stream["BatchSize"])
        while self._stream_pending:
            batch, self._stream_pending = self._stream_pending[:size], self._stream_pending[size:]
            n += self._deliver(batch, 0)
        return n

    def _deliver(self, batch: list[dict[str, Any]], tries: int) -> int:
        """Lambda's stream semantics: retry from the first failed record; bisect on function errors;
        after MaximumRetryAttempts, the failed records go to the OnFailure destination."""
        self.invocations["notify"] += 1
        failed_seq: str | None
        try:
            resp = self.notify.handler({"Records": batch}, FakeContext("notify", 60)) or {}
            failures = resp.get("batchItemFailures", [])
            failed_seq = failures[0]["itemIdentifier"] if failures else None
            function_error = False
        except Exception as exc:
            log.warning("notify failed: %s", exc)
            failed_seq, function_error = batch[0]["dynamodb"]["SequenceNumber"], True
        if failed_seq is None:
            return 1
        idx = next((i for i, r in enumerate(batch) if r["dynamodb"]["SequenceNumber"] == failed_seq), 0)
        rest = batch[idx:]
        if tries >= int(self.stream["MaximumRetryAttempts"]):
            self.dead_letter("NotifyDLQ", "RetriesExhausted", {
                "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": tries + 1},
                "DDBStreamBatchInfo": {"streamArn": self.stream_arn,
                                       "startSequenceNumber": rest[0]["dynamodb"]["SequenceNumber"],
                                       "endSequenceNumber": rest[-1]["dynamodb"]["SequenceNumber"],
                                       "batchSize": len(rest)},
                "records": rest})
            return 1
        if function_error and self.stream["BisectBatchOnFunctionError"] and len(rest) > 1:
            half = len(rest) // 2
            return 1 + self._deliver(rest[:half], tries + 1) + self._deliver(rest[half:], tries + 1)
        return 1 + self._deliver(rest, tries + 1)

    def pending(self) -> int:
        attrs = self.client("sqs").get_queue_attributes(QueueUrl=self.names["ClipEvents"], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def run_until_idle(self, timeout_s: float = 600.0) -> int:
        """Deliver until nothing is left to deliver (S3 events, stream records)."""
        deadline = time.monotonic() + timeout_s
        total = 0
        while time.monotonic() < deadline:
            n = self.pump()
            total += n
            if n == 0 and self.pending() == 0:
                return total
        raise TimeoutError(f"local stack not idle after {timeout_s:.0f} s")

    # --- background delivery (the demo's live mode) ----------------------------------------------
    def start_background(self, interval_s: float = 0.05) -> None:
        def loop() -> None:
            while not self._bg_stop.is_set():
                try:
                    if self.pump() == 0:
                        self._bg_stop.wait(interval_s)
                except Exception:  # keep routing; the failure is logged and the next round retries
                    log.exception("router round failed")
                    self._bg_stop.wait(interval_s)

        self._bg_stop.clear()
        self._bg = threading.Thread(target=loop, name="local-router", daemon=True)
        self._bg.start()

    def stop_background(self) -> None:
        if self._bg is not None:
            self._bg_stop.set()
            self._bg.join(timeout=30)
            self._bg = None

    def dead_letters(self, queue: str) -> list[dict[str, Any]]:
        sqs = self.client("sqs")
        out = []
        for m in sqs.receive_message(QueueUrl=self.names[queue], MaxNumberOfMessages=10,
                                     VisibilityTimeout=0).get("Messages", []):
            out.append(json.loads(m["Body"]))
        return out

