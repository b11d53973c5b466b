"""Incidents: alerts at one site and class group join one open incident; only its opening texts.

An alert item (one per clip and threat) goes through the site's policy (threshold, confirmation); a
confirmed alert joins the open incident of its site and class group while it comes within the policy's
window of the last one heard, else it opens a new one (a transaction on the site's slot for that group:
two clips landing at once open one incident, the other joins it). The opening texts the on-call rangers
(primary ones; a backup or the site lead when none is on call); later alerts only update the incident,
and one of them, heard at least ``still_hearing_after_s`` after the opening, sends a single "still
hearing it" update to the rangers already texted. Nobody acknowledging within ``escalation_delay_s``
texts the next on-call ranger, then the site lead (:meth:`IncidentService.escalate_due`, on a schedule).
Replies by SMS move the incident: open -> acknowledged -> resolved | false_alarm, with who and when.

Every send is claimed per (incident, channel, ranger, step) before it goes out (``Store.claim_send``), so a
redelivered stream batch or a re-run sweep never texts anyone twice. The clock is :func:`utcnow`
(:mod:`sentinela.domain.clock`; tests and replays pin it) or the ``now`` argument.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sentinela.adapters.metrics import MetricSink, NullMetrics
from sentinela.domain import clock
from sentinela.domain.alert import Alert
from sentinela.domain.channel import ChannelError, DeliveryReport, Sender, channel_metric
from sentinela.domain.messages import (
    render_alert,
    render_audio_link,
    render_escalation,
    render_note,
    render_reply,
    render_update,
)
from sentinela.domain.phone import mask_phone
from sentinela.domain.policy import (
    ClassPolicy,
    Step,
    class_policy,
    class_traits,
    evaluate,
    policy_limit,
    span_start,
)
from sentinela.domain.repositories import Repositories
from sentinela.services.roster import is_on_call

log = logging.getLogger(__name__)

ACTIVE = ("open", "acknowledged")
CLOSED = ("resolved", "false_alarm")
ACK_WORDS = {"1", "SI", "VOY", "YES", "Y", "OK"}
FALSE_WORDS = {"2", "FALSA", "FALSE", "NO"}
RESOLVE_WORDS = {"3", "FIN", "RESUELTO", "RESOLVED", "DONE"}
REPLY_MEMORY_S = 30 * 24 * 3600  # how long a reply's message id is remembered (channels retry within minutes)
_REF = re.compile(r"^[0-9A-F]{6}$")


def incident_ref(incident_id: str) -> str:
    """Six characters a ranger can read out on the radio."""
    return hashlib.sha1(incident_id.encode()).hexdigest()[:6].upper()


def reply_code(body: str) -> str | None:
    """"1", "SI", "SÍ", "Voy!" -> "acknowledged"; "2", "FALSA" -> "false_alarm"; "3", "FIN" -> "resolved"."""
    text = unicodedata.normalize("NFKD", body).encode("ascii", "ignore").decode().upper()
    words = "".join(c if c.isalnum() else " " for c in text).split()
    first = words[0] if words else ""
    if first in ACK_WORDS:
        return "acknowledged"
    if first in FALSE_WORDS:
        return "false_alarm"
    if first in RESOLVE_WORDS:
        return "resolved"
    return None


def reply_ref(body: str) -> str | None:
    """The incident a reply names: ``1 643830``, ``2 643830``, ``voy 643830`` -> "643830" (upper case)."""
    text = unicodedata.normalize("NFKD", body).encode("ascii", "ignore").decode().upper()
    words = "".join(c if c.isalnum() else " " for c in text).split()
    return next((w for w in words[1:3] if _REF.match(w)), None)


class RetryLater(Exception):
    """A send that may succeed later (a channel's 429/5xx, timeouts): the stream record is retried."""


@dataclass
class NotifyResult:
    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retry: bool = False  # a failure that may succeed later: the stream record is retried
    incident_id: str | None = None  # the incident the alert opened or joined (for the handler's log line)
    outcome: str | None = None  # opened | joined | held


@dataclass
class EscalationResult:
    checked: int = 0
    escalated: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class IncidentService:
    def __init__(self, store: Repositories, channels: Sender | Sequence[Sender], *, metrics: MetricSink | None = None,
                 policy: Mapping[str, Any] | None = None, status_callback: str | None = None,
                 presign: Callable[[Alert], str] | None = None, link_minutes: int = 60) -> None:
        self.store = store
        # In order of preference: a ranger is texted on the first channel that has an address for them.
        self.channels: tuple[Sender, ...] = tuple(channels) if isinstance(channels, Sequence) else (channels,)
        self.metrics: MetricSink = metrics or NullMetrics()
        self.policy = policy
        self.status_callback = status_callback
        self.presign = presign  # None: no audio links (the default)
        self.link_minutes = link_minutes

    # --- alerts ---------------------------------------------------------------------------------
    def on_alert(self, alert: Alert, now: datetime | None = None) -> NotifyResult:
        res = NotifyResult()
        at = now or clock.now()
        site = self.store.get_site(alert.site_id) or {"site_id": alert.site_id}
        cp = class_policy(alert.threat, site, self.policy)
        link = self.store.incident_link(alert.clip_id, alert.threat)
        if link is None:
            verdict = evaluate(alert, cp, self._clip_events(alert), self._earlier_alerts(alert, cp),
                               self._stronger(alert, cp, site))
            if not verdict.alert:
                self.store.annotate_alert(alert.clip_id, alert.threat, {
                    "outcome": "held", "decision_reason": verdict.reason,
                    "decision_trace": [s.as_dict() for s in verdict.trace], "policy": cp.as_dict()})
                self.metrics.add_metric("AlertsHeld", "Count", 1)
                res.outcome = "held"
                return res
            trace = verdict.trace
            role, incident = self._attach(alert, site, cp, at, trace)
        else:  # a redelivery: carry on where the first delivery stopped (sends are claimed, never doubled)
            role, incident = str(link["role"]), self.store.get_incident(str(link["incident_id"]))
            trace = [Step("redelivery", "pass", f"alert already {role} incident {link['incident_id']}")]
        if incident is None:
            log.warning("incident for %s/%s vanished", alert.clip_id, alert.threat,
                        extra={"clip_id": alert.clip_id, "threat": alert.threat})
            return res
        res.incident_id, res.outcome = str(incident["incident_id"]), role
        if role == "opened":
            self._send_opening(incident, alert, site, at, res)
        else:
            self._maybe_update(incident, alert, site, cp, trace, res)
        self.store.annotate_alert(alert.clip_id, alert.threat, {
            "outcome": role, "incident_id": incident["incident_id"], "incident_ref": incident["ref"],
            "decision_trace": [s.as_dict() for s in trace], "policy": cp.as_dict()})
        if res.retry:
            raise RetryLater(f"{len(res.failed)} send(s) failed and may succeed later")
        return res

    def _stronger(self, alert: Alert, cp: ClassPolicy, site: Mapping[str, Any]) -> list[str]:
        """The classes ``alert`` yields to that this clip alerted above their own policy thresholds.
        classify writes a clip's alert items in class order (chainsaw before engine) before any of them
        reaches notify, so they are all there to read."""
        if not cp.yields_to:
            return []
        out = []
        for other in self.store.alerts(alert.clip_id):
            threat = other.threat
            if threat in cp.yields_to and threat != alert.threat:
                limit, _ = policy_limit(other, class_policy(threat, site, self.policy))
                if other.confidence >= limit:
                    out.append(threat)
        return out

    def _clip_events(self, alert: Alert) -> list[dict[str, Any]]:
        return [{"t": d.get("start_s", 0), "n": d.get("alerting_windows", 0)}
                for d in self.store.detections(alert.clip_id)
                if d.get("kind") == "threat" and d.get("label") == alert.threat]

    def _earlier_alerts(self, alert: Alert, cp: ClassPolicy) -> list[Alert]:
        if not cp.confirm.across_clips or not alert.recorded_at or cp.confirm.windows <= 1:
            return []
        rec = alert.recorded_at
        return [a for a in self.store.alerts_between(alert.site_id, span_start(alert, cp), rec)
                if a.device_id == alert.device_id and a.threat == alert.threat
                and a.clip_id != alert.clip_id and str(a.recorded_at) <= rec]

    def _attach(self, alert: Alert, site: Mapping[str, Any], cp: ClassPolicy, at: datetime,
                trace: list[Step]) -> tuple[str, dict[str, Any] | None]:
        """Join the site's open incident for the group, or open one. Race-free: both are transactions,
        and losing a race (another clip opened it first, or it closed meanwhile) means looking again."""
        heard = str(alert.recorded_at or clock.iso(at))
        for _ in range(5):
            slot = self.store.open_slot(alert.site_id, cp.group)
            current = self.store.get_incident(str(slot["incident_id"])) if slot else None
            why_new = "no open incident"
            if current is not None:
                gap = (clock.parse_time(heard) - clock.parse_time(str(current["last_heard"]))).total_seconds()
                if current["state"] not in ACTIVE:
                    why_new = f"incident {current['ref']} is {current['state']}"
                elif gap > cp.window_s:
                    why_new = f"{gap:.0f} s since incident {current['ref']} was last heard > window {cp.window_s:g} s"
                else:
                    got = self.store.join_incident(str(current["incident_id"]), alert, heard)
                    if got in ("joined", "linked"):
                        trace.append(Step("incident", "joined", f"joined incident {current['ref']}: heard "
                                          f"{max(gap, 0):.0f} s after the last detection, window "
                                          f"{cp.window_s:g} s; no SMS (only the opening texts)",
                                          {"gap_s": round(gap, 1), "window_s": cp.window_s}))
                        return "joined", self.store.get_incident(str(current["incident_id"]))
                    continue  # closed meanwhile: look again
            incident = self._new_incident(alert, site, cp, at, heard, why_new)
            got = self.store.create_incident(incident, alert, str(slot["incident_id"]) if slot else None)
            if got == "opened":
                trace.append(Step("incident", "opened", f"opened incident {incident['ref']} ({why_new})",
                                  {"window_s": cp.window_s, "escalation_delay_s": cp.escalation_delay_s}))
                self.metrics.add_metric("IncidentsOpened", "Count", 1)
                return "opened", incident
            if got == "linked":
                link = self.store.incident_link(alert.clip_id, alert.threat) or {}
                return str(link.get("role", "joined")), self.store.get_incident(str(link.get("incident_id")))
        raise RetryLater("the incident slot kept changing; retrying the record")

    def _new_incident(self, alert: Alert, site: Mapping[str, Any], cp: ClassPolicy, at: datetime,
                      heard: str, why: str) -> dict[str, Any]:
        stamp = heard.replace("-", "").replace(":", "")[:16]
        tail = hashlib.sha1(f"{alert.clip_id}|{alert.threat}".encode()).hexdigest()[:6]
        iid = f"{alert.site_id}/{cp.group}/{stamp}-{tail}"
        due = clock.iso(at + timedelta(seconds=cp.escalation_delay_s))
        return {
            "incident_id": iid, "ref": incident_ref(iid), "site_id": alert.site_id,
            "site_name": site.get("name") or alert.site_id, "group": cp.group, "threat": alert.threat,
            "state": "open", "opened_at": clock.iso(at), "first_heard": heard, "last_heard": heard,
            "alerts": 1, "max_confidence": alert.confidence, "confidence": alert.confidence,
            "opened_by": alert.member_id, "device_id": alert.device_id,
            "escalation_level": 0, "escalate_at": due, "gsi1pk": "ESCALATE", "gsi1sk": f"{due}#{iid}",
            "policy": cp.as_dict(), "trace": [f"{clock.iso(at)} opened: {why}"],
        }

    # --- texting --------------------------------------------------------------------------------
    def _rangers(self, site_id: str) -> list[dict[str, Any]]:
        return self.store.rangers(site_id)

    def _texted(self, incident_id: str) -> dict[str, dict[str, Any]]:
        return {str(s["ranger_id"]): s for s in self.store.sends(f"INC#{incident_id}")
                if s.get("status") in ("sent", "sending", "failed_retry")}

    def _next_candidate(self, incident: Mapping[str, Any], site: Mapping[str, Any], at: datetime,
                        exclude: set[str]) -> tuple[dict[str, Any] | None, str]:
        """The next ranger to text when the first choice failed or nobody answered: the next on-call
        ranger (by order) not texted yet, then the site lead (even off shift: escalation's last resort)."""
        rangers = self._rangers(incident["site_id"])
        for r in rangers:
            if r["ranger_id"] not in exclude and is_on_call(r, site, at):
                return r, "next on-call ranger"
        lead = next((r for r in rangers if r["ranger_id"] == site.get("lead")), None)
        if lead and lead["ranger_id"] not in exclude and not lead.get("number_invalid") \
                and lead.get("on_call", True) is not False:
            return lead, "site lead"
        return None, "nobody left to text"

    def _send_opening(self, incident: Mapping[str, Any], alert: Alert, site: Mapping[str, Any],
                      at: datetime, res: NotifyResult) -> None:
        rangers = self._rangers(incident["site_id"])
        on_call = [r for r in rangers if is_on_call(r, site, at)]
        first = [r for r in on_call if r.get("role", "primary") != "backup"] or on_call[:1]
        if not first:
            lead, _ = self._next_candidate(incident, site, at, set())
            first = [lead] if lead else []
        if not first:
            self.metrics.add_metric("AlertsWithoutRanger", "Count", 1)
            log.warning("no on-call ranger for site %s: nobody texted", incident["site_id"],
                        extra={"incident_id": incident["incident_id"], "step": "open", "status": "no_ranger"})
            self.store.update_incident(incident["incident_id"], {}, append_trace=[
                f"{clock.iso(at)} nobody on call at {incident['site_id']}: no SMS; escalation will retry"])
            return
        queue, tried = list(first), {r["ranger_id"] for r in first} | {
            r["ranger_id"] for r in rangers if r.get("number_invalid")}
        device = self._device(alert.site_id, alert.device_id)
        while queue:
            r = queue.pop(0)
            body = render_alert(alert, dict(site), r.get("lang", "es"), str(incident["ref"]), device, at)
            status = self._text(incident, r, "open", body, res)
            # audio_link false (human_voice): privacy, people's voices are never sent out as links
            if status == "sent" and self.presign and class_traits(alert.threat, self.policy).audio_link:
                link = self._audio_link(alert)
                if link:
                    self._text(incident, r, "audio", render_audio_link(str(incident["ref"]), link,
                                                                       r.get("lang", "es"), self.link_minutes), res)
            if status == "failed_permanent":  # move on to the next ranger in their place
                nxt, why = self._next_candidate(incident, site, at, tried)
                if nxt is not None:
                    tried.add(nxt["ranger_id"])
                    queue.append(nxt)
                    self.store.update_incident(incident["incident_id"], {}, append_trace=[
                        f"{clock.iso(at)} {r['ranger_id']}'s number failed permanently: "
                        f"texting {nxt['ranger_id']} ({why})"])

    def _device(self, site_id: Any, device_id: Any) -> dict[str, Any] | None:
        """The recorder's registry item (its coordinates place the map link); None when unregistered."""
        return self.store.get_device(str(site_id), str(device_id)) if site_id and device_id else None

    def _audio_link(self, alert: Alert) -> str | None:
        try:
            return self.presign(alert) if self.presign else None
        except Exception as exc:  # a link is a convenience: the alert goes out without it
            log.warning("no audio link for %s: %s", alert.clip_id, exc, extra={"clip_id": alert.clip_id})
            return None

    def _callback(self, incident_id: str, step: str, ranger_id: str) -> str | None:
        if not self.status_callback:
            return None
        q = urllib.parse.urlencode({"i": incident_id, "s": step, "r": ranger_id})
        return f"{self.status_callback}?{q}"

    def _reach(self, ranger: Mapping[str, Any]) -> tuple[Sender, str] | None:
        for channel in self.channels:
            to = channel.address(ranger)
            if to:
                return channel, to
        return None

    def _text(self, incident: Mapping[str, Any], ranger: Mapping[str, Any], step: str, body: str,
              res: NotifyResult) -> str:
        """Claim, send, record. Returns "sent", "skipped" (already done), "failed_retry" or "failed_permanent"."""
        pk, rid = f"INC#{incident['incident_id']}", str(ranger["ranger_id"])
        reach = self._reach(ranger)
        if reach is None:  # on no channel at all: nothing to retry, the next ranger in their place
            log.warning("ranger %s has no address on any channel", rid, extra={
                "incident_id": incident["incident_id"], "step": step, "status": "failed_permanent", "ranger_id": rid})
            res.failed.append(rid)
            return "failed_permanent"
        channel, to = reach
        label = channel.name.upper()  # "SMS sent" in log lines
        record = {"to": to, "body": body, "ranger_id": rid, "step": step, "incident_id": incident["incident_id"],
                  "ref": incident["ref"], "site_id": incident["site_id"], "threat": incident["threat"],
                  "lang": ranger.get("lang", "es"),
                  "gsi1pk": f"TO#{to}", "gsi1sk": f"{clock.iso(clock.now())}#{incident['incident_id']}"}
        if not self.store.claim_send(pk, channel.name, rid, step, record):
            res.skipped.append(rid)
            return "skipped"
        try:
            sent = channel.send(to, body, self._callback(str(incident["incident_id"]), step, rid))
        except ChannelError as exc:
            status = "failed_permanent" if exc.permanent else "failed_retry"
            self.store.record_send(pk, channel.name, rid, step,
                                   {"status": status, "error_code": exc.code, "error": str(exc)})
            self.metrics.add_metric(channel_metric(channel.name, "Failed"), "Count", 1)
            log.warning("%s to %s failed: %s", label, mask_phone(to), exc,
                        extra={"incident_id": incident["incident_id"], "step": step, "status": status,
                               "ranger_id": rid, "error_code": exc.code, "channel": channel.name})
            res.failed.append(rid)
            if exc.permanent:
                self.store.mark_number_invalid(to, exc.code, str(exc))
                self.metrics.add_metric("NumbersMarkedInvalid", "Count", 1)
            else:
                res.retry = True
            return status
        self.store.record_send(pk, channel.name, rid, step, {"status": "sent", "sid": sent.id})
        self.metrics.add_metric(channel_metric(channel.name, "Sent"), "Count", 1)
        log.info("%s sent", label, extra={"incident_id": incident["incident_id"], "step": step, "status": "sent",
                                          "ranger_id": rid, "channel": channel.name})
        res.sent.append(rid)
        return "sent"

    def _maybe_update(self, incident: dict[str, Any], alert: Alert, site: Mapping[str, Any],
                      cp: ClassPolicy, trace: list[Step], res: NotifyResult) -> None:
        """One "still hearing it" update per incident, for a detection after the quiet interval."""
        me = alert.member_id
        heard = str(alert.recorded_at or incident["last_heard"])
        since = (clock.parse_time(heard) - clock.parse_time(str(incident["first_heard"]))).total_seconds()
        if incident.get("update_by") not in (None, me):
            return
        if incident.get("update_by") is None:
            if incident["state"] not in ACTIVE or since < cp.still_hearing_after_s:
                trace.append(Step("still_hearing", "held", f"no update: {since:.0f} s since the opening "
                                  f"< quiet interval {cp.still_hearing_after_s:g} s"
                                  if incident["state"] in ACTIVE else f"no update: incident {incident['state']}",
                                  {"since_open_s": round(since, 1), "quiet_s": cp.still_hearing_after_s}))
                return
            if not self.store.update_incident(incident["incident_id"], {"update_by": me, "update_at": heard},
                                              expect={"update_by": None, "state": ACTIVE}):
                return  # another detection claimed the one update first
            incident = self.store.get_incident(str(incident["incident_id"])) or incident
        texted = sorted({str(s["ranger_id"]) for s in self.store.sends(f"INC#{incident['incident_id']}")
                         if s.get("status") == "sent" and s.get("step") not in ("update", "audio")})
        by_id = {r["ranger_id"]: r for r in self._rangers(incident["site_id"])}
        sent_to = 0
        for rid in texted:
            r = by_id.get(rid)
            if r is None or r.get("number_invalid"):
                continue
            body = render_update(incident, alert, dict(site), r.get("lang", "es"))
            if self._text(incident, r, "update", body, res) == "sent":
                sent_to += 1
        trace.append(Step("still_hearing", "sent", f"still hearing it {since:.0f} s after the opening "
                          f"(quiet interval {cp.still_hearing_after_s:g} s): one update to {sent_to} ranger(s)",
                          {"since_open_s": round(since, 1), "quiet_s": cp.still_hearing_after_s}))

    # --- escalation -----------------------------------------------------------------------------
    def escalate_due(self, now: datetime | None = None) -> EscalationResult:
        at = now or clock.now()
        out = EscalationResult()
        for inc in self.store.incidents_due(clock.iso(at)):
            out.checked += 1
            iid = str(inc["incident_id"])
            if inc.get("state") != "open":  # acknowledged or closed: leave the escalation index
                self.store.update_incident(iid, {}, remove=("gsi1pk", "gsi1sk"))
                continue
            site = self.store.get_site(inc["site_id"]) or {"site_id": inc["site_id"]}
            cp = class_policy(str(inc["threat"]), site, self.policy)
            level = int(inc.get("escalation_level", 0))
            step = f"esc{level + 1}"
            res = NotifyResult()
            texted = set(self._texted(iid))
            tried = texted | {r["ranger_id"] for r in self._rangers(inc["site_id"]) if r.get("number_invalid")}
            redo = [s for s in self.store.sends(f"INC#{iid}") if s.get("step") == step
                    and s.get("status") in ("sending", "failed_retry")]  # a sweep that stopped half-way
            target: dict[str, Any] | None = None
            why = "retry"
            if redo:
                target = next((r for r in self._rangers(inc["site_id"]) if r["ranger_id"] == redo[0]["ranger_id"]),
                              None)
            status = "none"
            while True:
                if target is None:
                    target, why = self._next_candidate(inc, site, at, tried)
                if target is None:
                    break
                tried.add(target["ranger_id"])
                minutes = round((at - clock.parse_time(str(inc["opened_at"]))).total_seconds() / 60)
                body = render_escalation(inc, site, target.get("lang", "es"), minutes,
                                         self._device(inc.get("site_id"), inc.get("device_id")))
                status = self._text(inc, target, step, body, res)
                if status in ("sent", "skipped", "failed_retry"):
                    break
                target = None  # permanent failure: the next one
            if status == "failed_retry":
                out.failed.append(iid)
                continue
            if target is None:
                self.store.update_incident(iid, {"escalation": "exhausted"}, remove=("gsi1pk", "gsi1sk"),
                                           expect={"state": "open", "escalation_level": level},
                                           append_trace=[f"{clock.iso(at)} escalation: nobody left to text"])
                # Nobody acknowledged and nobody is left to text: ops must hear of it (an alarm).
                self.metrics.add_metric("EscalationExhausted", "Count", 1)
                log.warning("escalation exhausted: nobody left to text", extra={
                    "incident_id": iid, "step": step, "status": "exhausted", "threat": inc.get("threat")})
                out.exhausted.append(iid)
                continue
            due = clock.iso(at + timedelta(seconds=cp.escalation_delay_s))
            self.store.update_incident(
                iid, {"escalation_level": level + 1, "escalate_at": due, "gsi1sk": f"{due}#{iid}"},
                expect={"state": "open", "escalation_level": level},
                append_trace=[f"{clock.iso(at)} escalated ({step}) to {target['ranger_id']} ({why}): "
                              f"no acknowledgement {cp.escalation_delay_s:g} s after the last text"])
            self.metrics.add_metric("IncidentsEscalated", "Count", 1)
            log.info("escalated", extra={"incident_id": iid, "step": step, "status": status,
                                         "ranger_id": target["ranger_id"], "threat": inc.get("threat")})
            out.escalated.append(iid)
        return out

    # --- replies --------------------------------------------------------------------------------
    def _active_incidents_texted(self, phone: str) -> Iterator[dict[str, Any]]:
        """The active incidents this number was texted about, the latest first, each once."""
        seen: set[str] = set()
        for s in self.store.sends_to(phone):
            iid = str(s.get("incident_id") or "")
            if not iid or iid in seen:
                continue
            seen.add(iid)
            inc = self.store.get_incident(iid)
            if inc and inc.get("state") in ACTIVE:
                yield inc

    def latest_active_incident(self, phone: str) -> dict[str, Any] | None:
        return next(self._active_incidents_texted(phone), None)

    def reply(self, phone: str, body: str, now: datetime | None = None, message_id: str | None = None) -> str:
        """A ranger's reply -> the incident's new state; returns the text to answer with.

        With the channel's ``message_id`` the reply acts at most once: a replayed or retried webhook (same
        signed POST) gets the first answer again and changes nothing."""
        at = now or clock.now()
        if not message_id:
            return self._reply(phone, body, at)
        claim = {"from_masked": mask_phone(phone), "body": body.strip()[:160], "received_at": clock.iso(at)}
        if not self.store.claim_reply(message_id, claim, int(at.timestamp()) + REPLY_MEMORY_S):
            prior = self.store.get_reply(message_id) or {}
            self.metrics.add_metric("RepliesReplayed", "Count", 1)
            log.warning("reply %s was already received (%s): not acted on again", message_id,
                        prior.get("received_at"))
            rangers = self.store.rangers_by_phone(phone)
            return str(prior.get("answer") or render_note(
                "duplicate", str(rangers[0].get("lang", "es")) if rangers else "es"))
        try:
            answer = self._reply(phone, body, at)
        except Exception:
            self.store.release_reply(message_id)
            raise
        self.store.finish_reply(message_id, {"answer": answer, "answered_at": clock.iso(clock.now()),
                                             "reply_status": "done"})
        return answer

    def _incident_by_ref(self, phone: str, ref: str) -> dict[str, Any] | None:
        """The incident ``ref`` among those this number was texted about (a ranger names only their own)."""
        for s in self.store.sends_to(phone, limit=200):
            if str(s.get("ref", "")).upper() == ref and s.get("incident_id"):
                return self.store.get_incident(str(s["incident_id"]))
        return None

    def _pending_false(self, phone: str, at: datetime) -> dict[str, Any] | None:
        """An active incident on which this number's ranger asked for a false alarm, awaiting the second 2."""
        return next((inc for inc in self._active_incidents_texted(phone)
                     if inc.get("false_pending_phone") == phone and self._pending_fresh(inc, at)), None)

    def _false_alarm_confirm_s(self, inc: Mapping[str, Any]) -> float | None:
        """A "2" on this class closes the incident only with a second "2" from the same ranger within
        this many seconds (the policy's false_alarm_confirm_s: a slip of the thumb must not silence a
        gunshot); None: the first "2" closes it."""
        return class_traits(str(inc.get("threat")), self.policy).false_alarm_confirm_s

    def _pending_fresh(self, inc: Mapping[str, Any], at: datetime) -> bool:
        window = self._false_alarm_confirm_s(inc)
        pending = inc.get("false_pending_at")
        return bool(window and pending and 0 <= (at - clock.parse_time(str(pending))).total_seconds() <= window)

    def _reply(self, phone: str, body: str, at: datetime) -> str:
        rangers = self.store.rangers_by_phone(phone)
        if not rangers:
            log.info("reply from an unknown number %s", mask_phone(phone))
            return render_reply("unknown_number", "es")
        lang = str(rangers[0].get("lang", "es"))
        code, named = reply_code(body), reply_ref(body)
        if named:
            inc = self._incident_by_ref(phone, named)
            if inc is None:
                return render_note("unknown_ref", lang, ref=named)
        else:
            inc = (self._pending_false(phone, at) if code == "false_alarm" else None) \
                or self.latest_active_incident(phone)
            if inc is None:
                return render_reply("no_incident", lang)
        ranger = next((r for r in rangers if r.get("site_id") == inc["site_id"]), rangers[0])
        who, ref, iid = str(ranger["ranger_id"]), str(inc["ref"]), str(inc["incident_id"])
        if inc["state"] in CLOSED:  # named, or closed meanwhile: nothing moves, and the ranger is told so
            return render_note("closed", lang, ref=ref, state=str(inc["state"]))
        note = f"{clock.iso(at)} reply from {who}: {body.strip()[:40]!r}"
        if code is None:
            self.store.update_incident(iid, {}, append_trace=[note + " -> help text"])
            return render_reply("help", lang, ref=ref)
        if code == "acknowledged":
            if inc["state"] == "acknowledged":
                return render_reply("already", lang, ref=ref, name=str(inc.get("acknowledged_by_name", "")))
            ok = self.store.update_incident(iid, {"state": "acknowledged", "acknowledged_by": who,
                                                  "acknowledged_by_name": ranger.get("name", who),
                                                  "acknowledged_at": clock.iso(at)},
                                            remove=("gsi1pk", "gsi1sk"), expect={"state": "open"},
                                            append_trace=[note + " -> acknowledged"])
            if not ok:
                return self._answer_changed(iid, phone, body, at, lang)
            self.metrics.add_metric("IncidentsAcknowledged", "Count", 1)
            self._tell_others(inc, ranger, phone, at)
            return render_reply("acknowledged", lang, ref=ref, name=str(ranger.get("name", who)))
        expect: dict[str, Any] = {"state": ACTIVE}
        window = self._false_alarm_confirm_s(inc) if code == "false_alarm" else None
        if window:
            if not (inc.get("false_pending_phone") == phone and self._pending_fresh(inc, at)):
                # A slip of the thumb must not silence a gunshot: the first 2 only asks for a second one.
                ok = self.store.update_incident(
                    iid, {"false_pending_phone": phone, "false_pending_by": who, "false_pending_at": clock.iso(at)},
                    expect={"state": ACTIVE},
                    append_trace=[note + f" -> false alarm asked: waiting for a second 2 within {window:g} s"])
                if not ok:
                    return self._answer_changed(iid, phone, body, at, lang)
                return render_note("confirm_false", lang, ref=ref, threat=str(inc["threat"]),
                                   minutes=round(window / 60))
            expect["false_pending_at"] = inc["false_pending_at"]
        ok = self.store.update_incident(iid, {"state": code, "closed_by": who, "closed_at": clock.iso(at)},
                                        remove=("gsi1pk", "gsi1sk"), expect=expect,
                                        append_trace=[note + f" -> {code}"])
        if not ok:
            return self._answer_changed(iid, phone, body, at, lang)
        if code == "false_alarm":
            for m in self.store.incident_members(iid):
                self.store.label_clip(str(m["clip_id"]), "false_alarm", who, clock.iso(at), iid)
            self.metrics.add_metric("IncidentsFalseAlarm", "Count", 1)
        else:
            self.metrics.add_metric("IncidentsResolved", "Count", 1)
        return render_reply(code, lang, ref=ref, name=str(ranger.get("name", who)))

    def _answer_changed(self, iid: str, phone: str, body: str, at: datetime, lang: str) -> str:
        """The incident changed between reading and writing it: answer from its new state."""
        inc = self.store.get_incident(iid)
        if inc is None or inc.get("state") in CLOSED:
            return render_note("closed", lang, ref=str((inc or {}).get("ref", "")),
                               state=str((inc or {}).get("state", "")))
        return self._reply(phone, body, at)

    def _tell_others(self, inc: Mapping[str, Any], ranger: Mapping[str, Any], phone: str, at: datetime) -> None:
        """One short note to every other ranger texted about the incident: someone is on the way."""
        iid = str(inc["incident_id"])
        texted = {str(s["ranger_id"]) for s in self.store.sends(f"INC#{iid}")
                  if s.get("status") == "sent" and s.get("step") not in ("audio", "ack_note")}
        by_id = {str(r["ranger_id"]): r for r in self._rangers(str(inc["site_id"]))}
        res = NotifyResult()
        for rid in sorted(texted - {str(ranger["ranger_id"])}):
            r = by_id.get(rid)
            if r is None or r.get("number_invalid") or r.get("phone") == phone:
                continue
            body = render_note("ack_note", str(r.get("lang", "es")), ref=str(inc["ref"]),
                               name=str(ranger.get("name", ranger["ranger_id"])))
            self._text(inc, r, "ack_note", body, res)
        if res.sent or res.failed:
            self.store.update_incident(iid, {}, append_trace=[
                f"{clock.iso(at)} told {len(res.sent)} other ranger(s) that {ranger['ranger_id']} is on the way"
                + (f"; {len(res.failed)} note(s) failed" if res.failed else "")])

    def delivery_status(self, report: DeliveryReport) -> bool:
        """A channel's delivery report (our status callback's query names the send) -> its delivery status."""
        iid, step, rid = report.callback.get("i"), report.callback.get("s"), report.callback.get("r")
        if not (iid and step and rid and report.status):
            return False
        fields: dict[str, Any] = {"delivery_status": report.status, "delivery_sid": report.message_id}
        if report.error_code:
            fields["delivery_error_code"] = report.error_code
        if not self.store.record_delivery(f"INC#{iid}", report.channel, rid, step, fields):
            log.info("delivery report for an unknown send", extra={"incident_id": iid, "step": step,
                                                                   "ranger_id": rid, "channel": report.channel})
            return False
        if report.undelivered:
            # The channel accepted the text but the phone never got it: the send looked fine, so only this
            # report can tell ops (an alarm on SmsUndelivered).
            self.metrics.add_metric(channel_metric(report.channel, "Undelivered"), "Count", 1)
            log.warning("%s undelivered", report.channel.upper(), extra={
                "incident_id": iid, "step": step, "status": report.status, "ranger_id": rid,
                "error_code": report.error_code, "channel": report.channel})
        return True
