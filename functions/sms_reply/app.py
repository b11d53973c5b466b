"""sms_reply: Twilio webhooks behind the HTTP API.

POST /sms/reply  -- a ranger's SMS reply ("1" = on my way, "2" = false alarm ...) -> the incident's new
                    state; answered with TwiML (the text Twilio sends back).
POST /sms/status -- Twilio's delivery status callback -> recorded on the SMS item.
Both must carry a valid X-Twilio-Signature for the URL Twilio called; anything else gets 403.
"""

from __future__ import annotations

import base64
import logging
import os
import urllib.parse
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from sentinela import runtime
from sentinela.sms import mask_phone, twiml_message, valid_signature

logger = Logger()
# The core's loggers (sentinela.*) write through this logger's handler and formatter: JSON lines with
# the same correlation keys (clip key, incident id) as the handler's own lines.
logging.getLogger("sentinela")
copy_config_to_registered_loggers(source_logger=logger, include={"sentinela"})
metrics = Metrics()
tracer = Tracer()


def _public_url(event: APIGatewayProxyEventV2) -> str:
    """The URL Twilio was configured with: API Gateway's domain (or PUBLIC_API_URL, for a custom domain)
    plus the path and query it called."""
    base = os.environ.get("PUBLIC_API_URL") or f"https://{event.request_context.domain_name}"
    query = event.raw_query_string
    return base.rstrip("/") + event.raw_path + (f"?{query}" if query else "")


def _form(event: APIGatewayProxyEventV2) -> dict[str, str]:
    raw = event.body or ""
    text = base64.b64decode(raw).decode("utf-8") if event.is_base64_encoded else raw
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=APIGatewayProxyEventV2)
def handler(event: APIGatewayProxyEventV2, context: LambdaContext) -> dict[str, Any]:
    form = _form(event)
    signature = event.headers.get("x-twilio-signature")
    if not valid_signature(runtime.twilio_auth_token(), _public_url(event), form, signature):
        metrics.add_metric(name="WebhookForged", unit="Count", value=1)
        logger.warning("webhook refused: bad or missing X-Twilio-Signature", extra={"path": event.raw_path})
        return {"statusCode": 403, "headers": {"Content-Type": "text/plain"}, "body": "forbidden"}
    service = runtime.incident_service(metrics)
    if event.raw_path.endswith("/status"):
        params = form | dict(urllib.parse.parse_qsl(event.raw_query_string))
        recorded = service.delivery_status(params)
        logger.info("delivery status", extra={"incident_id": params.get("i"), "step": params.get("s"),
                                              "status": params.get("MessageStatus") or params.get("SmsStatus"),
                                              "recorded": recorded})
        return {"statusCode": 204, "body": ""}
    sender = form.get("From", "")
    answer = service.reply(sender, form.get("Body", ""))
    logger.info("sms reply", extra={"from": mask_phone(sender)})
    return {"statusCode": 200, "headers": {"Content-Type": "text/xml"}, "body": twiml_message(answer)}
