"""The model card: everything classify needs to know about a model, as data (``models/card.json``).

Paths inside a card are relative to the card file, so a card and its model travel together (the repo's
``models/`` folder locally, ``/opt`` in the Lambda model layer). The card is where the threat classes are
named: its ``threats`` (in that order, the order classify decides and writes them) and its head's
``classes``; nothing in the code lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# A class name becomes part of item keys, metric names (Alerts_<class>) and object tags: kept to these.
THREAT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
BACKGROUND = "background"  # a head's column for "no threat": no rule, no alert (training labels it so too)


class CardError(ValueError):
    """A model card that cannot be used; the message says which field and why."""


@dataclass(frozen=True)
class ThreatRule:
    name: str
    model_labels: tuple[str, ...]
    store: float
    alert: float
    min_windows: int = 1
    quiet: float | None = None  # the quiet operating point's alert threshold (>= alert), when trained


@dataclass(frozen=True)
class HeadSpec:
    """A threat head: a small ONNX model from the embedding to one probability per threat class."""

    path: Path
    input: str
    output: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class ModelCard:
    id: str
    path: Path
    input: str
    logits_output: str
    embedding_output: str | None
    labels: tuple[str, ...]
    sample_rate: int
    window_s: float
    hop_s: float
    sensitivity: float
    threats: dict[str, ThreatRule]
    biodiversity_store: float
    head: HeadSpec | None = None
    sha256: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    head_sha256: str | None = None
    # Which model file runs: "graph" (the converted graph, whole) or one of card["model"]["variants"];
    # a variant with a front end ("fft") takes the spectrogram, made by sentinela.adapters.frontend.
    variant: str = "graph"
    frontend_path: Path | None = None

    @property
    def model_id(self) -> str:
        """What decided an alert: the base model (the card's id, and the variant that ran it unless it is
        the whole graph) and the exact head, by its bytes' hash. Recorded on every clip, detection and
        alert, and a metric dimension: a retrained head or another model file is a new model_id, so its
        alerts and figures never mix with the old one's."""
        base = self.id if self.variant == "graph" else f"{self.id}/{self.variant}"
        return f"{base}+head-{self.head_sha256[:12]}" if self.head_sha256 else base

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return round(self.hop_s * self.sample_rate)

    @property
    def threat_classes(self) -> tuple[str, ...]:
        """The threat classes, in the card's order (the order classify decides and writes them)."""
        return tuple(self.threats)

    def threat_of_label(self) -> dict[str, str]:
        return {lab: rule.name for rule in self.threats.values() for lab in rule.model_labels}


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise CardError(f"model card: '{where}.{key}' is missing")
    return d[key]


def _threshold(value: Any, where: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError) as exc:
        raise CardError(f"model card: {where} must be a number, got {value!r}") from exc
    if not 0.0 <= f <= 1.0:
        raise CardError(f"model card: {where} must be within 0..1, got {f}")
    return f


def load_card(path: str | Path) -> ModelCard:
    card_path = Path(path)
    try:
        raw = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CardError(f"model card not found: {card_path}") from exc
    except json.JSONDecodeError as exc:
        raise CardError(f"model card {card_path} is not valid JSON: {exc}") from exc
    base = card_path.parent
    model = _req(raw, "model", "card")
    audio = _req(raw, "audio", "card")
    labels_path = base / _req(model, "labels_path", "model")
    try:
        labels = tuple(line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip())
    except FileNotFoundError as exc:
        raise CardError(f"model labels not found: {labels_path} (run `make model`)") from exc
    threats: dict[str, ThreatRule] = {}
    for name, rule in _req(raw, "threats", "card").items():
        if not THREAT_NAME.match(str(name)):
            raise CardError(f"model card: threat {name!r}: a class name is lower case letters, digits and _ "
                            "(it names items, metrics and tags)")
        if name == BACKGROUND:
            raise CardError(f"model card: '{BACKGROUND}' is the head's no-threat column, not a threat class")
        store = _threshold(rule.get("store", 0.1), f"threats.{name}.store")
        alert = _threshold(rule.get("alert", 0.5), f"threats.{name}.alert")
        if store > alert:
            raise CardError(f"model card: threats.{name}.store ({store}) is above its alert threshold ({alert})")
        quiet = None
        if rule.get("quiet") is not None:
            quiet = _threshold(_req(rule["quiet"], "alert", f"threats.{name}.quiet"), f"threats.{name}.quiet.alert")
            if quiet < alert:
                raise CardError(f"model card: threats.{name}.quiet.alert ({quiet}) is below its alert threshold "
                                f"({alert}); the quiet point only holds alerts back")
        unknown = [lab for lab in rule.get("model_labels", []) if lab not in labels]
        if unknown:
            raise CardError(f"model card: threats.{name}.model_labels not in the model's labels: {unknown}")
        threats[name] = ThreatRule(
            name=name,
            model_labels=tuple(rule.get("model_labels", [])),
            store=store,
            alert=alert,
            min_windows=int(rule.get("min_windows", 1)),
            quiet=quiet,
        )
    head = None
    if raw.get("head"):
        h = raw["head"]
        head = HeadSpec(
            path=base / _req(h, "path", "head"),
            input=h.get("input", "embedding"),
            output=h.get("output", "probabilities"),
            classes=tuple(_req(h, "classes", "head")),
        )
        # A head may also output a background column: it has no threat rule and raises no alert.
        missing = [c for c in head.classes if c not in threats and c != BACKGROUND]
        if missing:
            raise CardError(f"model card: head classes without a threat rule: {missing}")
    card = ModelCard(
        id=str(_req(raw, "id", "card")),
        path=base / _req(model, "path", "model"),
        input=str(model.get("input", "INPUT")),
        logits_output=str(model.get("logits_output", "Identity")),
        embedding_output=model.get("embedding_output"),
        labels=labels,
        sample_rate=int(_req(audio, "sample_rate", "audio")),
        window_s=float(_req(audio, "window_s", "audio")),
        hop_s=float(audio.get("hop_s", audio["window_s"] / 2)),
        sensitivity=float(raw.get("sensitivity", 1.0)),
        threats=threats,
        biodiversity_store=_threshold(raw.get("biodiversity", {}).get("store", 0.5), "biodiversity.store"),
        head=head,
        sha256=model.get("sha256"),
        raw=raw,
        head_sha256=_file_sha256(head.path) if head is not None else None,
    )
    use = str(model.get("use", "graph"))
    return card if use == "graph" else with_variant(card, use, base)


