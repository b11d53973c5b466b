"""Read template.yaml offline, so local resources are made from the same properties AWS gets.

The embedded local stack builds its DynamoDB tables, queues and stream poller from these helpers, and
the tests check the deployed settings through them: one source of names and settings, no copies.
Only PyYAML is needed (no SAM or cfn-lint at run time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import yaml

__all__ = [
    "S3EventRule",
    "StreamEventSettings",
    "TableSpec",
    "TemplateError",
    "function_events",
    "load_template",
    "loads_template",
    "notify_filter_patterns",
    "queue_specs",
    "resources_of_type",
    "s3_event_rules",
    "stream_event_settings",
    "table_specs",
]


class TemplateError(ValueError):
    """The template lacks, or computes at deploy time, something asked of it offline."""


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # untyped without stubs
    """SafeLoader plus CloudFormation's short-form intrinsics, registered on this subclass only.

    ``samtranslator.yaml_helper.yaml_parse`` does the same but registers on ``yaml.SafeLoader`` itself,
    which would make every other ``yaml.safe_load`` in the process accept ``!Anything`` silently.
    """


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = tag_suffix
    key = name if name in ("Ref", "Condition") else f"Fn::{name}"
    value: Any
    if name == "GetAtt" and isinstance(node, yaml.ScalarNode):
        # !GetAtt Resource.Attribute -> ["Resource", "Attribute"] (the attribute may hold dots).
        value = loader.construct_scalar(node).split(".", 1)
    elif isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise TemplateError(f"unsupported node for !{name}")
    return {key: value}


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    # CloudFormation reads an unquoted 2012-10-17 as text; YAML would make it a date.
    return str(loader.construct_scalar(node))  # type: ignore[arg-type,unused-ignore]


_CfnLoader.add_multi_constructor("!", _intrinsic)
_CfnLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def loads_template(text: str) -> dict[str, Any]:
    """Parse a CloudFormation/SAM template (YAML or JSON); short-form tags become long-form dicts."""
    doc = yaml.load(text, Loader=_CfnLoader)  # a SafeLoader subclass: no arbitrary objects
    if not isinstance(doc, dict) or not isinstance(doc.get("Resources"), dict):
        raise TemplateError("not a CloudFormation template: no Resources mapping")
    return doc


def load_template(path: str | Path) -> dict[str, Any]:
    """Parse the template at ``path`` with CloudFormation intrinsic tags (!Ref, !Sub, !GetAtt ...)."""
    return loads_template(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- helpers


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """Logical id -> resource, for every resource of ``resource_type``, in template order."""
    return {
        logical_id: res
        for logical_id, res in template["Resources"].items()
        if isinstance(res, dict) and res.get("Type") == resource_type
    }


def _props(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource.get("Properties", {})
    if not isinstance(props, dict):
        raise TemplateError("Properties is not a mapping")
    return props


_FN_NAMES = ("Sub", "GetAtt", "Join", "If", "Select", "Split", "FindInMap", "ImportValue", "GetAZs",
             "Base64", "Cidr", "Equals", "Not", "And", "Or", "ToJsonString", "Length")
_INTRINSIC_KEYS = frozenset(["Ref", "Condition", *(f"Fn::{n}" for n in _FN_NAMES)])


def _is_intrinsic(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _INTRINSIC_KEYS


def _literal(value: Any, where: str) -> Any:
    """``value`` when it is known offline; an intrinsic anywhere inside it is a TemplateError."""
    if _is_intrinsic(value):
        fn = next(iter(value))
        raise TemplateError(f"{where} is computed at deploy time ({fn}); cannot use it offline")
    if isinstance(value, dict):
        return {k: _literal(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _function(template: dict[str, Any], function_logical_id: str) -> dict[str, Any]:
    res = template["Resources"].get(function_logical_id)
    if not isinstance(res, dict) or res.get("Type") != "AWS::Serverless::Function":
        raise TemplateError(f"{function_logical_id} is not an AWS::Serverless::Function in the template")
    return res


def function_events(
    template: dict[str, Any], function_logical_id: str, event_type: str
) -> dict[str, dict[str, Any]]:
    """Event name -> Properties, for the events of ``event_type`` (S3, DynamoDB, ...) of a function."""
    events = _props(_function(template, function_logical_id)).get("Events", {}) or {}
    return {
        name: ev.get("Properties", {})
        for name, ev in events.items()
        if isinstance(ev, dict) and ev.get("Type") == event_type
    }


# ---------------------------------------------------------------------------------------------- tables


class TableSpec(TypedDict):
    """What a local DynamoDB table needs to match the deployed one.

    ``client.create_table(TableName=name, **spec["create_table"])``, then enable TTL on
    ``ttl_attribute`` (when not None) and PITR when ``point_in_time_recovery``.
    """

    create_table: dict[str, Any]
    ttl_attribute: str | None
    point_in_time_recovery: bool


# CloudFormation GSI properties that boto3's create_table also takes (not e.g. ContributorInsights).
_GSI_KEYS = ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput", "OnDemandThroughput")


def table_specs(template: dict[str, Any]) -> dict[str, TableSpec]:
    """Per AWS::DynamoDB::Table: boto3 create_table kwargs (without TableName), TTL attribute, PITR."""
    specs: dict[str, TableSpec] = {}
    for logical_id, res in resources_of_type(template, "AWS::DynamoDB::Table").items():
        props = _props(res)
        where = f"{logical_id}.Properties"
        kwargs: dict[str, Any] = {
            "AttributeDefinitions": _literal(props["AttributeDefinitions"], f"{where}.AttributeDefinitions"),
            "KeySchema": _literal(props["KeySchema"], f"{where}.KeySchema"),
            "BillingMode": _literal(props.get("BillingMode", "PROVISIONED"), f"{where}.BillingMode"),
        }
        if "ProvisionedThroughput" in props:
            kwargs["ProvisionedThroughput"] = _literal(
                props["ProvisionedThroughput"], f"{where}.ProvisionedThroughput"
            )
        gsis = _literal(props.get("GlobalSecondaryIndexes", []), f"{where}.GlobalSecondaryIndexes")
        if gsis:
            kwargs["GlobalSecondaryIndexes"] = [{k: g[k] for k in _GSI_KEYS if k in g} for g in gsis]
        stream = _literal(props.get("StreamSpecification"), f"{where}.StreamSpecification")
        if stream:
            kwargs["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": stream["StreamViewType"],
            }
        sse = _literal(props.get("SSESpecification"), f"{where}.SSESpecification")
        if sse and sse.get("SSEEnabled"):
            kwargs["SSESpecification"] = {"Enabled": True}
        ttl = _literal(props.get("TimeToLiveSpecification"), f"{where}.TimeToLiveSpecification")
        pitr_key = "PointInTimeRecoverySpecification"
        pitr = _literal(props.get(pitr_key), f"{where}.{pitr_key}")
        specs[logical_id] = TableSpec(
            create_table=kwargs,
            ttl_attribute=str(ttl["AttributeName"]) if ttl and ttl.get("Enabled", False) else None,
            point_in_time_recovery=bool(pitr and pitr.get("PointInTimeRecoveryEnabled", False)),
        )
    return specs


# CloudFormation queue properties whose names and values are also create_queue attributes.
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "FifoQueue",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


def queue_specs(template: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per AWS::SQS::Queue: the boto3 create_queue ``Attributes`` derivable offline (values as strings)."""
    out: dict[str, dict[str, str]] = {}
    for logical_id, res in resources_of_type(template, "AWS::SQS::Queue").items():
        props = _props(res)
        attrs: dict[str, str] = {}
        for key in _QUEUE_ATTRIBUTES:
            if key in props:
                value = _literal(props[key], f"{logical_id}.Properties.{key}")
                attrs[key] = str(value).lower() if isinstance(value, bool) else str(value)
        out[logical_id] = attrs
    return out


