"""The status function's SSM adapters that moto does not implement, against botocore's Stubber.

Double: a Stubber on a real botocore client checks each request against the service model and answers pages; this
is how ListCommandInvocations and DescribeInstanceInformation (moto gaps) are tested at the request level.
"""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import Stubber

from eks_prefetch import aws

COMMAND = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


@pytest.fixture
def ssm(deployment_env):
    # Fake credentials and region come from the test deployment's environment; the Stubber answers every call.
    client = boto3.client("ssm")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_list_command_invocations_pages_through_every_node(ssm):
    client, stubber = ssm
    expected = {"CommandId": COMMAND, "Details": False, "MaxResults": 50}
    stubber.add_response(
        "list_command_invocations",
        {"CommandInvocations": [{"InstanceId": "i-1", "Status": "Success"}], "NextToken": "t"},
        expected,
    )
    stubber.add_response(
        "list_command_invocations",
        {"CommandInvocations": [{"InstanceId": "i-2", "Status": "Pending"}]},
        {**expected, "NextToken": "t"},
    )

    listed = list(aws.ssm.list_command_invocations(COMMAND, ssm=client))

    assert [(item["InstanceId"], item["Status"]) for item in listed] == [("i-1", "Success"), ("i-2", "Pending")]


def test_online_managed_nodes_filters_by_tag_and_ping_status(ssm):
    client, stubber = ssm
    filters = [
        {"Key": "tag:eks:cluster-name", "Values": ["ml-prod"]},
        {"Key": "PingStatus", "Values": ["Online"]},
    ]
    stubber.add_response(
        "describe_instance_information",
        {
            "InstanceInformationList": [
                {"InstanceId": "i-1", "PingStatus": "Online"},
                {"InstanceId": "i-2", "PingStatus": "ConnectionLost"},
            ],
            "NextToken": "t",
        },
        {"Filters": filters, "MaxResults": 50},
    )
    stubber.add_response(
        "describe_instance_information",
        {"InstanceInformationList": [{"InstanceId": "i-3", "PingStatus": "Online"}]},
        {"Filters": filters, "MaxResults": 50, "NextToken": "t"},
    )

    nodes = [info["InstanceId"] for info in aws.ssm.online_managed_nodes("eks:cluster-name", "ml-prod", ssm=client)]

    assert nodes == ["i-1", "i-3"]


def test_list_document_commands_filters_by_document_and_time(ssm):
    client, stubber = ssm
    stubber.add_response(
        "list_commands",
        {"Commands": [{"CommandId": COMMAND, "DocumentName": "doc"}]},
        {
            "Filters": [
                {"key": "DocumentName", "value": "doc"},
                {"key": "InvokedAfter", "value": "2026-11-01T12:00:00Z"},
            ],
            "MaxResults": 50,
        },
    )

    commands = list(aws.ssm.list_document_commands("doc", datetime(2026, 11, 1, 12, tzinfo=UTC), ssm=client))

    assert [command["CommandId"] for command in commands] == [COMMAND]


@pytest.mark.parametrize("code", ["InvocationDoesNotExist", "InvalidCommandId"])
def test_get_command_invocation_unknown_is_none(ssm, code):
    client, stubber = ssm
    stubber.add_client_error("get_command_invocation", service_error_code=code, http_status_code=400)

    assert aws.ssm.get_command_invocation(COMMAND, "i-1", ssm=client) is None


def test_get_command_invocation_throttling_propagates(ssm):
    client, stubber = ssm
    stubber.add_client_error("get_command_invocation", service_error_code="ThrottlingException", http_status_code=400)

    with pytest.raises(client.exceptions.ClientError):
        aws.ssm.get_command_invocation(COMMAND, "i-1", ssm=client)
