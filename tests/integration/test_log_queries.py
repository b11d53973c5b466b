"""The saved Logs Insights queries in template.yaml read fields the code really writes.

The real handlers run on the local stack with their log level at INFO; every JSON log line they write
(their own, and the core's through Powertools' configuration) is captured, and each query's fields
must appear in the lines of the functions whose log groups it reads.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinela.adapters.store import Store
from sentinela.domain import clock
from sentinela_tools.devtools.template_reader import load_template
from sentinela_tools.local.stack import LocalStack
from tests.conftest import encode, impulse

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)


class Capture:
    def __init__(self) -> None:
        self.buf = io.StringIO()

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.buf.getvalue().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "message" in rec:
                out.append(rec)
        self.buf.seek(0)
        self.buf.truncate()
        return out


@pytest.fixture()
def logged(tiny_card_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalStack, Capture]]:
    monkeypatch.delenv("POWERTOOLS_LOG_LEVEL", raising=False)  # an earlier quiet stack may have set it
    monkeypatch.setenv("SMS_BACKOFF_S", "0.01")
    stack = LocalStack(card=tiny_card_path, quiet=False).start()
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")  # what the next quiet stack expects to find
    cap = Capture()
    mods = (stack.classify, stack.notify, stack.escalate, stack.sms_reply_fn)
    # Powertools keeps a logger configured once per process: an earlier quiet stack left it at WARNING.
    levels = [(lg, lg.level) for lg in [m.logger._logger for m in mods] + [logging.getLogger("sentinela")]]
    for lg, _ in levels:
        lg.setLevel(logging.INFO)
    handlers = {id(h): h for mod in mods for h in [mod.logger.registered_handler]}
    handlers |= {id(h): h for h in logging.getLogger("sentinela").handlers}
    assert handlers
    before = {}
    for key, h in handlers.items():
        assert isinstance(h, logging.StreamHandler)
        before[key] = h.setStream(cap.buf)
    try:
        yield stack, cap
    finally:
        for key, h in handlers.items():
            h.setStream(before[key])
        for lg, level in levels:
            lg.setLevel(level)
        stack.stop()


def _fields(query: str) -> set[str]:
    """The fields a query shows and filters on (not Logs Insights' own @fields)."""
    shown = query.splitlines()[0].removeprefix("fields ").split(",")
    filtered = re.findall(r"(\w+) like", query)
    return {f.strip() for f in shown + filtered if f.strip() and not f.strip().startswith("@")}


def _keys(records: list[dict[str, Any]]) -> set[str]:
    return {k for r in records for k in r}


def test_saved_queries_read_fields_the_handlers_write(logged: tuple[LocalStack, Capture],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    stack, cap = logged
    store = Store(stack.names["DataTable"])
    monkeypatch.setattr(clock, "_pinned", T0)  # the core's clock, pinned for this test only
    store.put_site({"site_id": "logq", "name": "Sitio logq", "lat": -37.8, "lon": -73.0, "tz": "America/Santiago",
                    "lead": "lia", "policy": {"classes": {"gunshot": {"escalation_delay_s": 300}}}})
    store.put_ranger("logq", {"ranger_id": "ana", "name": "Ana", "phone": "+56900000901", "lang": "es", "order": 0})
    store.put_ranger("logq", {"ranger_id": "lia", "name": "Lia", "phone": "+56900000902", "lang": "es", "order": 1,
                              "role": "backup"})
    stack.upload(encode(impulse()), "logq", "rec-1", T0)
    stack.upload(b"this is not audio", "logq", "rec-1", T0 + dt.timedelta(minutes=1), ext="wav")
    stack.run_until_idle()
    clip_phase = cap.records()  # classify and notify
    for minutes in (6, 12, 20):  # lia (next on call), then nobody left: exhausted
        clock.pin(T0 + dt.timedelta(minutes=minutes))
        stack.invoke_escalate()
    escalate_phase = cap.records()
    (first,) = [m for m in stack.twilio.outbox if m.to == "+56900000901"]
    stack.sms_status(first, "undelivered", "30003")
    status_phase = cap.records()

    queries = {k: r["Properties"]["QueryString"] for k, r in load_template(REPO / "template.yaml")["Resources"].items()
               if r["Type"] == "AWS::Logs::QueryDefinition"}
    missing = _fields(queries["WhyNoAlertQuery"]) - _keys(clip_phase)
    assert not missing, f"why-no-alert query reads fields no classify/notify line carries: {missing}"
    missing = _fields(queries["IncidentHistoryQuery"]) - _keys(clip_phase + escalate_phase + status_phase)
    assert not missing, f"incident query reads fields no notify/escalate/sms_reply line carries: {missing}"
    # "What happened to incident X" finds it in each function's lines.
    (inc,) = [i for i in store.list_incidents() if i["site_id"] == "logq"]
    for phase, name in ((clip_phase, "notify"), (escalate_phase, "escalate"), (status_phase, "sms_reply")):
        assert any(r.get("incident_id") == inc["incident_id"] for r in phase), name
    # The core's lines keep Powertools' JSON format and the handler's correlation keys.
    core = [r for r in clip_phase if str(r.get("name", "")).startswith("sentinela.")]
    assert core and all("clip_id" in r for r in core)
    steps = {(r.get("step"), r.get("status")) for r in escalate_phase + status_phase}
    assert {("esc1", "sent"), ("esc2", "exhausted"), ("open", "undelivered")} <= steps
