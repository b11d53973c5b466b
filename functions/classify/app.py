"""classify: an S3 ObjectCreated event -> the clip record, its detections and alert items."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from sentinela import runtime
from sentinela.adapters import events

logger = Logger()
# The core's loggers (sentinela.*) write through this logger's handler and formatter: JSON lines with
# the same correlation keys (clip key, incident id) as the handler's own lines.
logging.getLogger("sentinela")
copy_config_to_registered_loggers(source_logger=logger, include={"sentinela"})
# Every environment setting, read and checked at cold start: a bad value stops the function here, named.
settings = runtime.settings()
metrics = Metrics()
tracer = Tracer()
# The same object version delivered twice (S3 is at-least-once) is processed once.
idempotency = IdempotencyConfig(
    event_key_jmespath="[s3.bucket.name, s3.object.key, s3.object.versionId, s3.object.sequencer]",
    expires_after_seconds=7 * 24 * 3600,
)
# The running invocation's context: the last attempt records the clip failed before its time limit.
_invocation: dict[str, LambdaContext] = {}
persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table)


@idempotent_function(data_keyword_argument="record", persistence_store=persistence, config=idempotency)
def process(record: dict[str, Any]) -> dict[str, Any]:
    obj = record["s3"]["object"]
    logger.append_keys(clip_key=obj["key"])
    # The clip in the EMF record too, so a metric data point leads back to its clip in Logs Insights.
    metrics.add_metadata(key="clip_key", value=unquote_plus(obj["key"]))
    ctx = _invocation.get("context")
    remaining = (lambda: ctx.get_remaining_time_in_millis() / 1000) if ctx is not None else None
    out = runtime.classify_service(metrics).handle(
        record["s3"]["bucket"]["name"], obj["key"], obj.get("versionId"), obj.get("size"), remaining
    )
    logger.info("clip handled", extra={"clip_id": out.clip_id, "status": out.status, "reason": out.reason,
                                       "alerts": out.alerts, "detections": out.detections,
                                       "decisions": out.decisions})
    return {"clip_id": out.clip_id, "status": out.status, "reason": out.reason, "alerts": out.alerts}


@logger.inject_lambda_context(correlation_id_path="Records[0].s3.object.key")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    _invocation["context"] = context
    # Only ObjectCreated records of the clips bucket are clips; anything else is ignored before a write.
    records, ignored = events.s3_created_records(event, settings.bucket)
    for why in ignored:
        logger.warning("event ignored", extra={"reason": why})
        metrics.add_metric(name="EventsIgnored", unit="Count", value=1)
    results = [process(record=rec) for rec in records]
    return {"results": results, "ignored": ignored}
