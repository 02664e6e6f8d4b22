"""Properties of template.yaml that the code relies on: document patterns, least-privilege IAM, environment."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from eks_prefetch.deploy.unpin import UnpinTarget
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import deadline_margin_seconds
from eks_prefetch.node_selectors import target_key_problem
from eks_prefetch.prefetch.commands import image_batches, send_command_request
from eks_prefetch.settings import (
    EnvironmentSettings,
    LaunchSettings,
    PlannerSettings,
    PushSettings,
    StatusSettings,
)
from eks_prefetch.warm.uninstall import WarmUninstallSettings
from harness import template as cfn

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
    for function in ("EcrPushFunction", "NodeLaunchFunction", "StatusFunction", "WarmPlannerFunction"):
        assert cfn.resource(function)["Properties"]["Environment"]["Variables"]["DOCUMENT_VERSION"] == "1"


# Each function's settings model; the configuration check reads only its request.
FUNCTION_SETTINGS: dict[str, type[EnvironmentSettings] | None] = {
    "EcrPushFunction": PushSettings,
    "NodeLaunchFunction": LaunchSettings,
    "StatusFunction": StatusSettings,
    "WarmPlannerFunction": PlannerSettings,
    "UnpinFunction": UnpinTarget,
    "WarmUninstallFunction": WarmUninstallSettings,
    "ConfigCheckFunction": None,
}
# What every function reads (Powertools), in Globals or its own block.
POWERTOOLS = {"POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_TRACE_DISABLED"}


def test_every_function_has_a_settings_model_here():
    functions = {
        name
        for name, resource in cfn.template()["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    assert functions == set(FUNCTION_SETTINGS)


def test_globals_hold_only_what_every_function_reads():
    assert set(cfn.template()["Globals"]["Function"]["Environment"]["Variables"]) == POWERTOOLS


@pytest.mark.parametrize("function", FUNCTION_SETTINGS)
def test_each_function_gets_exactly_the_variables_its_settings_read(function: str):
    """The template's per-function environment mirrors the function's settings model: every variable it requires,
    and none it does not read (a variable with a default may be left to it)."""
    model = FUNCTION_SETTINGS[function]
    own = set(cfn.resource(function)["Properties"]["Environment"]["Variables"]) - {"POWERTOOLS_SERVICE_NAME"}
    reads = model.variables() if model else frozenset()
    required = {str(field.alias) for field in model.model_fields.values() if field.is_required()} if model else set()

    assert own - reads == set(), "variables the function does not read"
    assert required - {"AWS_REGION"} - own == set(), "variables the function requires"


@pytest.mark.parametrize("function", [name for name, model in FUNCTION_SETTINGS.items() if model])
def test_each_function_loads_its_settings_from_its_deployed_environment(function: str):
    overrides = {"WarmVolumes": "true", "WarmBuilderSubnetId": "subnet-0123456789abcdef0"}
    loaded = FUNCTION_SETTINGS[function].from_env(cfn.function_environment(function, **overrides))

    assert loaded.conflicts() == []


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


# --- every parameter combination CloudFormation accepts makes working settings ---------------------------------------


def _extremes() -> list[dict[str, Any]]:
    numbers = {
        name: (spec["MinValue"], spec.get("MaxValue", spec["MinValue"] * 1000))
        for name, spec in cfn.template()["Parameters"].items()
        if spec["Type"] == "Number" and "MinValue" in spec
    }
    return [
        {name: low for name, (low, _high) in numbers.items()},
        {name: high for name, (_low, high) in numbers.items()},
        # Each pair the template cannot compare, at its worst.
        {
            "ExecutionTimeoutSeconds": numbers["ExecutionTimeoutSeconds"][0],
            "PullTimeoutSeconds": numbers["PullTimeoutSeconds"][1],
        },
        {
            "NodeLaunchRetryBaseSeconds": numbers["NodeLaunchRetryBaseSeconds"][1],
            "NodeLaunchRetryMaxSeconds": numbers["NodeLaunchRetryMaxSeconds"][0],
        },
        {"RepositoryNames": [f"team-{n}/model" for n in range(120)]},
    ]


@pytest.mark.parametrize("function", ["EcrPushFunction", "NodeLaunchFunction", "StatusFunction"])
@pytest.mark.parametrize(
    "overrides", _extremes(), ids=["minimums", "maximums", "pull-vs-execution", "retry-base-vs-max", "120-repositories"]
)
def test_template_extremes_load_working_settings(function: str, overrides: dict[str, Any]):
    """No parameter combination that CloudFormation accepts may make every invocation fail: where the template
    cannot express a constraint of Settings, Settings resolves it and names it."""
    loaded = FUNCTION_SETTINGS[function].from_env(cfn.function_environment(function, **overrides))

    assert loaded.effective_pull_timeout_seconds < loaded.execution_timeout_seconds
    images = [
        ResolvedImage(ECR, name, DIGEST, "v1", datetime(2026, 11, 1, tzinfo=UTC)) for name in loaded.repository_names
    ]
    batches = image_batches(images)
    assert sum(len(batch) for batch in batches) == len(images)
    document_parameters = cfn.document_content()["parameters"]
    for batch in batches:
        request = send_command_request(batch, loaded, instance_ids=["i-0123456789abcdef0"])
        sent = {name: int(value) for name, (value,) in request["Parameters"].items() if value.isdigit()}
        # The node's own deadline ends the run a margin before the agent's timeout: a pull must end before that.
        deadline = sent["executionTimeout"] - deadline_margin_seconds(sent["executionTimeout"])
        assert sent["pullTimeoutSeconds"] <= deadline
        for name, (value,) in request["Parameters"].items():
            spec = document_parameters[name]
            assert (
                re.fullmatch(spec["allowedPattern"], value)
                if "allowedPattern" in spec
                else value in spec["allowedValues"]
            ), name


def test_repository_names_are_checked_by_cloudformation_like_settings():
    """CloudFormation applies a CommaDelimitedList's AllowedPattern to every item."""
    pattern = cfn.template()["Parameters"]["RepositoryNames"]["AllowedPattern"]
    for good in ["ml/trainer", "a1", "team.x/model_v2__b/c-d"]:
        assert re.fullmatch(pattern, good), good
    for bad in ["ML/trainer", "ml/trainer ", " ml", "ml//x", "a", "-x", "x" * 257]:
        assert not re.fullmatch(pattern, bad), bad


def test_node_tag_key_pattern_admits_nothing_ssm_targets_refuse():
    """NodeTagKey is every command's target key: CloudFormation refuses what SSM's Targets would (a '+', which EC2
    tag keys may have), with the reason in its ConstraintDescription."""
    spec = cfn.template()["Parameters"]["NodeTagKey"]
    pattern = spec["AllowedPattern"]

    admitted = [char for char in map(chr, range(32, 127)) if re.fullmatch(pattern, f"a{char}")]
    assert [char for char in admitted if target_key_problem(f"a{char}")] == []
    for key in ["eks:cluster-name", "eks:eks-cluster-name", "kubernetes.io/cluster/ml-prod", "x" * 128]:
        assert re.fullmatch(pattern, key), key
    for key in ["eks+cluster-name", "", "x" * 129]:
        assert not re.fullmatch(pattern, key), key
    assert "SSM Run Command's Targets refuse '+'" in " ".join(spec["ConstraintDescription"].split())
