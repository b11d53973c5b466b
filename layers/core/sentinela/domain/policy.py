"""Alert policy as data: per threat class, overridable per site; every decision leaves a trace.

The policy file (``policy.yaml`` beside this module, or ``POLICY_FILE``) has ``defaults`` and
``classes.<threat>``; a site item's ``policy`` has the same shape and wins. :func:`evaluate` applies
the threshold and the confirmation rule to one alert item and returns the verdict with its trace: a
list of steps, each naming the rule, whether it passed or held, and the numbers it compared.

What a class *is*, whatever the site (its name in each language, whether its audio may be linked in an
SMS, the clip's retention tag, a second "2" before a false alarm closes it) is in the policy file only:
:func:`class_traits`. The classes themselves come from the model card; the file names those it says
something about, in the card's order (:func:`check_against_card`).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from sentinela.domain import clock
from sentinela.domain.alert import Alert

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
KNOWN_KEYS = {"threshold", "confirm", "window_s", "escalation_delay_s", "still_hearing_after_s", "group",
              "yields_to"}
# The class's traits: the policy file's, never a site's (classify, which tags the clip, reads no site).
TRAIT_KEYS = {"names", "audio_link", "retention", "false_alarm_confirm_s"}
# Retention tags the bucket's lifecycle rules know (template.yaml: VoiceClipRetentionDays).
RETENTION_TAGS = ("voice",)
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
class ClassTraits:
    threat: str
    names: Mapping[str, str] = field(default_factory=dict)  # language -> the class in the texts
    audio_link: bool = True  # may an SMS link to the clip (SMS_AUDIO_LINKS=1); false: never (privacy)
    retention: str | None = None  # the clip's sentinela-retention tag when the class alerts (RETENTION_TAGS)
    # A "2" closes the incident as a false alarm only when the same ranger sends a second one within
    # this many seconds; None: the first "2" closes it.
    false_alarm_confirm_s: float | None = None

    def name(self, lang: str) -> str:
        return self.names.get(lang) or self.threat.upper()


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


def _check(raw: Mapping[str, Any], where: str, classes: Sequence[str], file: bool) -> list[str]:
    problems = []
    known = KNOWN_KEYS | TRAIT_KEYS if file else KNOWN_KEYS
    for section in ("defaults",):
        unknown = set(raw.get(section) or {}) - known
        if unknown:
            problems.append(f"{where}: {section}: unknown key(s) {sorted(unknown)}" + _traits_hint(unknown, file))
    for threat, over in (raw.get("classes") or {}).items():
        if not isinstance(over, Mapping):
            problems.append(f"{where}: classes.{threat}: expected a mapping")
            continue
        unknown = set(over) - known
        if unknown:
            problems.append(f"{where}: classes.{threat}: unknown key(s) {sorted(unknown)}"
                            + _traits_hint(unknown, file))
        if file:
            problems += _check_traits(over, f"classes.{threat}", where)
    if file:
        problems += _check_traits(raw.get("defaults") or {}, "defaults", where)
    for name, sec in [("defaults", raw.get("defaults") or {})] + [
            (f"classes.{t}", o) for t, o in (raw.get("classes") or {}).items() if isinstance(o, Mapping)]:
        conf = sec.get("confirm")
        if conf is not None and (not isinstance(conf, Mapping) or set(conf) - CONFIRM_KEYS):
            problems.append(f"{where}: {name}.confirm: expected keys among {sorted(CONFIRM_KEYS)}")
        for k in ("window_s", "escalation_delay_s", "still_hearing_after_s"):
            if k in sec and (not isinstance(sec[k], int | float) or sec[k] < 0):
                problems.append(f"{where}: {name}.{k} must be a number >= 0")
        problems += _check_yields(sec.get("yields_to"), name, where, classes)
        t = sec.get("threshold")
        if t is not None and t != QUIET and (not isinstance(t, int | float) or not 0 <= t <= 1):
            problems.append(f"{where}: {name}.threshold must be null, '{QUIET}' or a number within 0..1")
    return problems


def _traits_hint(unknown: set[str], file: bool) -> str:
    return "; names, audio_link, retention and false_alarm_confirm_s are the policy file's (whatever the " \
        "site)" if not file and unknown & TRAIT_KEYS else ""


def _check_traits(sec: Mapping[str, Any], name: str, where: str) -> list[str]:
    problems = []
    names = sec.get("names")
    if names is not None:
        if name == "defaults":
            problems.append(f"{where}: defaults.names: name each class (classes.<class>.names), not all")
        elif not isinstance(names, Mapping) or not all(isinstance(v, str) and v.strip() for v in names.values()):
            problems.append(f"{where}: {name}.names must map a language to a name, e.g. {{es: DRON, en: DRONE}}")
    if "audio_link" in sec and not isinstance(sec["audio_link"], bool):
        problems.append(f"{where}: {name}.audio_link must be true or false")
    if sec.get("retention") is not None and sec["retention"] not in RETENTION_TAGS:
        problems.append(f"{where}: {name}.retention must be null or one of {', '.join(RETENTION_TAGS)} (the "
                        "bucket's lifecycle rules in template.yaml)")
    fa = sec.get("false_alarm_confirm_s")
    if fa is not None and (isinstance(fa, bool) or not isinstance(fa, int | float) or fa <= 0):
        problems.append(f"{where}: {name}.false_alarm_confirm_s must be null or a number of seconds > 0")
    return problems


def _check_yields(ylds: Any, name: str, where: str, classes: Sequence[str]) -> list[str]:
    """``yields_to`` of section ``name`` ("defaults" or "classes.<threat>"); ``classes``: the class order."""
    if ylds is None:
        return []
    if not isinstance(ylds, list) or any(y not in classes for y in ylds):
        return [f"{where}: {name}.yields_to must be a list of threat classes ({', '.join(classes)})"]
    threat = name.removeprefix("classes.")
    if threat not in classes:
        return [f"{where}: {name}.yields_to: set it per class (classes.<class>.yields_to), not for all"] if ylds else []
    # classify writes a clip's alert items in class order; notify may read the clip before a later class's
    # item exists, so a class can only reliably yield to one written before it
    later = [y for y in ylds if classes.index(y) >= classes.index(threat)]
    if later:
        return [f"{where}: {name}.yields_to: {later} come(s) after {threat} in the class order "
                f"({', '.join(classes)}); a class can only yield to one before it"]
    return []


def validate_override(raw: Any, where: str = "policy", classes: Sequence[str] | None = None, *,
                      file: bool = False) -> list[str]:
    """Problems with a policy (``file``: the policy file; else a site's override), as sentences; empty
    when it is fine. ``classes``: the threat classes in the order classify writes them; by default the
    policy file's (:func:`policy_classes`), which :func:`check_against_card` holds to the card's order."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [f"{where}: expected a mapping with 'defaults' and/or 'classes'"]
    unknown = set(raw) - {"defaults", "classes"}
    extra = [f"{where}: unknown section(s) {sorted(unknown)}"] if unknown else []
    order = tuple(classes) if classes is not None else policy_classes()
    return extra + _check(raw, where, order, file)


_policy_file: str | None = None  # POLICY_FILE, set from the settings (runtime.settings) at cold start


def use_policy_file(path: str | None) -> None:
    """The policy file :func:`load_policy` reads when given none (``None``: the shipped policy.yaml)."""
    global _policy_file
    if path != _policy_file:
        _policy_file = path
        forget_policy()


def forget_policy() -> None:
    """Read the policy file again at its next use."""
    _read_policy.cache_clear()


def load_policy(path: str | None = None) -> dict[str, Any]:
    return _read_policy(str(path or _policy_file or DEFAULT_POLICY))


@functools.cache
def _read_policy(path: str) -> dict[str, Any]:
    p = Path(path)
    raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    own = tuple(raw.get("classes") or {}) if isinstance(raw, Mapping) else ()
    problems = validate_override(raw, str(p), own, file=True)
    if problems:
        raise PolicyError("; ".join(problems))
    return dict(raw)


def policy_classes(policy: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The classes the policy file names, in its order (the model card's: :func:`check_against_card`)."""
    pol = policy if policy is not None else load_policy()
    return tuple(pol.get("classes") or {})


def check_against_card(policy: Mapping[str, Any], card_classes: Sequence[str]) -> list[str]:
    """Problems between the policy file and the model card's threat classes (in the card's order).
    classify writes a clip's alert items in the card's order, and ``yields_to`` (checked against the
    file's order, in site overrides too) can rely only on items written before: so the classes both
    name must come in the same order. A card class the file does not name gets the defaults."""
    ours = [c for c in policy_classes(policy) if c in card_classes]
    theirs = [c for c in card_classes if c in ours]
    if ours != theirs:
        return [f"policy: classes come in the order {', '.join(ours)}; the model card's is "
                f"{', '.join(theirs)} (the order classify writes alert items in): list them in the card's order"]
    return []


def class_traits(threat: str, policy: Mapping[str, Any] | None = None) -> ClassTraits:
    """What ``threat`` is, from the policy file (its defaults, then its class): the same at every site."""
    pol = policy if policy is not None else load_policy()
    merged: dict[str, Any] = {}
    for layer in (pol.get("defaults"), (pol.get("classes") or {}).get(threat)):
        merged = _merge(merged, layer)
    fa = merged.get("false_alarm_confirm_s")
    return ClassTraits(threat=threat, names=dict(merged.get("names") or {}),
                       audio_link=bool(merged.get("audio_link", True)), retention=merged.get("retention"),
                       false_alarm_confirm_s=None if fa is None else float(fa))


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
        here = clock.parse_time(alert.recorded_at)
        seq = [{"t": (clock.parse_time(str(a.recorded_at)) - here).total_seconds() + (a.first_s or 0),
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
    here = clock.parse_time(str(alert.recorded_at))
    return clock.iso(here - timedelta(seconds=cp.confirm.within_s + EARLIER_CLIP_SLACK_S))