# ---------------------------------------------------------------------------------------------- events


class S3EventRule(TypedDict):
    """One S3 notification of a function: the bucket's logical id, event names, key prefix/suffix."""

    event: str
    bucket: str
    events: list[str]
    prefix: str
    suffix: str


def s3_event_rules(template: dict[str, Any], function_logical_id: str) -> list[S3EventRule]:
    """The S3 events of a function as (bucket logical id, events, prefix, suffix), in template order."""
    rules: list[S3EventRule] = []
    for name, props in function_events(template, function_logical_id, "S3").items():
        where = f"{function_logical_id}.Events.{name}"
        bucket = props.get("Bucket")
        if not (isinstance(bucket, dict) and isinstance(bucket.get("Ref"), str)):
            raise TemplateError(f"{where}.Bucket must be !Ref to a bucket in this template")
        events = _literal(props.get("Events"), f"{where}.Events")
        key_rules = _literal(props.get("Filter", {}), f"{where}.Filter").get("S3Key", {}).get("Rules", [])
        by_name = {str(r["Name"]).lower(): str(r["Value"]) for r in key_rules}
        rules.append(
            S3EventRule(
                event=name,
                bucket=bucket["Ref"],
                events=[events] if isinstance(events, str) else list(events),
                prefix=by_name.get("prefix", ""),
                suffix=by_name.get("suffix", ""),
            )
        )
    return rules


