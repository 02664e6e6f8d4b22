"""Properties of template.yaml that the code relies on: document patterns, least-privilege IAM, environment."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from eks_prefetch.settings import Settings
from harness import template as cfn
from tests.conftest import DEPLOYMENT_ENV

DIGEST = "sha256:" + "0123456789abcdef" * 4
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def images_pattern() -> str:
    return cfn.document_content()["parameters"]["images"]["allowedPattern"]


@pytest.mark.parametrize(
    "value",
    [
        f"{ECR}/ml/trainer@{DIGEST}",
        f"{ECR}/ml/trainer:v2.1.0,{ECR}/ml/inference@{DIGEST}",
        f"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/ml/trainer@{DIGEST}",
        f"123456789012.dkr-ecr.us-east-1.on.aws/ml/trainer@{DIGEST}",
        "127.0.0.1:5000/demo/app:latest",
        "public.ecr.aws/docker/library/busybox:1.36",
        ",".join([f"{ECR}/repo-{n}@{DIGEST}" for n in range(50)]),
    ],
)
def test_images_pattern_accepts_real_references(value):
    assert re.fullmatch(images_pattern(), value)


@pytest.mark.parametrize(
    "value",
    [
        f"{ECR}/ml/trainer@{DIGEST};touch /tmp/x",
        f"{ECR}/ml/trainer:$(id)",
        f"{ECR}/ml/trainer:`id`",
        f"{ECR}/ml/trainer:v1 v2",
        f"{ECR}/ml/trainer:v1'",
        f'{ECR}/ml/trainer:v1"',
        f"{ECR}/ml/trainer:v1\nSSM_PARAM_END",
        f"{ECR}/ml/trainer:v1|sh",
        f"{ECR}/ml/trainer@sha256:short",
        "",
        ",".join([f"{ECR}/repo-{n}@{DIGEST}" for n in range(51)]),
    ],
)
def test_images_pattern_rejects_shell_syntax_and_junk(value):
    assert not re.fullmatch(images_pattern(), value)


def test_script_parameters_are_passed_as_environment_variables():
    parameters = cfn.document_content()["parameters"]
    script_parameters = {name for name in parameters if name != "executionTimeout"}
    for name in script_parameters:
        assert parameters[name]["interpolationType"] == "ENV_VAR", name
        assert "allowedPattern" in parameters[name] or "allowedValues" in parameters[name], name
        assert f"SSM_{name}" in cfn.document_script(), name


def test_document_is_replaced_not_updated_so_version_one_is_pinned():
    document = cfn.resource("PrefetchDocument")["Properties"]
    assert "Name" not in document
    assert document.get("UpdateMethod", "Replace") == "Replace"
    assert cfn.template()["Globals"]["Function"]["Environment"]["Variables"]["DOCUMENT_VERSION"] == "1"


def test_functions_environment_satisfies_settings():
    variables = cfn.template()["Globals"]["Function"]["Environment"]["Variables"]
    required = {field.alias for field in Settings.model_fields.values() if field.is_required()} - {"AWS_REGION"}
    # Intrinsics stand for values CloudFormation fills in: the test deployment's stand in for them.
    deployed = {name: value if isinstance(value, str) else DEPLOYMENT_ENV[name] for name, value in variables.items()}

    assert required - set(variables) == set()
    Settings.from_env({**deployed, "AWS_REGION": "us-east-1"})


def _send_command_policy() -> dict[str, Any]:
    template_text, _variables = cfn.resource("SendPrefetchCommandPolicy")["Properties"]["PolicyDocument"]["Fn::Sub"]
    return json.loads(template_text)


def test_send_command_is_scoped_to_the_document_and_tagged_nodes():
    statements = _send_command_policy()["Statement"]

    assert {s["Action"] for s in statements} == {"ssm:SendCommand"}
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["PrefetchDocument"]["Resource"].endswith(":document/${PrefetchDocument}")
    assert "Condition" not in by_sid["PrefetchDocument"]
    nodes = by_sid["ClusterNodesOnly"]
    assert nodes["Resource"].endswith(":instance/*")
    assert nodes["Condition"] == {"StringEquals": {"ssm:resourceTag/${NodeTagKey}": "${TagValue}"}}
    assert "ec2:ResourceTag" not in json.dumps(_send_command_policy())


def test_no_wildcard_actions_anywhere():
    text = json.dumps(cfn.template()) + json.dumps(_send_command_policy())
    actions = re.findall(r'"Action": (\[[^\]]*\]|"[^"]*")', text)

    assert actions
    assert all("*" not in action for action in actions)
