"""Alert policy as data: per threat class, overridable per site; every decision leaves a trace.

The policy file (``policy.yaml`` beside this module, or ``POLICY_FILE``) has ``defaults`` and
``classes.<threat>``; a site item's ``policy`` has the same shape and wins. :func:`evaluate` applies
the threshold and the confirmation rule to one alert item and returns the verdict with its trace: a
list of steps, each naming the rule, whether it passed or held, and the numbers it compared.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sentinela.domain.alert import Alert
from sentinela.domain.card import THREAT_CLASSES

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
KNOWN_KEYS = {"threshold", "confirm", "window_s", "escalation_delay_s", "still_hearing_after_s", "group",
              "yields_to"}
CONFIRM_KEYS = {"windows", "within_s", "across_clips"}
QUIET = "quiet"  # a threshold that names the model card's quiet operating point
EARLIER_CLIP_SLACK_S = 600


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class Confirm:
    windows: int = 1
    within_s: float = 60.0
    across_clips: bool = True


@dataclass(frozen=True)
class ClassPolicy:
    threat: str
    group: str
    threshold: float | str | None  # a number, "quiet" (the card's quiet operating point) or None (the card's)
    confirm: Confirm
    window_s: float
    escalation_delay_s: float
    still_hearing_after_s: float
    yields_to: tuple[str, ...] = ()  # held when the same clip alerted one of these classes (above its threshold)

    def as_dict(self) -> dict[str, Any]:
        return {"threat": self.threat, "group": self.group, "threshold": self.threshold,
                "confirm": {"windows": self.confirm.windows, "within_s": self.confirm.within_s,
                            "across_clips": self.confirm.across_clips},
                "window_s": self.window_s, "escalation_delay_s": self.escalation_delay_s,
                "still_hearing_after_s": self.still_hearing_after_s, "yields_to": list(self.yields_to)}


@dataclass(frozen=True)
class Step:
    rule: str
    result: str  # "pass" | "held" | an outcome word ("opened", "joined", "sent" ...)
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "result": self.result, "detail": self.detail} | (
            {"numbers": self.numbers} if self.numbers else {})


@dataclass(frozen=True)
class Verdict:
    alert: bool
    trace: list[Step]

    @property
    def reason(self) -> str:
        held = [s for s in self.trace if s.result == "held"]
        return held[0].detail if held else "; ".join(s.detail for s in self.trace)


def _check(raw: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    for section in ("defaults",):
        unknown = set(raw.get(section) or {}) - KNOWN_KEYS
        if unknown:
            problems.append(f"{where}: {section}: unknown key(s) {sorted(unknown)}")
    for threat, over in (raw.get("classes") or {}).items():
        if not isinstance(over, Mapping):
            problems.append(f"{where}: classes.{threat}: expected a mapping")
            continue
        unknown = set(over) - KNOWN_KEYS
        if unknown:
            problems.append(f"{where}: classes.{threat}: unknown key(s) {sorted(unknown)}")
    for name, sec in [("defaults", raw.get("defaults") or {})] + [
            (f"classes.{t}", o) for t, o in (raw.get("classes") or {}).items() if isinstance(o, Mapping)]:
        conf = sec.get("confirm")
        if conf is not None and (not isinstance(conf, Mapping) or set(conf) - CONFIRM_KEYS):
            problems.append(f"{where}: {name}.confirm: expected keys among {sorted(CONFIRM_KEYS)}")
        for k in ("window_s", "escalation_delay_s", "still_hearing_after_s"):
            if k in sec and (not isinstance(sec[k], int | float) or sec[k] < 0):
                problems.append(f"{where}: {name}.{k} must be a number >= 0")
        problems += _check_yields(sec.get("yields_to"), name, where)
        t = sec.get("threshold")
        if t is not None and t != QUIET and (not isinstance(t, int | float) or not 0 <= t <= 1):
            problems.append(f"{where}: {name}.threshold must be null, '{QUIET}' or a number within 0..1")
    return problems


def _check_yields(ylds: Any, name: str, where: str) -> list[str]:
    """``yields_to`` of section ``name`` ("defaults" or "classes.<threat>")."""
    if ylds is None:
        return []
    if not isinstance(ylds, list) or any(y not in THREAT_CLASSES for y in ylds):
        return [f"{where}: {name}.yields_to must be a list of threat classes ({', '.join(THREAT_CLASSES)})"]
    threat = name.removeprefix("classes.")
    if threat not in THREAT_CLASSES:
        return [f"{where}: {name}.yields_to: set it per class (classes.<class>.yields_to), not for all"] if ylds else []
    # classify writes a clip's alert items in class order; notify may read the clip before a later class's
    # item exists, so a class can only reliably yield to one written before it
    later = [y for y in ylds if THREAT_CLASSES.index(y) >= THREAT_CLASSES.index(threat)]
    if later:
        return [f"{where}: {name}.yields_to: {later} come(s) after {threat} in the class order "
                f"({', '.join(THREAT_CLASSES)}); a class can only yield to one before it"]
    return []


def validate_override(raw: Any, where: str = "policy") -> list[str]:
    """Problems with a policy (file or a site's override), as sentences; empty when it is fine."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [f"{where}: expected a mapping with 'defaults' and/or 'classes'"]
    unknown = set(raw) - {"defaults", "classes"}
    extra = [f"{where}: unknown section(s) {sorted(unknown)}"] if unknown else []
    return extra + _check(raw, where)


@functools.cache
def load_policy(path: str | None = None) -> dict[str, Any]:
    p = Path(path or os.environ.get("POLICY_FILE") or DEFAULT_POLICY)
    raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    problems = validate_override(raw, str(p))
    if problems:
        raise PolicyError("; ".join(problems))
    return dict(raw)


def _merge(base: dict[str, Any], over: Mapping[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k == "confirm" and isinstance(v, Mapping):
            out["confirm"] = {**(out.get("confirm") or {}), **v}
        else:
            out[k] = v
    return out


def class_policy(threat: str, site: Mapping[str, Any] | None = None,
                 policy: Mapping[str, Any] | None = None) -> ClassPolicy:
    """The policy in force for ``threat`` at ``site``: file defaults < file class < site defaults < site class."""
    pol = policy if policy is not None else load_policy()
    site_pol: Mapping[str, Any] = (site or {}).get("policy") or {}
    merged: dict[str, Any] = {}
    for layer in (pol.get("defaults"), (pol.get("classes") or {}).get(threat),
                  site_pol.get("defaults"), (site_pol.get("classes") or {}).get(threat)):
        merged = _merge(merged, layer)
    conf = merged.get("confirm") or {}
    thr = merged.get("threshold")
    return ClassPolicy(
        threat=threat, group=str(merged.get("group") or threat),
        threshold=None if thr is None else QUIET if thr == QUIET else float(thr),
        confirm=Confirm(int(conf.get("windows", 1)), float(conf.get("within_s", 60)),
                        bool(conf.get("across_clips", True))),
        window_s=float(merged.get("window_s", 1800)),
        escalation_delay_s=float(merged.get("escalation_delay_s", 300)),
        still_hearing_after_s=float(merged.get("still_hearing_after_s", 900)),
        yields_to=tuple(merged.get("yields_to") or ()),
    )


def parse_time(iso: str) -> datetime:
    """UTC ISO 8601 as the store writes it (``...Z``, with or without fractions) -> aware datetime."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def windows_within(events: Iterable[Mapping[str, Any]], within_s: float) -> int:
    """Most alerting windows whose events start within ``within_s`` seconds of each other.

    ``events`` carry ``t`` (seconds on one time line) and ``n`` (alerting windows of that event)."""
    evs = sorted(((float(e["t"]), int(e["n"])) for e in events if int(e["n"]) > 0), key=lambda e: e[0])
    best = 0
    for i, (t0, _) in enumerate(evs):
        best = max(best, sum(n for t, n in evs[i:] if t - t0 <= within_s))
    return best


def policy_limit(alert: Alert, cp: ClassPolicy) -> tuple[float, str]:
    """The threshold in force for this alert, and where it came from."""
    card = alert.threshold
    if cp.threshold == QUIET:
        quiet = alert.quiet_threshold
        if quiet is None:  # a card trained before the quiet point existed: its threshold is all there is
            return card, "model card; it has no quiet operating point"
        return max(float(quiet), card), "model card, quiet operating point"
    if cp.threshold is not None:
        return float(cp.threshold), "policy"
    return card, "model card"


def evaluate(alert: Alert, cp: ClassPolicy, clip_events: list[dict[str, Any]],
             earlier_alerts: Sequence[Alert], stronger: Sequence[str] = ()) -> Verdict:
    """Threshold, then confirmation: in this clip (``clip_events``: its detection events of the class,
    ``t`` = start second in the clip, ``n`` = alerting windows), else over consecutive clips of the same
    device (``earlier_alerts``: that device's alert items of the class recorded within the span).
    ``stronger``: the classes this clip alerted above their own policy thresholds, for ``yields_to``."""
    trace: list[Step] = []
    over = [c for c in cp.yields_to if c in stronger]
    if over:
        trace.append(Step("yields_to", "held", f"held: this clip also alerted {', '.join(over)}, which "
                          f"{cp.threat} yields to (policy)", {"classes": over}))
        return Verdict(False, trace)
    conf = alert.confidence
    limit, source = policy_limit(alert, cp)
    if conf < limit:
        trace.append(Step("threshold", "held", f"confidence {conf:.2f} < {limit:.2f} ({source})",
                          {"confidence": conf, "threshold": limit}))
        return Verdict(False, trace)
    trace.append(Step("threshold", "pass", f"confidence {conf:.2f} >= {limit:.2f} ({source})",
                      {"confidence": conf, "threshold": limit}))
    need, span = cp.confirm.windows, cp.confirm.within_s
    events = clip_events or [{"t": alert.first_s or 0, "n": alert.alerting_windows}]
    in_clip = windows_within(events, span)
    if in_clip >= need:
        trace.append(Step("confirm", "pass", f"{in_clip} alerting window(s) within {span:g} s in this clip, "
                          f"rule needs {need}", {"windows": in_clip, "need": need, "within_s": span,
                                                 "scope": "clip"}))
        return Verdict(True, trace)
    if cp.confirm.across_clips and earlier_alerts and alert.recorded_at:
        here = parse_time(alert.recorded_at)
        seq = [{"t": (parse_time(str(a.recorded_at)) - here).total_seconds() + (a.first_s or 0),
                "n": a.alerting_windows} for a in earlier_alerts]
        seq.append({"t": alert.first_s or 0, "n": alert.alerting_windows})
        across = windows_within(seq, span)
        if across >= need:
            trace.append(Step("confirm", "pass",
                              f"{across} alerting window(s) within {span:g} s over {len(seq)} consecutive clips "
                              f"of device {alert.device_id}, rule needs {need}",
                              {"windows": across, "need": need, "within_s": span, "scope": "device",
                               "clips": len(seq)}))
            return Verdict(True, trace)
    trace.append(Step("confirm", "held", f"held: {in_clip} alerting window(s) within {span:g} s, rule needs {need}",
                      {"windows": in_clip, "need": need, "within_s": span}))
    return Verdict(False, trace)


def span_start(alert: Alert, cp: ClassPolicy) -> str:
    """The earliest ``recorded_at`` an earlier clip of the device may have to count towards confirmation:
    the span, plus room for that clip's own length (its alert is placed at its first alerting window)."""
    here = parse_time(str(alert.recorded_at))
    return (here - timedelta(seconds=cp.confirm.within_s + EARLIER_CLIP_SLACK_S)).strftime("%Y-%m-%dT%H:%M:%SZ")
