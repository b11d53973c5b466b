"""Where the core reports figures: Powertools' Metrics in Lambda, anything with ``add_metric`` elsewhere."""

from __future__ import annotations

from typing import Any, Protocol


class MetricSink(Protocol):
    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class NullMetrics:
    def add_metric(self, name: str, unit: Any, value: float) -> None:
        return None


def add_dimensioned_metric(sink: MetricSink, name: str, unit: Any, value: float, dimensions: dict[str, str]) -> None:
    """One metric with extra dimensions of its own (e.g. ``model_id``), in a record apart: adding a
    dimension to the sink itself would change the identity of every other metric it flushes, and the
    alarms and dashboard that name them."""
    own = getattr(sink, "add_dimensioned_metric", None)
    if callable(own):
        own(name, unit, value, dimensions)
        return
    if type(sink).__module__.startswith("aws_lambda_powertools"):
        from aws_lambda_powertools.metrics import single_metric

        service = getattr(sink, "service", None)
        with single_metric(name=name, unit=unit, value=value, namespace=getattr(sink, "namespace", None),
                           default_dimensions={"service": service} if service else None) as one:
            for key, val in dimensions.items():
                one.add_dimension(name=key, value=val)
        return
    sink.add_metric(name, unit, value)
