"""silence: on a schedule, find recorders that stopped uploading and tell ops once per silence episode."""

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
    # The schedule's own time, not the clock: a late or replayed run judges silence as of when it was due.
    try:
        now = events.scheduled_time(event)
    except ValueError as exc:
        logger.warning("event ignored", extra={"reason": str(exc)})
        return {"ignored": str(exc)}
    rep = runtime.silence_service(metrics).check(now)
    logger.info("silence check", extra={"checked": rep.checked, "silent": rep.silent, "alerted": rep.alerted,
                                        "recovered": rep.recovered, "failed": rep.failed})
    return {"checked": rep.checked, "silent": rep.silent, "alerted": rep.alerted, "recovered": rep.recovered,
            "failed": rep.failed}
