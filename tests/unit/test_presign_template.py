"""template.yaml for recorder uploads: the presign function's role is the ceiling of what any device can
write (a presigned POST is signed with it), so it must stay exactly this narrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sentinela_tools.devtools.template_reader import load_template

REPO = Path(__file__).resolve().parents[2]
BUCKET = "${AWS::StackName}-clips-${AWS::AccountId}-${AWS::Region}"


@pytest.fixture(scope="module")
def tpl() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def _statements(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (policy,) = tpl["Resources"]["PresignRole"]["Properties"]["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_presign_role_grants_exactly_these(tpl: dict[str, Any]) -> None:
    st = _statements(tpl)
    assert set(st) == {"Logs", "XRayRequiresStar", "SignClipUploads", "DuplicateCheck", "DevicesAndRateCounters"}
    assert all(s["Effect"] == "Allow" for s in st.values())
    assert st["SignClipUploads"]["Action"] == "s3:PutObject"
    assert st["SignClipUploads"]["Resource"] == {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{BUCKET}/clips/*"}
    assert st["DuplicateCheck"]["Action"] == "s3:ListBucket"
    assert st["DuplicateCheck"]["Condition"] == {"StringLike": {"s3:prefix": "clips/*"}}
    assert st["DevicesAndRateCounters"]["Action"] == ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    assert st["DevicesAndRateCounters"]["Resource"] == {"Fn::GetAtt": ["DataTable", "Arn"]}
    assert st["DevicesAndRateCounters"]["Condition"] == {
        "ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["SITE#*", "AUTHFAIL#*"]}}
    # No reading audio, no tagging, no deleting, no other table or secret.
    actions = {a for s in st.values() for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert not any(a.startswith(("s3:Get", "s3:Delete", "secretsmanager:", "sqs:")) for a in actions)


def test_presign_function_behind_the_http_api(tpl: dict[str, Any]) -> None:
    p = tpl["Resources"]["PresignFunction"]["Properties"]
    assert p["FunctionName"] == {"Fn::Sub": "${AWS::StackName}-presign"}
    assert p["Role"] == {"Fn::GetAtt": ["PresignRole", "Arn"]}
    assert "Layers" not in p  # the core and the light runtime (Globals) only: no numpy, no onnxruntime
    assert p["Events"]["Upload"] == {"Type": "HttpApi", "Properties": {
        "ApiId": {"Ref": "UploadsApi"}, "Method": "POST", "Path": "/uploads"}}
    env = p["Environment"]["Variables"]
    assert env["CLIPS_BUCKET"] == {"Fn::Sub": BUCKET} and env["MAX_CLIP_BYTES"] == {"Ref": "MaxClipBytes"}
    assert int(env["UPLOAD_URL_TTL_S"]) <= 900
    api = tpl["Resources"]["UploadsApi"]["Properties"]
    assert api["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
