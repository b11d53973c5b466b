"""sms_reply: the SMS channel's webhooks behind the HTTP API (the channel: sentinela.adapters.twilio_sms).

POST /sms/reply  -- a ranger's SMS reply ("1" = on my way, "2" = false alarm ...) -> the incident's new
                    state; answered in the channel's reply format (the text sent back).
POST /sms/status -- the channel's delivery report -> recorded on the send.
Both must carry the channel's valid signature for the URL it called; anything else gets 403.
"""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from sentinela import runtime
from sentinela.adapters import events
from sentinela.domain.channel import ChannelUnavailable, InboundError, InboundRequest
from sentinela.domain.phone import mask_phone

logger = Logger()
# The core's loggers (sentinela.*) write through this logger's handler and formatter: JSON lines with
# the same correlation keys (clip key, incident id) as the handler's own lines.
logging.getLogger("sentinela")
copy_config_to_registered_loggers(source_logger=logger, include={"sentinela"})
# Every environment setting, read and checked at cold start: a bad value stops the function here, named.
settings = runtime.settings()
metrics = Metrics()
tracer = Tracer()


def _public_url(req: events.HttpRequest) -> str:
    """The URL the channel was configured with: API Gateway's domain (or PUBLIC_API_URL, for a custom domain)
    plus the path and query it called."""
    base = settings.public_api_url or f"https://{req.domain}"
    return base.rstrip("/") + req.path + (f"?{req.query}" if req.query else "")


def _plain(status: int, text: str) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"Content-Type": "text/plain"}, "body": text}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    try:
        req = events.http_v2(event, events.MAX_FORM_BYTES)
        form = events.form(req.body)
    except events.BadRequest as bad:  # before the signature: nothing here can act, so say why plainly
        metrics.add_metric(name="WebhookRejected", unit="Count", value=1)
        logger.warning("webhook rejected", extra={"status": bad.status, "reason": bad.reason})
        return _plain(bad.status, bad.reason)
    channel = runtime.channel("sms")
    inbound = InboundRequest(url=_public_url(req), headers=req.headers, form=form)
    try:
        verified = channel.verify(inbound)
    except ChannelUnavailable as exc:  # fail closed: a misconfigured secret never means "accept"
        metrics.add_metric(name="WebhookMisconfigured", unit="Count", value=1)
        logger.error("webhook refused: %s is misconfigured, no webhook can be verified", exc.setting,
                     extra={"reason": str(exc)})
        return _plain(503, "service unavailable")
    if not verified:
        metrics.add_metric(name="WebhookForged", unit="Count", value=1)
        logger.warning("webhook refused: bad or missing signature", extra={"path": req.path})
        return _plain(403, "forbidden")
    service = runtime.incident_service(metrics)
    if req.path.endswith("/status"):
        report = channel.parse_status(inbound)
        recorded = report is not None and service.delivery_status(report)
        names = report.callback if report else {}
        logger.info("delivery status", extra={"incident_id": names.get("i"), "step": names.get("s"),
                                              "status": report.status if report else None, "recorded": recorded})
        return {"statusCode": 204, "body": ""}
    try:
        message = channel.parse_message(inbound)
    except InboundError as bad:
        return _plain(400, str(bad))
    answer = service.reply(message.sender, message.body, message_id=message.message_id)
    logger.info("sms reply", extra={"from": mask_phone(message.sender), "message_sid": message.message_id})
    reply = channel.answer(answer)
    return {"statusCode": 200, "headers": {"Content-Type": reply.content_type}, "body": reply.body}