def card_threat_classes(path: str | Path) -> tuple[str, ...]:
    """The threat classes a card names, in its order, read from the card file alone (its model and labels
    need not be there: the tools that only need the class list read it this way)."""
    card_path = Path(path)
    try:
        raw = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"model card {card_path} cannot be read: {exc}") from exc
    return tuple(str(name) for name in _req(raw, "threats", "card"))


def variants(card: ModelCard) -> tuple[str, ...]:
    """The model files this card can run: "graph" and the variants `make model` built."""
    return ("graph", *sorted(card.raw.get("model", {}).get("variants", {}) or {}))


def with_variant(card: ModelCard, name: str, base: Path | None = None) -> ModelCard:
    """The card running model variant ``name`` ("graph": the whole converted graph). ``base``: the
    card's folder (paths in the card are relative to it); taken from the card's model path if omitted."""
    model = card.raw.get("model", {})
    folder = base if base is not None else _card_dir(card)
    if name == "graph":
        return replace(card, variant="graph", path=folder / model["path"], input=str(model.get("input", "INPUT")),
                       sha256=model.get("sha256"), frontend_path=None)
    entry = (model.get("variants") or {}).get(name)
    if not entry:
        raise CardError(f"model card: no model variant {name!r} (built: {', '.join(variants(card))}; "
                        "run `make model`)")
    frontend = entry.get("frontend")
    if frontend not in (None, "fft"):
        raise CardError(f"model card: variant {name!r} has front end {frontend!r}; this runtime knows 'fft'")
    return replace(card, variant=name, path=folder / _req(entry, "path", f"model.variants.{name}"),
                   input=str(entry.get("input", "spectrogram")), sha256=entry.get("sha256"),
                   frontend_path=folder / entry["frontend_path"] if frontend else None)


def _card_dir(card: ModelCard) -> Path:
    """The card's folder, from the model path the card resolved (``<folder>/<model path>``)."""
    model = card.raw.get("model", {})
    rel = Path(model["variants"][card.variant]["path"]) if card.variant != "graph" else Path(model["path"])
    return Path(*card.path.parts[: len(card.path.parts) - len(rel.parts)])


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # a missing head is reported where the model is loaded


def at_operating_point(card: ModelCard, point: str) -> ModelCard:
    """The card with the quiet operating point's alert thresholds in force (``point == "quiet"``; classes
    without one keep theirs), or unchanged (``"balanced"``, the card's own thresholds)."""
    if point == "balanced":
        return card
    if point != "quiet":
        raise CardError(f"unknown operating point {point!r}: balanced or quiet")
    rules = {n: replace(r, alert=r.quiet) if r.quiet is not None else r for n, r in card.threats.items()}
    return replace(card, threats=rules)


def with_alert_override(card: ModelCard, alert: float | None) -> ModelCard:
    """Deployment-wide alert threshold (template parameter), when ops set one, for every class."""
    if alert is None:
        return card
    rules = {n: replace(r, alert=alert, store=min(r.store, alert),
                        quiet=None if r.quiet is None else max(r.quiet, alert))
             for n, r in card.threats.items()}
    return replace(card, threats=rules)
