"""Uninstall: the stack's custom resource, run as deployed (harness.stack: template.yaml in moto, the function in its
own container with its deployed environment), answering CloudFormation at a real HTTP ResponseURL on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto.core.exceptions import ServiceException
from moto.ssm.models import ssm_backends

from eks_prefetch.deploy import unpin as uninstall
from harness.stack import ACCOUNT, REGION, Stack
from harness.template import template
from prefetchctl import unpin as make_unpin
from testing.cloudformation import CloudFormationEndpoint, DeployedStacks

STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/prefetch-prod/0f1e2d3c-0000-4000-8000-000000000000"


@pytest.fixture
def stack(aws_mock: None) -> Stack:
    return Stack({"ClusterName": "ml-prod", "RepositoryNames": "ml/trainer"}, name="prefetch-prod").create()


def request(kind: str, url: str, physical_id: str | None = None) -> dict[str, Any]:
    event = {
        "RequestType": kind,
        "ServiceToken": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:unpin",
        "ResponseURL": url,
        "StackId": STACK_ID,
        "RequestId": f"req-{kind}",
        "LogicalResourceId": "UninstallUnpin",
        "ResourceType": "Custom::UnpinOnDelete",
        "ResourceProperties": {"ServiceToken": "x", "ServiceTimeout": "120"},
    }
    if physical_id:
        event["PhysicalResourceId"] = physical_id
    return event


def unpin_commands() -> list[dict[str, Any]]:
    commands = boto3.client("ssm", region_name=REGION).list_commands()["Commands"]
    return [command for command in commands if command["Comment"] == uninstall.COMMENT]


def test_stack_deletion_sends_the_unpin_command_once_by_the_cluster_tag(
    stack: Stack, endpoint: CloudFormationEndpoint
) -> None:
    function = stack.functions["UnpinFunction"]
    document = stack.physical["UnpinDocument"]

    invocation = function.invoke(request("Delete", endpoint.url, "prefetch-prod-UninstallUnpin"))

    assert invocation.error is None, invocation.logs
    (command,) = unpin_commands()
    assert command["DocumentName"] == document != stack.document_name
    assert command["Targets"] == [{"Key": "tag:eks:cluster-name", "Values": ["ml-prod"]}]
    assert command["MaxErrors"] == "100%"
    assert command["Parameters"] == {}
    (body,) = endpoint.bodies
    assert body["Status"] == "SUCCESS"
    assert body["PhysicalResourceId"] == "prefetch-prod-UninstallUnpin"
    assert body["RequestId"] == "req-Delete"
    assert body["LogicalResourceId"] == "UninstallUnpin"
    assert body["StackId"] == STACK_ID
    assert body["Data"]["CommandId"] == command["CommandId"] == invocation.result["command_id"]
    # Signed for an empty content type, as cfn-response sends it.
    assert endpoint.content_types == [""]
    # The pre-signed URL never reaches the logs.
    assert not any("X-Amz-Signature" in line for line in invocation.logs)


def test_create_and_update_send_nothing_and_keep_one_physical_id(
    stack: Stack, endpoint: CloudFormationEndpoint
) -> None:
    function = stack.functions["UnpinFunction"]

    function.invoke(request("Create", endpoint.url))
    created = endpoint.bodies[-1]["PhysicalResourceId"]
    function.invoke(request("Update", endpoint.url, created))

    assert unpin_commands() == []
    assert [body["Status"] for body in endpoint.bodies] == ["SUCCESS", "SUCCESS"]
    # The same id on update: a new one would make CloudFormation delete the old resource, which unpins every node.
    assert created == "prefetch-prod-UninstallUnpin" == endpoint.bodies[-1]["PhysicalResourceId"]


class AccessDeniedException(ServiceException):
    code = "AccessDeniedException"
    message = "not authorized to perform ssm:SendCommand"


def test_a_failure_to_send_still_reports_success(stack: Stack, endpoint: CloudFormationEndpoint) -> None:
    backend = ssm_backends[ACCOUNT][REGION]
    refused: list[str] = []

    def deny(*_args: Any, **_kwargs: Any) -> Any:
        refused.append("SendCommand")
        raise AccessDeniedException()

    backend.send_command = deny

    invocation = stack.functions["UnpinFunction"].invoke(
        request("Delete", endpoint.url, "prefetch-prod-UninstallUnpin")
    )

    assert refused == ["SendCommand"]  # a refusal is not retried
    assert invocation.error is None
    (body,) = endpoint.bodies
    assert body["Status"] == "SUCCESS"
    assert body["Reason"].startswith("unpin command not sent (CommandRefusedError: AccessDeniedException: ")
    assert body["Data"] == {"CommandId": ""}


def test_a_malformed_request_is_still_answered(stack: Stack, endpoint: CloudFormationEndpoint) -> None:
    event = request("Delete", endpoint.url)  # a Delete without PhysicalResourceId is not a valid request

    invocation = stack.functions["UnpinFunction"].invoke(event)

    assert invocation.error is None
    assert unpin_commands() == []
    (body,) = endpoint.bodies
    assert (body["Status"], body["Reason"], body["RequestId"]) == ("SUCCESS", "malformed request", "req-Delete")


def test_the_prefetch_senders_are_deleted_before_the_unpin() -> None:
    """CloudFormation deletes a resource before what it depends on: every function that sends prefetch commands
    depends on the custom resource, so none is left to pin again after the unpin."""
    resources = template()["Resources"]
    senders = {
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function" and "SendPrefetchCommandPolicy" in json.dumps(resource)
    }

    assert senders == {"EcrPushFunction", "NodeLaunchFunction", "StatusFunction"}
    assert all("UninstallUnpin" in resources[name]["DependsOn"] for name in senders)
    assert resources["UninstallUnpin"]["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["UnpinFunction", "Arn"]}


def test_the_unpin_function_may_send_only_the_unpin_document_to_tagged_nodes(stack: Stack) -> None:
    policy = json.loads(
        stack.resolver.resolve(template()["Resources"]["SendUnpinCommandPolicy"]["Properties"]["PolicyDocument"])
    )
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}

    document = stack.physical["UnpinDocument"]
    assert by_sid["UnpinDocument"]["Resource"] == f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/{document}"
    assert by_sid["ClusterNodesOnly"]["Condition"] == {"StringEquals": {"ssm:resourceTag/eks:cluster-name": "ml-prod"}}
    assert {statement["Action"] for statement in policy["Statement"]} == {"ssm:SendCommand"}
    assert template()["Resources"]["UnpinFunction"]["Properties"]["Policies"] == [{"Ref": "SendUnpinCommandPolicy"}]


# --- make unpin (DescribeStacks: the DeployedStacks double, testing/) ---------------------------

UNPIN_DOCUMENT = "prefetch-prod-UnpinDocument-X1Y2"


@pytest.mark.parametrize(
    ("tag_key", "tag_value", "expected"),
    [
        ("eks:cluster-name", "", ("eks:cluster-name", "ml-prod")),  # empty value: the cluster name
        ("kubernetes.io/cluster/ml-prod", "owned", ("kubernetes.io/cluster/ml-prod", "owned")),
    ],
)
def test_make_unpin_sends_the_same_command_to_the_stacks_nodes(
    aws_mock: None, capsys: pytest.CaptureFixture[str], tag_key: str, tag_value: str, expected: tuple[str, str]
) -> None:
    parameters = {"ClusterName": "ml-prod", "NodeTagKey": tag_key, "NodeTagValue": tag_value}
    DeployedStacks().exists("prefetch-prod", {"UnpinDocumentName": UNPIN_DOCUMENT}, parameters)

    code = make_unpin.main(["--stack", "prefetch-prod"])

    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    (command,) = unpin_commands()
    assert command["DocumentName"] == UNPIN_DOCUMENT
    assert command["Targets"] == [{"Key": f"tag:{expected[0]}", "Values": [expected[1]]}]
    assert out.splitlines()[0] == f"unpin command {command['CommandId']} sent to the nodes tagged {'='.join(expected)}"


def test_make_unpin_cannot_read_the_stack(aws_mock: None, capsys: pytest.CaptureFixture[str]) -> None:
    stacks = DeployedStacks()
    stacks.missing("missing")
    stacks.exists("older", {"StatusFunctionName": "f"}, {"ClusterName": "ml-prod"})

    assert make_unpin.main(["--stack", "missing"]) == 2
    assert capsys.readouterr().err.startswith("cannot unpin for the stack missing: ")
    assert make_unpin.main(["--stack", "older"]) == 2
    assert "has no UnpinDocumentName output: deploy this version first" in capsys.readouterr().err
    assert unpin_commands() == []
