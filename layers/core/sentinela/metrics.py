"""Where the core reports figures: Powertools' Metrics in Lambda, anything with ``add_metric`` elsewhere."""

from __future__ import annotations

from typing import Any, Protocol


class MetricSink(Protocol):
    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class NullMetrics:
    def add_metric(self, name: str, unit: Any, value: float) -> None:
        return None
