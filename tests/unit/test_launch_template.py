"""Properties of the node-launch resources in template.yaml that the function's retry logic relies on."""

from __future__ import annotations

from typing import Any

import pytest

from eks_prefetch.settings import LaunchSettings
from harness import template as cfn
from testing.environment import DEPLOYMENT_ENV

# The function's environment variables fed from a template parameter, and which one.
LAUNCH_PARAMETERS = {
    "NODE_LAUNCH_MAX_RECEIVES": "NodeLaunchMaxReceives",
    "NODE_TAG_GRACE_SECONDS": "NodeTagGraceSeconds",
    "NODE_LAUNCH_RETRY_BASE_SECONDS": "NodeLaunchRetryBaseSeconds",
    "NODE_LAUNCH_FAST_RETRIES": "NodeLaunchFastRetries",
    "NODE_LAUNCH_RETRY_MAX_SECONDS": "NodeLaunchRetryMaxSeconds",
}


def function() -> dict[str, Any]:
    return cfn.resource("NodeLaunchFunction")["Properties"]


def sqs_event() -> dict[str, Any]:
    return function()["Events"]["NodeLaunch"]


def test_the_function_knows_the_queues_receive_budget():
    """The last attempt can say why it gives up only if maxReceiveCount and the setting are the same parameter."""
    redrive = cfn.resource("NodeLaunchQueue")["Properties"]["RedrivePolicy"]
    variables = function()["Environment"]["Variables"]

    assert redrive["maxReceiveCount"] == {"Ref": "NodeLaunchMaxReceives"}
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["NodeLaunchDeadLetterQueue", "Arn"]}
    for variable, parameter in LAUNCH_PARAMETERS.items():
        assert variables[variable] == {"Ref": parameter}
        assert cfn.template()["Parameters"][parameter]["Description"]


def test_parameter_defaults_are_valid_settings():
    parameters = cfn.template()["Parameters"]
    defaults = {variable: str(parameters[name]["Default"]) for variable, name in LAUNCH_PARAMETERS.items()}
    loaded = LaunchSettings.from_env({**DEPLOYMENT_ENV, **defaults})

    assert loaded.node_launch_max_receives == parameters["NodeLaunchMaxReceives"]["Default"]
    assert parameters["NodeLaunchMaxReceives"]["MinValue"] >= 1
    assert parameters["NodeLaunchMaxReceives"]["MaxValue"] <= 1000  # SQS's limit on maxReceiveCount


def test_queue_visibility_is_at_least_six_function_timeouts():
    timeout = function().get("Timeout", cfn.template()["Globals"]["Function"]["Timeout"])

    assert cfn.resource("NodeLaunchQueue")["Properties"]["VisibilityTimeout"] >= 6 * timeout


def test_queues_are_encrypted_and_the_dead_letter_queue_outlives_the_queue():
    queue = cfn.resource("NodeLaunchQueue")["Properties"]
    dlq = cfn.resource("NodeLaunchDeadLetterQueue")["Properties"]

    assert queue["SqsManagedSseEnabled"] is True
    assert dlq["SqsManagedSseEnabled"] is True
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]


def test_sqs_event_reports_partial_batch_failures():
    properties = sqs_event()["Properties"]

    assert sqs_event()["Type"] == "SQS"
    assert properties["Queue"] == {"Fn::GetAtt": ["NodeLaunchQueue", "Arn"]}
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= properties["BatchSize"] <= 10
    assert properties["MaximumBatchingWindowInSeconds"] <= 10


def test_rule_sends_running_instances_to_the_queue():
    rule = cfn.resource("NodeLaunchRule")["Properties"]

    assert rule["EventPattern"] == {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["running"]},
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["NodeLaunchQueue", "Arn"]}
    assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["NodeLaunchDeadLetterQueue", "Arn"]}


@pytest.mark.parametrize(
    ("policy", "queue"),
    [("NodeLaunchQueuePolicy", "NodeLaunchQueue"), ("NodeLaunchDeadLetterQueuePolicy", "NodeLaunchDeadLetterQueue")],
)
def test_only_the_rule_may_send_to_the_queues(policy: str, queue: str):
    properties = cfn.resource(policy)["Properties"]
    (statement,) = properties["PolicyDocument"]["Statement"]

    assert properties["Queues"] == [{"Ref": queue}]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["NodeLaunchRule", "Arn"]}}}


def test_function_iam_is_least_privilege():
    policies = function()["Policies"]
    managed = [policy for policy in policies if isinstance(policy, dict) and set(policy) == {"Ref"}]
    inline = [policy for policy in policies if isinstance(policy, dict) and "Statement" in policy]

    assert managed == [{"Ref": "SendPrefetchCommandPolicy"}, {"Ref": "ReadWatchedRepositoriesPolicy"}]
    assert {"DynamoDBCrudPolicy": {"TableName": {"Ref": "IdempotencyTable"}}} in policies
    (document,) = inline
    grants = {statement["Action"]: statement["Resource"] for statement in document["Statement"]}
    assert all(statement["Effect"] == "Allow" for statement in document["Statement"])
    # The two describes accept no resource-level permissions; everything else is scoped.
    assert grants == {
        "ec2:DescribeInstances": "*",
        "ssm:DescribeInstanceInformation": "*",
        "sqs:ChangeMessageVisibility": {"Fn::GetAtt": ["NodeLaunchQueue", "Arn"]},
    }


def test_function_has_a_log_group_and_outputs():
    log_group = cfn.resource("NodeLaunchFunctionLogGroup")["Properties"]
    outputs = cfn.template()["Outputs"]

    assert log_group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${NodeLaunchFunction}"}
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert outputs["NodeLaunchQueueUrl"]["Value"] == {"Ref": "NodeLaunchQueue"}
    assert outputs["NodeLaunchDeadLetterQueueUrl"]["Value"] == {"Ref": "NodeLaunchDeadLetterQueue"}
    assert function()["Handler"] == "app.lambda_handler"
    assert function()["CodeUri"] == "functions/node_launch"
