"""presign: POST /uploads (HTTP API) -> a presigned S3 POST for one clip of one authenticated device."""

from __future__ import annotations

import json
import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
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


def _response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "application/json", "Cache-Control": "no-store",
                                              **(headers or {})}, "body": json.dumps(body)}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    try:
        req = events.http_v2(event, events.MAX_JSON_BYTES)
        payload = events.json_body(req.body)
    except events.BadRequest as bad:
        metrics.add_metric(name=f"UploadRefused_{bad.code}", unit="Count", value=1)
        logger.warning("upload request refused", extra={"status": bad.status, "reason": bad.reason})
        return _response(bad.status, {"error": bad.code, "reason": bad.reason})
    if isinstance(payload, dict):
        # Never log the secret; the ids are what ops search by.
        logger.append_keys(site=payload.get("site"), device=payload.get("device"))
    answer = runtime.presign_service(metrics).handle(payload, source_ip=req.source_ip)
    logger.info("upload request", extra={"status": answer.status, "error": answer.body.get("error"),
                                         "reason": answer.body.get("reason"), "key": answer.body.get("key"),
                                         "duplicate": answer.body.get("duplicate")})
    return _response(answer.status, answer.body, answer.headers)
