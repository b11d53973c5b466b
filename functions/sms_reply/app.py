"""sms_reply: Twilio webhooks behind the HTTP API.

POST /sms/reply  -- a ranger's SMS reply ("1" = on my way, "2" = false alarm ...) -> the incident's new
                    state; answered with TwiML (the text Twilio sends back).
POST /sms/status -- Twilio's delivery status callback -> recorded on the SMS item.
Both must carry a valid X-Twilio-Signature for the URL Twilio called; anything else gets 403.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from sentinela import runtime
from sentinela.adapters import events
from sentinela.adapters.sms import twiml_message, valid_signature
from sentinela.domain.phone import mask_phone

logger = Logger()
# The core's loggers (sentinela.*) write through this logger's handler and formatter: JSON lines with
# the same correlation keys (clip key, incident id) as the handler's own lines.
logging.getLogger("sentinela")
copy_config_to_registered_loggers(source_logger=logger, include={"sentinela"})
metrics = Metrics()
tracer = Tracer()


def _public_url(req: events.HttpRequest) -> str:
    """The URL Twilio was configured with: API Gateway's domain (or PUBLIC_API_URL, for a custom domain)
    plus the path and query it called."""
    base = os.environ.get("PUBLIC_API_URL") or f"https://{req.domain}"
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
    try:
        token = runtime.twilio_auth_token()
    except runtime.TwilioSecretError as exc:  # fail closed: a misconfigured secret never means "accept"
        metrics.add_metric(name="WebhookMisconfigured", unit="Count", value=1)
        logger.error("webhook refused: the Twilio secret is misconfigured, no webhook can be verified",
                     extra={"reason": str(exc)})
        return _plain(503, "service unavailable")
    if not valid_signature(token, _public_url(req), form, req.headers.get("x-twilio-signature")):
        metrics.add_metric(name="WebhookForged", unit="Count", value=1)
        logger.warning("webhook refused: bad or missing X-Twilio-Signature", extra={"path": req.path})
        return _plain(403, "forbidden")
    service = runtime.incident_service(metrics)
    if req.path.endswith("/status"):
        params = form | dict(urllib.parse.parse_qsl(req.query))
        recorded = service.delivery_status(params)
        logger.info("delivery status", extra={"incident_id": params.get("i"), "step": params.get("s"),
                                              "status": params.get("MessageStatus") or params.get("SmsStatus"),
                                              "recorded": recorded})
        return {"statusCode": 204, "body": ""}
    sender, sid = form.get("From", ""), form.get("MessageSid", "")
    if not sender or not sid:
        return _plain(400, "From and MessageSid are required")
    answer = service.reply(sender, form.get("Body", ""), message_sid=sid)
    logger.info("sms reply", extra={"from": mask_phone(sender), "message_sid": sid})
    return {"statusCode": 200, "headers": {"Content-Type": "text/xml"}, "body": twiml_message(answer)}
