"""The node-role policy the stack ships: created from template.yaml in moto (harness.stack), exported, and scoped to
the command output's log group."""

from __future__ import annotations

import json
from typing import Any

import boto3

from harness.stack import ACCOUNT, REGION, Stack
from harness.template import template
from prefetchctl.node_role import node_needs, unmet


def _statements(stack: Stack) -> tuple[str, dict[str, dict[str, Any]]]:
    arn = stack.resolver.resolve(template()["Outputs"]["NodeRolePolicyArn"]["Value"])
    iam = boto3.client("iam", region_name=REGION)
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    return arn, {statement["Sid"]: statement for statement in document["Statement"]}


def test_node_role_policy_is_exported_and_writes_only_the_command_output_log_group(aws_mock: None) -> None:
    stack = Stack({"ClusterName": "ml-prod", "RepositoryNames": "ml/trainer"}, name="prefetch-prod").create()
    arn, statements = _statements(stack)

    assert arn.startswith(f"arn:aws:iam::{ACCOUNT}:policy/")
    assert set(statements) == {"WriteCommandOutput", "FindCommandOutputLogGroup"}
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/ssm/prefetch-prod/prefetch"
    write = statements["WriteCommandOutput"]
    assert write["Effect"] == "Allow"
    assert sorted(write["Action"]) == ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    assert write["Resource"] == [group, f"{group}:*"]
    # The one log group the stack creates for the command output, and which the functions name in SendCommand.
    logs = boto3.client("logs", region_name=REGION)
    assert logs.describe_log_groups(logGroupNamePrefix="/aws/ssm/prefetch-prod/prefetch")["logGroups"]
    assert stack.environment("EcrPushFunction")["OUTPUT_LOG_GROUP"] == "/aws/ssm/prefetch-prod/prefetch"

    find = statements["FindCommandOutputLogGroup"]
    assert find["Action"] == "logs:DescribeLogGroups"
    assert find["Resource"] == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*"


def test_node_role_policy_grants_nothing_beyond_logs_and_no_wildcard_action() -> None:
    statements = template()["Resources"]["NodeRolePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    actions = [a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]

    assert all(action.startswith("logs:") and "*" not in action for action in actions)
    assert "logs:CreateLogGroup" not in actions  # the stack creates the group; nodes never need to
    assert all(statement["Effect"] == "Allow" for statement in statements)


def test_the_shipped_policy_is_what_preflight_asks_of_an_inline_equivalent(aws_mock: None) -> None:
    """`make preflight` accepts, in place of NodeRolePolicyArn attached, inline policies granting what it grants: the
    stack's own document, inline, meets that need, and without its DescribeLogGroups statement does not."""
    stack = Stack({"ClusterName": "ml-prod", "RepositoryNames": "ml/trainer"}, name="prefetch-prod").create()
    arn, statements = _statements(stack)
    (need,) = [
        need
        for need in node_needs(
            partition="aws",
            region=REGION,
            account=ACCOUNT,
            repositories=["ml/trainer"],
            node_policy=("NodeRolePolicyArn", arn),
            log_group=stack.environment("EcrPushFunction")["OUTPUT_LOG_GROUP"],
        )
        if arn in need.policies
    ]
    without_find = [statement for sid, statement in statements.items() if sid != "FindCommandOutputLogGroup"]

    assert unmet(need, attached=[], documents=[{"Statement": list(statements.values())}]) is None
    assert unmet(need, attached=[arn], documents=[]) is None
    assert unmet(need, attached=[], documents=[{"Statement": without_find}]) == (
        ("logs:DescribeLogGroups", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*"),
    )
