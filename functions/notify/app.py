"""notify: DynamoDB stream records carrying ``alert = true`` -> on-call rangers -> SMS."""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from sentinela import runtime
from sentinela.adapters import events
from sentinela.adapters.store import from_ddb
from sentinela.domain.alert import Alert, AlertShapeError

logger = Logger()
# The core's loggers (sentinela.*) write through this logger's handler and formatter: JSON lines with
# the same correlation keys (clip key, incident id) as the handler's own lines.
logging.getLogger("sentinela")
copy_config_to_registered_loggers(source_logger=logger, include={"sentinela"})
# Every environment setting, read and checked at cold start: a bad value stops the function here, named.
settings = runtime.settings()
metrics = Metrics()
tracer = Tracer()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@tracer.capture_method
def record_handler(record: DynamoDBRecord) -> dict[str, Any]:
    image = from_ddb(record.dynamodb.new_image if record.dynamodb else {})
    logger.append_keys(clip_id=image.get("clip_id"), threat=image.get("threat"))
    if image.get("alert") is not True:  # the stream filter passes only alert items; checked again on purpose
        logger.warning("record ignored", extra={"reason": "not an alert item"})
        return {"sent": [], "skipped": []}
    try:
        alert = Alert.from_item(image)  # the stream image, parsed once: everything after reads attributes
    except AlertShapeError as exc:  # retrying cannot mend it: say what is wrong, where ops look
        logger.error("alert record rejected", extra={"reason": str(exc)})
        metrics.add_metric(name="AlertsRejected", unit="Count", value=1)
        return {"sent": [], "skipped": [], "rejected": str(exc)}
    res = runtime.notify_service(metrics).handle_alert(alert)
    logger.info("alert handled", extra={"incident_id": res.incident_id, "outcome": res.outcome,
                                        "sent": len(res.sent), "skipped": len(res.skipped),
                                        "failed": len(res.failed)})
    return {"sent": res.sent, "skipped": res.skipped}


@logger.inject_lambda_context(correlation_id_path="Records[0].dynamodb.NewImage.clip_id.S")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    records, ignored = events.stream_records(event)
    for why in ignored:  # not a stream record: nothing to retry, nothing to send
        logger.warning("record ignored", extra={"reason": why})
    if not records:
        return {"batchItemFailures": []}
    return process_partial_response(event={"Records": records}, record_handler=record_handler,
                                    processor=processor, context=context)
