"""silence: on a schedule, find recorders that stopped uploading and tell ops once per silence episode."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from sentinela import runtime

logger = Logger()
# The core's loggers (sentinela.*) write through this logger's handler and formatter: JSON lines with
# the same correlation keys (clip key, incident id) as the handler's own lines.
logging.getLogger("sentinela")
copy_config_to_registered_loggers(source_logger=logger, include={"sentinela"})
metrics = Metrics()
tracer = Tracer()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    # The schedule's own time, not the clock: a late or replayed run judges silence as of when it was due.
    now = datetime.fromisoformat(event.time.replace("Z", "+00:00")) if event.get("time") else datetime.now(UTC)
    rep = runtime.silence_service(metrics).check(now)
    logger.info("silence check", extra={"checked": rep.checked, "silent": rep.silent, "alerted": rep.alerted,
                                        "recovered": rep.recovered, "failed": rep.failed})
    return {"checked": rep.checked, "silent": rep.silent, "alerted": rep.alerted, "recovered": rep.recovered,
            "failed": rep.failed}