def _single_stream_event(template: dict[str, Any], function_logical_id: str) -> tuple[str, dict[str, Any]]:
    events = function_events(template, function_logical_id, "DynamoDB")
    if len(events) != 1:
        raise TemplateError(f"{function_logical_id} has {len(events)} DynamoDB events; expected exactly one")
    return next(iter(events.items()))


def notify_filter_patterns(template: dict[str, Any], function_logical_id: str) -> list[dict[str, Any]]:
    """The parsed FilterCriteria patterns of the function's DynamoDB stream event ([] = no filter).

    A record is delivered when it matches any one of the patterns (Lambda event filtering semantics).
    """
    name, props = _single_stream_event(template, function_logical_id)
    where = f"{function_logical_id}.Events.{name}.FilterCriteria"
    criteria = _literal(props.get("FilterCriteria", {}), where)
    patterns: list[dict[str, Any]] = []
    for i, flt in enumerate(criteria.get("Filters", [])):
        raw = flt.get("Pattern")
        if not isinstance(raw, str):
            raise TemplateError(f"{where}.Filters[{i}].Pattern must be a JSON string")
        try:
            pattern = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{where}.Filters[{i}].Pattern is not valid JSON: {exc}") from exc
        if not isinstance(pattern, dict):
            raise TemplateError(f"{where}.Filters[{i}].Pattern must be a JSON object")
        patterns.append(pattern)
    return patterns


class StreamEventSettings(TypedDict):
    """A DynamoDB stream event's delivery settings, CloudFormation names, AWS defaults filled in."""

    Table: str
    StartingPosition: str
    BatchSize: int
    MaximumBatchingWindowInSeconds: int
    MaximumRetryAttempts: int
    MaximumRecordAgeInSeconds: int
    BisectBatchOnFunctionError: bool
    FunctionResponseTypes: list[str]


def stream_event_settings(template: dict[str, Any], function_logical_id: str) -> StreamEventSettings:
    """BatchSize, MaximumRetryAttempts, BisectBatchOnFunctionError (and the rest) of the stream event.

    ``Table`` is the logical id of the table whose StreamArn the event reads. Absent settings get the
    Lambda defaults (BatchSize 100, retries -1 = until the record expires, no bisect).
    """
    name, props = _single_stream_event(template, function_logical_id)
    where = f"{function_logical_id}.Events.{name}"
    stream = props.get("Stream")
    getatt = stream.get("Fn::GetAtt") if isinstance(stream, dict) else None
    if not (isinstance(getatt, list) and len(getatt) == 2 and getatt[1] == "StreamArn"):
        raise TemplateError(f"{where}.Stream must be !GetAtt <table>.StreamArn")

    def setting(key: str, default: Any) -> Any:
        return _literal(props.get(key, default), f"{where}.{key}")

    return StreamEventSettings(
        Table=str(getatt[0]),
        StartingPosition=str(setting("StartingPosition", "LATEST")),
        BatchSize=int(setting("BatchSize", 100)),
        MaximumBatchingWindowInSeconds=int(setting("MaximumBatchingWindowInSeconds", 0)),
        MaximumRetryAttempts=int(setting("MaximumRetryAttempts", -1)),
        MaximumRecordAgeInSeconds=int(setting("MaximumRecordAgeInSeconds", -1)),
        BisectBatchOnFunctionError=bool(setting("BisectBatchOnFunctionError", False)),
        FunctionResponseTypes=[str(t) for t in setting("FunctionResponseTypes", [])],
    )
