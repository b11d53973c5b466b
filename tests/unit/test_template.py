"""template.yaml: it validates offline, broken copies fail at the stage that should catch them, and the
security and wiring properties other code relies on hold (checked on the source and on what SAM makes)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinela_tools.devtools.template_reader import (
    TemplateError,
    load_template,
    loads_template,
    notify_filter_patterns,
    queue_specs,
    s3_event_rules,
    stream_event_settings,
    table_specs,
)
from sentinela_tools.devtools.validate_template import (
    STAGE_LINT,
    STAGE_LINT_TRANSLATED,
    STAGE_TRANSFORM,
    ValidationReport,
    validate,
)
from tests.conftest import mocked_aws

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
BUCKET_NAME = {"Fn::Sub": "${AWS::StackName}-clips-${AWS::AccountId}-${AWS::Region}"}
ALERT_PATTERN = {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"alert": {"BOOL": [True]}}}}


@pytest.fixture(scope="module")
def tpl() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def report() -> ValidationReport:
    return validate(TEMPLATE)


@pytest.fixture(scope="module")
def translated(report: ValidationReport) -> dict[str, Any]:
    assert report.translated is not None, "the SAM transform failed; see test_validator_passes"
    return report.translated


def res(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = template["Resources"][logical_id]
    return resource


def props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = res(template, logical_id)["Properties"]
    return properties


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# ------------------------------------------------------------------------------------------ the validator


def test_validator_passes(report: ValidationReport) -> None:
    problems = [f.render() for s in report.stages for f in s.findings if f.severity == "error"]
    assert report.ok, "\n".join(problems)
    assert [s.name for s in report.stages] == [STAGE_LINT, STAGE_TRANSFORM, STAGE_LINT_TRANSLATED]
    assert not any(s.skipped for s in report.stages)


def _cli(path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "layers" / "core"), str(REPO / "tools"), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "sentinela_tools.devtools.validate_template", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli_prints_one_line_per_stage_and_exits_zero() -> None:
    run = _cli(TEMPLATE)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == [
        f"PASS {STAGE_LINT}",
        f"PASS {STAGE_TRANSFORM}",
        f"PASS {STAGE_LINT_TRANSLATED}",
    ]
    assert "0 errors" in lines[0]


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "template.yaml"
    bad.write_text(TEMPLATE.read_text(encoding="utf-8") + "\n  broken: [unclosed\n", encoding="utf-8")
    run = _cli(bad)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"FAIL {bad}: line ") and "YAML syntax" in line


def _bogus_event_type(t: dict[str, Any]) -> None:
    props(t, "ClassifyFunction")["Events"]["WavUpload"]["Type"] = "S4"


def _batch_size_zero(t: dict[str, Any]) -> None:
    props(t, "NotifyFunction")["Events"]["AlertInserted"]["Properties"]["BatchSize"] = 0


def _circular_depends_on(t: dict[str, Any]) -> None:
    # NotifyFunction already depends on DataTable (TABLE_NAME, the stream); close the loop.
    res(t, "DataTable")["DependsOn"] = ["NotifyFunction"]


def _unknown_bucket_property(t: dict[str, Any]) -> None:
    props(t, "ClipsBucket")["VersioningConfig"] = {"Status": "Enabled"}


def _missing_code_dir(t: dict[str, Any]) -> None:
    props(t, "NotifyFunction")["CodeUri"] = "functions/no_such_function/"


# What each stage is for: cfn-lint on the SAM source does not run the transform (it misses the first
# three), the transform catches SAM-level mistakes, cfn-lint on its output catches the rest.
BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("bogus-event-type", _bogus_event_type, STAGE_TRANSFORM, "Event Type is: S4"),
    (
        "batch-size-0",
        _batch_size_zero,
        STAGE_LINT_TRANSLATED,
        "NotifyFunctionAlertInserted/Properties/BatchSize",
    ),
    ("circular-depends-on", _circular_depends_on, STAGE_LINT_TRANSLATED, "Circular Dependencies"),
    ("unknown-bucket-property", _unknown_bucket_property, STAGE_LINT, "VersioningConfig"),
    ("missing-code-dir", _missing_code_dir, STAGE_TRANSFORM, "functions/no_such_function/"),
]


@pytest.mark.parametrize(("name", "mutate", "stage", "evidence"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_copy_fails_at_the_right_stage(
    tpl: dict[str, Any],
    tmp_path: Path,
    name: str,
    mutate: Callable[[dict[str, Any]], None],
    stage: str,
    evidence: str,
) -> None:
    broken = copy.deepcopy(tpl)
    mutate(broken)
    path = tmp_path / f"{name}.json"  # CloudFormation takes JSON too; no YAML tags to re-emit
    path.write_text(json.dumps(broken, indent=1), encoding="utf-8")
    result = validate(path, base_dir=REPO)
    assert not result.ok
    assert result.failed_stages[0] == stage, [s.render() for s in result.stages]
    failed = result.stage(stage)
    text = "\n".join(f.render() for f in failed.errors)
    assert evidence in text


def test_cli_exits_non_zero_on_a_broken_template(tpl: dict[str, Any], tmp_path: Path) -> None:
    broken = copy.deepcopy(tpl)
    _bogus_event_type(broken)
    path = tmp_path / "template.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    # Local paths resolve against the template's folder: give the copy the repo's folders.
    for sub in ("functions", "layers", "models"):
        (tmp_path / sub).symlink_to(REPO / sub, target_is_directory=True)
    run = _cli(path)
    assert run.returncode == 1
    assert f"FAIL {STAGE_TRANSFORM}" in run.stdout
    assert "Event Type is: S4" in run.stdout


# ---------------------------------------------------------------------------------------------- storage


def test_clips_bucket_is_private_encrypted_versioned(tpl: dict[str, Any]) -> None:
    bucket = props(tpl, "ClipsBucket")
    assert bucket["BucketName"] == BUCKET_NAME
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (sse,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert res(tpl, "ClipsBucket")["DeletionPolicy"] == "Retain"


def test_clips_bucket_denies_plain_http(tpl: dict[str, Any]) -> None:
    policy = props(tpl, "ClipsBucketPolicy")
    assert policy["Bucket"] == {"Ref": "ClipsBucket"}
    denies = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    tls = [s for s in denies if s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    assert tls, "no aws:SecureTransport=false deny"
    (stmt,) = tls
    assert stmt["Principal"] == "*"
    assert stmt["Action"] == "s3:*"
    assert {"Fn::GetAtt": ["ClipsBucket", "Arn"]} in stmt["Resource"]
    assert {"Fn::Sub": "${ClipsBucket.Arn}/*"} in stmt["Resource"]


def test_clips_lifecycle(tpl: dict[str, Any]) -> None:
    rules = {r["Id"]: r for r in props(tpl, "ClipsBucket")["LifecycleConfiguration"]["Rules"]}
    assert all(r["Status"] == "Enabled" for r in rules.values())
    tiering = rules["clips-tiering-and-retention"]
    assert tiering["Prefix"] == "clips/"
    assert tiering["Transitions"] == [
        {"StorageClass": "STANDARD_IA", "TransitionInDays": {"Ref": "AudioInfrequentAccessDays"}}
    ]
    assert tiering["ExpirationInDays"] == {"Ref": "AudioRetentionDays"}
    voice = rules["voice-clips-short-retention"]
    assert voice["TagFilters"] == [{"Key": "sentinela-retention", "Value": "voice"}]
    assert voice["ExpirationInDays"] == {"Ref": "VoiceClipRetentionDays"}
    housekeeping = rules["versions-and-uploads-housekeeping"]
    assert "Prefix" not in housekeeping and "TagFilters" not in housekeeping
    assert housekeeping["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert housekeeping["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}


def test_every_table_is_encrypted_with_pitr(tpl: dict[str, Any]) -> None:
    tables = {k for k, v in tpl["Resources"].items() if v["Type"] == "AWS::DynamoDB::Table"}
    assert tables == {"DataTable", "IdempotencyTable"}
    for logical_id in tables:
        p = props(tpl, logical_id)
        assert p["SSESpecification"] == {"SSEEnabled": True}, logical_id
        assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, logical_id
        assert p["BillingMode"] == "PAY_PER_REQUEST", logical_id


def test_table_specs_derive_create_table_kwargs(tpl: dict[str, Any]) -> None:
    specs = table_specs(tpl)
    data = specs["DataTable"]
    assert data["ttl_attribute"] == "expires_at"
    assert data["point_in_time_recovery"] is True
    kw = data["create_table"]
    assert kw["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in kw["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
        "gsi1pk": "S",
        "gsi1sk": "S",
    }
    assert kw["GlobalSecondaryIndexes"] == [
        {
            "IndexName": "gsi1",
            "KeySchema": [
                {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ]
    assert kw["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert kw["BillingMode"] == "PAY_PER_REQUEST"
    idem = specs["IdempotencyTable"]
    assert idem["ttl_attribute"] == "expiration"
    assert idem["create_table"]["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert "StreamSpecification" not in idem["create_table"]


def test_table_specs_refuse_what_is_only_known_at_deploy_time(tpl: dict[str, Any]) -> None:
    t = copy.deepcopy(tpl)
    props(t, "DataTable")["BillingMode"] = {"Ref": "SomeParameter"}
    with pytest.raises(TemplateError, match=r"DataTable\.Properties\.BillingMode"):
        table_specs(t)


def test_table_and_queue_specs_are_accepted_by_moto(tpl: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    with mocked_aws(monkeypatch) as ddb:
        for logical_id, spec in table_specs(tpl).items():
            ddb.create_table(TableName=logical_id, **spec["create_table"])
            if spec["ttl_attribute"]:
                ddb.update_time_to_live(
                    TableName=logical_id,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": spec["ttl_attribute"]},
                )
            if spec["point_in_time_recovery"]:
                ddb.update_continuous_backups(
                    TableName=logical_id,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
        table = ddb.describe_table(TableName="DataTable")["Table"]
        assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
        assert table["LatestStreamArn"]
        assert [g["IndexName"] for g in table["GlobalSecondaryIndexes"]] == ["gsi1"]
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        ttl = ddb.describe_time_to_live(TableName="DataTable")["TimeToLiveDescription"]
        assert ttl["AttributeName"] == "expires_at"

        sqs = boto3.client("sqs", region_name="us-east-1")
        for logical_id, attrs in queue_specs(tpl).items():
            url = sqs.create_queue(QueueName=logical_id, Attributes=attrs)["QueueUrl"]
            got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["MessageRetentionPeriod"])
            assert got["Attributes"]["MessageRetentionPeriod"] == "1209600"


def test_dead_letter_queues(tpl: dict[str, Any]) -> None:
    assert queue_specs(tpl) == {
        "ClassifyDLQ": {"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"},
        "NotifyDLQ": {"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"},
    }


def test_twilio_secret_value_never_in_template_or_environment(tpl: dict[str, Any]) -> None:
    secret = props(tpl, "TwilioSecret")
    assert "SecretString" not in secret
    assert json.loads(secret["GenerateSecretString"]["SecretStringTemplate"]) == {"account_sid": "REPLACE_ME"}
    assert secret["GenerateSecretString"]["GenerateStringKey"] == "auth_token"
    for logical_id, r in tpl["Resources"].items():
        if r["Type"] != "AWS::Serverless::Function":
            continue
        env = r["Properties"].get("Environment", {}).get("Variables", {})
        for key in env:
            assert not any(w in key for w in ("TOKEN", "PASSWORD", "AUTH")), (logical_id, key)
    notify_env = props(tpl, "NotifyFunction")["Environment"]["Variables"]
    assert notify_env["TWILIO_SECRET_ARN"] == {"Ref": "TwilioSecret"}


def test_bucket_name_string_is_the_same_everywhere(tpl: dict[str, Any]) -> None:
    # Functions and roles cannot !Ref the bucket (it depends on them); every copy must match its name.
    copies = [
        n["Fn::Sub"]
        for n in walk(tpl["Resources"])
        if isinstance(n, dict) and isinstance(n.get("Fn::Sub"), str) and "-clips-" in n["Fn::Sub"]
    ]
    assert len(copies) >= 5
    name = BUCKET_NAME["Fn::Sub"]
    for text in copies:
        assert text in (name, f"arn:${{AWS::Partition}}:s3:::{name}", f"arn:${{AWS::Partition}}:s3:::{name}/clips/*"), (
            text
        )


# ------------------------------------------------------------------------------------------------ IAM


def _statements(translated: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for logical_id, r in translated["Resources"].items():
        if r["Type"] == "AWS::IAM::Role":
            for policy in r["Properties"].get("Policies", []):
                found += [(logical_id, s) for s in as_list(policy["PolicyDocument"]["Statement"])]
        elif r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            found += [(logical_id, s) for s in as_list(r["Properties"]["PolicyDocument"]["Statement"])]
    return found


def test_no_wildcard_resources_except_xray(translated: dict[str, Any]) -> None:
    statements = _statements(translated)
    assert statements
    for owner, s in statements:
        if s["Effect"] != "Allow":
            continue
        actions = as_list(s["Action"])
        assert "*" not in actions and not any(a.endswith(":*") for a in actions), (owner, s)
        if "*" in as_list(s["Resource"]):
            assert all(a.startswith("xray:") for a in actions), (owner, s)


def test_roles_attach_no_managed_policies(translated: dict[str, Any]) -> None:
    # AWS managed Lambda policies (basic execution, DynamoDB streams) grant on Resource "*".
    roles = {k: r for k, r in translated["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert set(roles) >= {"ClassifyRole", "NotifyRole"}
    for logical_id, role in roles.items():
        assert not role["Properties"].get("ManagedPolicyArns"), logical_id
    for logical_id, r in translated["Resources"].items():
        if r["Type"] == "AWS::Lambda::Function":
            assert r["Properties"]["Role"]["Fn::GetAtt"][0] in roles, logical_id


def _grants(translated: dict[str, Any], role: str) -> list[tuple[set[str], list[Any]]]:
    return [
        (set(as_list(s["Action"])), as_list(s["Resource"]))
        for owner, s in _statements(translated)
        if owner == role and s["Effect"] == "Allow"
    ]


def _resources_for(translated: dict[str, Any], role: str, action: str) -> list[Any]:
    return [r for actions, resources in _grants(translated, role) if action in actions for r in resources]


def test_classify_permissions(translated: dict[str, Any]) -> None:
    clips = {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{BUCKET_NAME['Fn::Sub']}/clips/*"}
    for action in (
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:GetObjectTagging",
        "s3:PutObjectTagging",
        "s3:PutObjectVersionTagging",
    ):
        assert _resources_for(translated, "ClassifyRole", action) == [clips], action
    data = [{"Fn::GetAtt": ["DataTable", "Arn"]}, {"Fn::Sub": "${DataTable.Arn}/index/*"}]
    for action in ("PutItem", "UpdateItem", "GetItem", "BatchWriteItem", "Query"):
        assert all(r in _resources_for(translated, "ClassifyRole", f"dynamodb:{action}") for r in data), action
    assert _resources_for(translated, "ClassifyRole", "dynamodb:DeleteItem") == [
        {"Fn::GetAtt": ["IdempotencyTable", "Arn"]}
    ]
    assert _resources_for(translated, "ClassifyRole", "sqs:SendMessage") == [{"Fn::GetAtt": ["ClassifyDLQ", "Arn"]}]
    # Only so that a missing clip reads as 404 (recorded as "missing"), not 403 (retried, dead-lettered).
    bucket = {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{BUCKET_NAME['Fn::Sub']}"}
    assert _resources_for(translated, "ClassifyRole", "s3:ListBucket") == [bucket]
    assert _resources_for(translated, "ClassifyRole", "secretsmanager:GetSecretValue") == []
    assert _resources_for(translated, "ClassifyRole", "s3:PutObject") == []


def test_notify_permissions(translated: dict[str, Any]) -> None:
    assert _resources_for(translated, "NotifyRole", "secretsmanager:GetSecretValue") == [{"Ref": "TwilioSecret"}]
    stream = [{"Fn::GetAtt": ["DataTable", "StreamArn"]}]
    for action in ("DescribeStream", "GetRecords", "GetShardIterator"):
        assert _resources_for(translated, "NotifyRole", f"dynamodb:{action}") == stream, action
    assert _resources_for(translated, "NotifyRole", "sqs:SendMessage") == [{"Fn::GetAtt": ["NotifyDLQ", "Arn"]}]
    (clips,) = _resources_for(translated, "NotifyRole", "s3:GetObject")
    assert clips["Fn::Sub"].endswith("/clips/*")
    assert _resources_for(translated, "NotifyRole", "dynamodb:BatchWriteItem") == []
    # notify's idempotency is its send claims in the data table; it never used the Powertools table.
    assert _resources_for(translated, "NotifyRole", "dynamodb:DeleteItem") == []
    notify = props(translated, "NotifyFunction")["Environment"]["Variables"]
    assert "IDEMPOTENCY_TABLE" not in notify


# ---------------------------------------------------------------------------------------------- wiring


def test_classify_s3_events_every_suffix_in_both_cases_under_clips(
    tpl: dict[str, Any], translated: dict[str, Any]
) -> None:
    rules = s3_event_rules(tpl, "ClassifyFunction")
    assert sorted(r["suffix"] for r in rules) == [".FLAC", ".MP3", ".OGG", ".WAV", ".flac", ".mp3", ".ogg", ".wav"]
    for r in rules:
        assert r["bucket"] == "ClipsBucket"
        assert r["prefix"] == "clips/"
        assert r["events"] == ["s3:ObjectCreated:*"]
    configs = props(translated, "ClipsBucket")["NotificationConfiguration"]["LambdaConfigurations"]
    assert len(configs) == 8
    # The "live" alias (AutoPublishAlias), never $LATEST: a deploy shifts clips to a new version gradually.
    assert all(c["Function"] == {"Ref": "ClassifyFunctionAliaslive"} for c in configs)


def test_notify_filter_is_exactly_the_alert_pattern(tpl: dict[str, Any], translated: dict[str, Any]) -> None:
    assert notify_filter_patterns(tpl, "NotifyFunction") == [ALERT_PATTERN]
    esm = props(translated, "NotifyFunctionAlertInserted")
    assert [json.loads(f["Pattern"]) for f in esm["FilterCriteria"]["Filters"]] == [ALERT_PATTERN]


def test_notify_stream_settings(tpl: dict[str, Any], translated: dict[str, Any]) -> None:
    settings = stream_event_settings(tpl, "NotifyFunction")
    assert settings == {
        "Table": "DataTable",
        "StartingPosition": "LATEST",
        "BatchSize": 10,
        "MaximumBatchingWindowInSeconds": 1,
        "MaximumRetryAttempts": 5,
        "MaximumRecordAgeInSeconds": 3600,
        "BisectBatchOnFunctionError": True,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    esm = props(translated, "NotifyFunctionAlertInserted")
    assert esm["DestinationConfig"] == {"OnFailure": {"Destination": {"Fn::GetAtt": ["NotifyDLQ", "Arn"]}}}


def test_classify_function_settings(tpl: dict[str, Any], translated: dict[str, Any]) -> None:
    p = props(tpl, "ClassifyFunction")
    assert (p["CodeUri"], p["Handler"], p["MemorySize"], p["Timeout"]) == (
        "functions/classify/",
        "app.handler",
        2048,
        300,
    )
    env = p["Environment"]["Variables"]
    assert env["MODEL_CARD"] == "/opt/card.json"
    assert env["CLIPS_BUCKET"] == BUCKET_NAME
    assert env["ALERT_THRESHOLD"] == {"Ref": "AlertThreshold"}
    assert env["MAX_CLIP_BYTES"] == {"Ref": "MaxClipBytes"}
    assert env["MAX_CLIP_SECONDS"] == {"Ref": "MaxClipSeconds"}
    assert env["IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    assert env["POWERTOOLS_SERVICE_NAME"] == "classify"
    assert p["EventInvokeConfig"]["MaximumRetryAttempts"] == 2
    assert p["EventInvokeConfig"]["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["ClassifyDLQ", "Arn"]},
    }
    fn = props(translated, "ClassifyFunction")
    layers = [ref["Ref"] for ref in fn["Layers"]]
    expected = ["RuntimeLayer", "CoreLayer", "MlLayer", "ModelLayer"]
    assert [name.rstrip("0123456789abcdef") for name in layers] == expected
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert fn["Runtime"] == "python3.12" and fn["Architectures"] == ["x86_64"]


def test_layers(tpl: dict[str, Any]) -> None:
    assert props(tpl, "RuntimeLayer")["ContentUri"] == "layers/runtime/"
    assert props(tpl, "CoreLayer")["ContentUri"] == "layers/core/"
    assert props(tpl, "ModelLayer")["ContentUri"] == "models/"
    for logical_id in ("RuntimeLayer", "CoreLayer"):
        assert res(tpl, logical_id)["Metadata"]["BuildMethod"] == "python3.12"
    # Files as they are, unpacked at /opt (so the card is /opt/card.json).
    assert res(tpl, "ModelLayer")["Metadata"]["BuildMethod"] == "makefile"
    assert "CC-BY-NC-SA" in props(tpl, "ModelLayer")["LicenseInfo"]


def test_globals(tpl: dict[str, Any]) -> None:
    g = tpl["Globals"]["Function"]
    assert (g["Runtime"], g["Architectures"], g["Tracing"]) == ("python3.12", ["x86_64"], "Active")
    assert g["Layers"] == [{"Ref": "RuntimeLayer"}, {"Ref": "CoreLayer"}]
    assert g["Environment"]["Variables"] == {
        "POWERTOOLS_METRICS_NAMESPACE": "Sentinela",
        "TABLE_NAME": {"Ref": "DataTable"},
        "LOG_LEVEL": "INFO",
    }


def test_each_function_has_its_log_group_with_retention(tpl: dict[str, Any]) -> None:
    functions = {k: v for k, v in tpl["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) >= {"ClassifyFunction", "NotifyFunction"}
    groups = {
        v["Properties"]["LogGroupName"]["Fn::Sub"]: k
        for k, v in tpl["Resources"].items()
        if v["Type"] == "AWS::Logs::LogGroup"
    }
    for logical_id, fn in functions.items():
        name = fn["Properties"]["FunctionName"]["Fn::Sub"]
        group = groups[f"/aws/lambda/{name}"]
        assert props(tpl, group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}
        role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        statements = props(tpl, role)["Policies"][0]["PolicyDocument"]["Statement"]
        logs = [s for s in statements if "logs:PutLogEvents" in as_list(s["Action"])]
        assert [s["Resource"] for s in logs] == [{"Fn::GetAtt": [group, "Arn"]}], logical_id
        assert not any("logs:CreateLogGroup" in as_list(s["Action"]) for s in statements), logical_id


def test_parameters_and_outputs(tpl: dict[str, Any]) -> None:
    p = tpl["Parameters"]
    assert p["AlertThreshold"]["Default"] == 0  # 0: the model card's calibrated thresholds decide
    assert (p["AlertThreshold"]["MinValue"], p["AlertThreshold"]["MaxValue"]) == (0, 1)
    assert p["MaxClipBytes"]["Default"] == 200000000 and p["MaxClipSeconds"]["Default"] == 7200
    assert p["SmsFromNumber"]["AllowedPattern"].startswith("^\\+")
    assert {
        k: p[k]["Default"]
        for k in (
            "AudioRetentionDays",
            "AudioInfrequentAccessDays",
            "VoiceClipRetentionDays",
            "LogRetentionDays",
        )
    } == {
        "AudioRetentionDays": 365,
        "AudioInfrequentAccessDays": 30,
        "VoiceClipRetentionDays": 30,
        "LogRetentionDays": 90,
    }
    assert set(tpl["Outputs"]) == {
        "ClipsBucketName",
        "DataTableName",
        "IdempotencyTableName",
        "TwilioSecretArn",
        "ClassifyDLQUrl",
        "NotifyDLQUrl",
        "ClassifyFunctionName",
        "NotifyFunctionName",
        "UploadsEndpoint",
        "PresignFunctionName",
        "SmsReplyWebhook",
        "SmsReplyFunctionName",
        "EscalateFunctionName",
        "SilenceFunctionName",
        "OpsTopicArn",
        "OpsDashboardUrl",
    }


# --------------------------------------------------------------------------------------------- the reader


def test_loader_reads_short_form_intrinsics_without_touching_yaml_safeloader() -> None:
    import yaml

    doc = loads_template(
        "Resources:\n"
        "  A:\n"
        "    Type: X\n"
        "    Properties:\n"
        "      Arn: !GetAtt T.StreamArn\n"
        "      Name: !Sub '${AWS::StackName}-x'\n"
        "      Ids: !Split [',', !Ref P]\n"
        "      Version: 2012-10-17\n"
    )
    p = doc["Resources"]["A"]["Properties"]
    assert p["Arn"] == {"Fn::GetAtt": ["T", "StreamArn"]}
    assert p["Name"] == {"Fn::Sub": "${AWS::StackName}-x"}
    assert p["Ids"] == {"Fn::Split": [",", {"Ref": "P"}]}
    assert p["Version"] == "2012-10-17"
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("a: !Ref B")


# ------------------------------------------------------------------ incidents: sms_reply and escalate


def test_sms_reply_behind_its_http_api_with_least_privilege(tpl: dict[str, Any], translated: dict[str, Any]) -> None:
    p = props(tpl, "SmsReplyFunction")
    assert (p["CodeUri"], p["Handler"], p["Role"]) == ("functions/sms_reply/", "app.handler",
                                                       {"Fn::GetAtt": ["SmsReplyRole", "Arn"]})
    routes = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in p["Events"].values()}
    assert routes == {("POST", "/sms/reply"), ("POST", "/sms/status")}
    assert all(e["Type"] == "HttpApi" and e["Properties"]["ApiId"] == {"Ref": "SmsApi"} for e in p["Events"].values())
    assert res(tpl, "SmsApi")["Type"] == "AWS::Serverless::HttpApi"
    assert _resources_for(translated, "SmsReplyRole", "secretsmanager:GetSecretValue") == [{"Ref": "TwilioSecret"}]
    data = [{"Fn::GetAtt": ["DataTable", "Arn"]}, {"Fn::Sub": "${DataTable.Arn}/index/*"}]
    for action in ("GetItem", "UpdateItem", "Query"):
        assert _resources_for(translated, "SmsReplyRole", f"dynamodb:{action}") == data, action
    for action in ("dynamodb:DeleteItem", "s3:GetObject", "sqs:SendMessage"):
        assert _resources_for(translated, "SmsReplyRole", action) == [], action
    # it puts only reply claims (REPLY#<MessageSid>) and the co-ranger notes' SMS items (INC#<incident>)
    assert _resources_for(translated, "SmsReplyRole", "dynamodb:PutItem") == [{"Fn::GetAtt": ["DataTable", "Arn"]}]
    (put,) = [st for st in res(tpl, "SmsReplyRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
              if st["Sid"] == "ReplyClaimsAndNotes"]
    assert put["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["REPLY#*", "INC#*"]}}
    assert props(tpl, "SmsReplyLogGroup")["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${AWS::StackName}-sms_reply"}


def test_escalate_runs_every_minute_with_least_privilege(tpl: dict[str, Any], translated: dict[str, Any]) -> None:
    p = props(tpl, "EscalateFunction")
    (event,) = p["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == "rate(1 minute)"
    assert p["Role"] == {"Fn::GetAtt": ["EscalateRole", "Arn"]}
    assert _resources_for(translated, "EscalateRole", "secretsmanager:GetSecretValue") == [{"Ref": "TwilioSecret"}]
    for action in ("GetItem", "PutItem", "UpdateItem", "Query"):
        assert {"Fn::GetAtt": ["DataTable", "Arn"]} in _resources_for(translated, "EscalateRole", f"dynamodb:{action}")
    assert _resources_for(translated, "EscalateRole", "s3:GetObject") == []
    for fn in ("NotifyFunction", "EscalateFunction"):
        cb = props(tpl, fn)["Environment"]["Variables"]["STATUS_CALLBACK_URL"]["Fn::Sub"]
        assert cb.startswith("https://${SmsApi}.execute-api.") and cb.endswith("/sms/status"), fn


# ------------------------------------------------- issue 6: silence alarm, ops console, least privilege


def _sub_text(value: Any) -> str:
    """The text of a !Sub (short or list form) with every ${...} replaced by a placeholder."""
    import re

    text = value["Fn::Sub"][0] if isinstance(value["Fn::Sub"], list) else value["Fn::Sub"]
    return re.sub(r"\$\{[^}]+\}", "X", text)


def test_silence_function_runs_on_a_schedule_with_a_narrow_role(tpl: dict[str, Any],
                                                                translated: dict[str, Any]) -> None:
    fn = props(tpl, "SilenceFunction")
    assert fn["FunctionName"] == {"Fn::Sub": "${AWS::StackName}-silence"}
    assert fn["Role"] == {"Fn::GetAtt": ["SilenceRole", "Arn"]}
    (event,) = fn["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == "rate(15 minutes)"
    env = fn["Environment"]["Variables"]
    assert env["OPS_TOPIC_ARN"] == {"Ref": "OpsTopic"} and env["TWILIO_SECRET_ARN"] == {"Ref": "TwilioSecret"}
    assert props(tpl, "SilenceLogGroup")["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${AWS::StackName}-silence"}
    actions = {a for acts, _ in _grants(translated, "SilenceRole") for a in acts}
    assert actions == {"logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments",
                       "xray:PutTelemetryRecords", "dynamodb:Query", "dynamodb:UpdateItem",
                       "secretsmanager:GetSecretValue", "sns:Publish", "kms:GenerateDataKey", "kms:Decrypt"}
    assert _resources_for(translated, "SilenceRole", "sns:Publish") == [{"Ref": "OpsTopic"}]


def test_ops_topic_is_encrypted_tls_only_and_alarms_may_publish(tpl: dict[str, Any]) -> None:
    assert props(tpl, "OpsTopic")["KmsMasterKeyId"] == {"Ref": "OpsTopicKey"}
    assert props(tpl, "OpsTopicKey")["EnableKeyRotation"] is True
    stmts = {s["Sid"]: s for s in props(tpl, "OpsTopicPolicy")["PolicyDocument"]["Statement"]}
    assert stmts["DenyInsecureTransport"]["Effect"] == "Deny"
    assert stmts["AlarmsOfThisAccountPublish"]["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert res(tpl, "OpsEmailSubscription")["Condition"] == "HasOpsEmail"


def test_alarms_cover_errors_throttles_dead_letters_silence_and_sms(tpl: dict[str, Any]) -> None:
    alarms = {k: r["Properties"] for k, r in tpl["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert {"FunctionErrorsAlarm", "FunctionThrottlesAlarm", "ClassifyDLQNotEmptyAlarm", "NotifyDLQNotEmptyAlarm",
            "SilentDevicesAlarm", "SmsFailuresAlarm"} <= set(alarms)
    for name, a in alarms.items():
        assert a["AlarmActions"] == [{"Ref": "OpsTopic"}], name
        assert a["TreatMissingData"] == "notBreaching", name
    for name in ("FunctionErrorsAlarm", "FunctionThrottlesAlarm"):
        names = {d["Value"]["Fn::Sub"] for m in alarms[name]["Metrics"] if "MetricStat" in m
                 for d in m["MetricStat"]["Metric"]["Dimensions"]}
        functions = {p["FunctionName"]["Fn::Sub"] for r in tpl["Resources"].values()
                     if r["Type"] == "AWS::Serverless::Function" for p in [r["Properties"]]}
        assert names == functions, name  # every function, and only real ones
    assert alarms["SilentDevicesAlarm"]["Dimensions"] == [{"Name": "service", "Value": "silence"}]
    assert alarms["SmsFailuresAlarm"]["MetricName"] == "SmsFailed"


def test_dashboard_shows_what_ops_need(tpl: dict[str, Any]) -> None:
    body = json.loads(_sub_text(props(tpl, "OpsDashboard")["DashboardBody"]))
    text = json.dumps(body)
    for metric in ("ClipsReceived", "ClipsProcessed", "ClipsRejected", "AudioSeconds", "Detections_gunshot",
                   "Detections_chainsaw", "IncidentsOpened", "SmsSent", "SmsFailed", "ProcessingLatency",
                   "ApproximateNumberOfMessagesVisible", "SilentDevices", "Errors", "Throttles"):
        assert f'"{metric}"' in text, metric
    assert '"p50"' in text and '"p95"' in text and "m1/3600" in text
    alarms = {k for k, r in tpl["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    (panel,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    raw = props(tpl, "OpsDashboard")["DashboardBody"]["Fn::Sub"][0]
    assert len(panel["properties"]["alarms"]) == len(alarms)
    assert all(f'"${{{a}.Arn}}"' in raw for a in alarms)  # every alarm in the template is on the panel
    for metric in ("AlertsWithoutRanger", "SmsUndelivered", "EscalationExhausted", "IteratorAge", "5xx",
                   "ClipsByModel"):
        assert metric in text, metric
    functions = {r["Properties"]["FunctionName"]["Fn::Sub"] for r in tpl["Resources"].values()
                 if r["Type"] == "AWS::Serverless::Function"}
    for title in ("Function errors (every function)", "Function throttles (every function)"):
        (w,) = [w for w in body["widgets"] if w["properties"].get("title") == title]
        shown = len(w["properties"]["metrics"])
        assert shown == len(functions), title
        assert all(f'"{f}"' in raw for f in functions), title


def test_saved_log_queries_for_clips_and_incidents(tpl: dict[str, Any]) -> None:
    queries = {k: r["Properties"] for k, r in tpl["Resources"].items() if r["Type"] == "AWS::Logs::QueryDefinition"}
    clip, incident = queries["WhyNoAlertQuery"], queries["IncidentHistoryQuery"]
    assert {"Ref": "ClassifyLogGroup"} in clip["LogGroupNames"] and "decisions" in clip["QueryString"]
    assert "CLIP_KEY_OR_ID" in clip["QueryString"]
    assert {"Ref": "EscalateLogGroup"} in incident["LogGroupNames"] and "INCIDENT_ID" in incident["QueryString"]


def test_no_plain_secret_or_phone_number_in_function_environments(translated: dict[str, Any]) -> None:
    import re

    for logical_id, r in translated["Resources"].items():
        if r["Type"] != "AWS::Lambda::Function":
            continue
        env = json.dumps(r["Properties"].get("Environment", {}))
        assert not re.search(r"\+\d{8,}", env), logical_id  # phone numbers come from data, never env
        assert not re.search(r"(?i)(auth_token|password|secret_key)\"\s*:", env), logical_id


def test_silent_failures_are_alarmed_from_metrics_the_code_emits(tpl: dict[str, Any]) -> None:
    alarms = {k: r["Properties"] for k, r in tpl["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    emitted = {(a["MetricName"], a["Dimensions"][0]["Value"]) for a in alarms.values()
               if a.get("Namespace") == "Sentinela"}
    assert {("AlertsWithoutRanger", "notify"), ("SmsUndelivered", "sms_reply"),
            ("EscalationExhausted", "escalate")} <= emitted
    src = "".join((REPO / "layers" / "core" / "sentinela" / "services" / f).read_text()
                  for f in ("incidents.py", "silence.py", "pipeline.py"))
    src += "".join((REPO / "functions" / f / "app.py").read_text() for f in ("sms_reply", "notify"))
    assert {("ClipsFailed", "classify"), ("WebhookMisconfigured", "sms_reply"),
            ("AlertsRejected", "notify")} <= emitted
    from sentinela import runtime
    from sentinela.domain.channel import channel_metric

    try:  # a channel's figures are named after it (SmsUndelivered: channel_metric(name, "Undelivered"))
        wired = list(runtime.channels())
    finally:
        runtime.reset()
    for metric, _ in emitted:
        events = [e for name in wired for e in ("Sent", "Failed", "Undelivered") if channel_metric(name, e) == metric]
        emits = f'"{metric}"' in src or any(f'channel_metric(report.channel, "{e}")' in src
                                            or f'channel_metric(channel.name, "{e}")' in src for e in events)
        assert emits, metric  # an alarm on a metric nobody emits would never fire
    age = alarms["NotifyIteratorAgeAlarm"]
    assert (age["Namespace"], age["MetricName"], age["Statistic"]) == ("AWS/Lambda", "IteratorAge", "Maximum")
    api = {m["Id"]: m for m in alarms["Api5xxAlarm"]["Metrics"]}
    assert {api[i]["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for i in ("uploads", "sms")} == {
        "UploadsApi", "SmsApi"}


def test_safe_deploys_tags_and_budget(tpl: dict[str, Any], translated: dict[str, Any]) -> None:
    for fn in ("ClassifyFunction", "NotifyFunction"):
        p = props(tpl, fn)
        assert p["AutoPublishAlias"] == "live"
        assert p["DeploymentPreference"]["Type"] == {"Ref": "DeploymentType"}
        assert p["DeploymentPreference"]["Role"] == {"Fn::GetAtt": ["CodeDeployRole", "Arn"]}
    assert props(translated, "NotifyFunctionAlertInserted")["FunctionName"] == {"Ref": "NotifyFunctionAliaslive"}
    perms = [r["Properties"] for r in translated["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"
             and r["Properties"]["Principal"] == "s3.amazonaws.com"]
    assert len(perms) == 8 and all(p["FunctionName"] == {"Ref": "ClassifyFunctionAliaslive"} for p in perms)
    assert tpl["Globals"]["Function"]["Tags"]["SentinelaStack"] == {"Ref": "AWS::StackName"}
    for name in ("ClipsBucket", "DataTable", "ClassifyLogGroup", "OpsTopic"):
        assert {"Key": "SentinelaStack", "Value": {"Ref": "AWS::StackName"}} in props(tpl, name)["Tags"], name
    budget = res(tpl, "CostBudget")
    assert budget["Condition"] == "HasBudget" and budget["Type"] == "AWS::Budgets::Budget"
    assert "CostBudget" not in translated["Resources"] or translated["Resources"]["CostBudget"]["Condition"]


def test_clip_caps_in_code_are_the_template_parameters(tpl: dict[str, Any]) -> None:
    """One size cap: the code's defaults (used where no template sets the variables, e.g. the CLI) are the
    template's parameter defaults, and every function that checks a cap receives the parameter itself."""
    from sentinela.config import DEFAULT_MAX_CLIP_BYTES, DEFAULT_MAX_CLIP_SECONDS

    assert tpl["Parameters"]["MaxClipBytes"]["Default"] == DEFAULT_MAX_CLIP_BYTES
    assert tpl["Parameters"]["MaxClipSeconds"]["Default"] == DEFAULT_MAX_CLIP_SECONDS
    for fn in ("ClassifyFunction", "PresignFunction"):
        env = tpl["Resources"][fn]["Properties"]["Environment"]["Variables"]
        assert env["MAX_CLIP_BYTES"] == {"Ref": "MaxClipBytes"}, fn
    assert tpl["Resources"]["ClassifyFunction"]["Properties"]["Environment"]["Variables"][
        "MAX_CLIP_SECONDS"] == {"Ref": "MaxClipSeconds"}


def test_classify_knows_its_last_attempt(tpl: dict[str, Any]) -> None:
    """The last attempt records a terminal clip status: it must know which attempt is the last."""
    props = tpl["Resources"]["ClassifyFunction"]["Properties"]
    retries = props["EventInvokeConfig"]["MaximumRetryAttempts"]
    assert props["Environment"]["Variables"]["CLASSIFY_MAX_ATTEMPTS"] == str(retries + 1)


def test_classify_runs_numpys_blas_on_one_thread(tpl: dict[str, Any]) -> None:
    """An OpenBLAS worker spinning after a numpy call took the core the model's second thread needed."""
    env = tpl["Resources"]["ClassifyFunction"]["Properties"]["Environment"]["Variables"]
    assert env["OPENBLAS_NUM_THREADS"] == "1"
