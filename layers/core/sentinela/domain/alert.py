"""One alert: a threat class heard in one clip above its threshold, as classify wrote it.

classify writes it (``Store.put_alert``, one item per clip and class, the only items with ``alert = true``);
the DynamoDB stream carries it to notify, whose handler parses the stream image once, here
(:meth:`Alert.from_item`); policy, incidents and messages then read attributes, never string keys. What
notify later adds to the stored item (outcome, incident, decision trace) is not part of the alert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class AlertShapeError(ValueError):
    """A stored or streamed item is not an alert: which field is missing or of the wrong kind."""


@dataclass(frozen=True)
class Alert:
    clip_id: str
    threat: str
    confidence: float  # the clip's score for the class, 0..1
    site_id: str
    device_id: str | None = None
    recorded_at: str | None = None  # UTC ISO time the recorder heard it (from the key), when known
    threshold: float = 0.0  # the card's operating point for the class
    quiet_threshold: float | None = None  # the card's quiet operating point, for a site's policy to choose
    alerting_windows: int = 0
    first_s: float | None = None  # where in the clip the first alerting window starts
    reason: str = ""
    bucket: str | None = None
    key: str | None = None
    version_id: str | None = None
    model_id: str | None = None
    duration_s: float | None = None
    created_at: str | None = None

    @property
    def member_id(self) -> str:
        """How an incident names the alerts it holds: ``<clip_id>#<threat>``."""
        return f"{self.clip_id}#{self.threat}"

    def to_item(self) -> dict[str, Any]:
        """The alert's attributes as stored (``alert = true``: the stream filter passes it to notify)."""
        return {"type": "alert", "alert": True, **dataclasses.asdict(self)}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Alert:
        """An alert item from the table or a stream image (already plain Python: no Decimals). Extra
        attributes (what notify annotated) are ignored; a missing or mistyped field is an
        :class:`AlertShapeError` that names it."""
        if item.get("alert") is not True:
            raise AlertShapeError("not an alert item (alert is not true)")
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = item.get(f.name)
            required = f.default is dataclasses.MISSING
            if value is None or (required and value == ""):
                if required:
                    raise AlertShapeError(f"alert item has no {f.name}")
                continue
            out[f.name] = _typed(f.name, value, str(f.type))
        return cls(**out)


def _typed(name: str, value: Any, kind: str) -> Any:
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AlertShapeError(f"alert item's {name} is not a number: {value!r}")
        return float(value)
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise AlertShapeError(f"alert item's {name} is not a whole number: {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise AlertShapeError(f"alert item's {name} is not a text: {value!r}")
    return value
