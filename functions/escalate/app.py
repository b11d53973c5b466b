"""escalate: on a schedule (every minute) -> open incidents nobody acknowledged in time -> the next ranger."""

from __future__ import annotations

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


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    try:
        events.scheduled_time(event)
    except ValueError as exc:  # only the schedule sweeps; anything else is logged and left alone
        logger.warning("event ignored", extra={"reason": str(exc)})
        return {"ignored": str(exc)}
    res = runtime.incident_service(metrics).escalate_due()
    logger.info("escalation sweep", extra={"checked": res.checked, "escalated": res.escalated,
                                           "exhausted": res.exhausted, "failed": res.failed})
    return {"checked": res.checked, "escalated": res.escalated, "exhausted": res.exhausted, "failed": res.failed}
