"""Stack deletion with WarmVolumes (the WarmUninstall custom resource, functions/warm_uninstall): nothing the stack
leaves behind keeps billing. A running build is stopped and its builder terminated; Fast Snapshot Restore (about
$0.75 per snapshot per AZ-hour) is disabled on every warm snapshot of the stack; the snapshots stay, so that a node
group or launch template still naming one keeps launching.

moto has no fast snapshot restore: ``FastSnapshotRestores`` (testing/warm.py). The builder state machine is created
but not executed (an execution stays RUNNING: a build in progress). CloudFormation's ResponseURL is stood in for by
recording the answer the function delivers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from eks_prefetch import aws
from testing.deployment import FakeLambdaContext, load_handler
from testing.environment import ACCOUNT, REGION
from testing.warm import FastSnapshotRestores, WarmStack

STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/eks-image-prefetch/0f1e2d3c-0000-4000-8000-000000000000"


@pytest.fixture
def warm(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[WarmStack]:
    stack = WarmStack()
    monkeypatch.setenv("WARM_STACK_NAME", "eks-image-prefetch")
    monkeypatch.setenv("WARM_STATE_MACHINE_ARN", stack.state_machine)
    yield stack


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the function PUTs at the request's pre-signed ResponseURL."""
    delivered: list[dict[str, Any]] = []
    monkeypatch.setattr(aws.stack, "put_custom_resource_response", lambda _url, body: delivered.append(body))
    return delivered


def request(kind: str) -> dict[str, Any]:
    return {
        "RequestType": kind,
        "ServiceToken": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:warm-uninstall",
        "ResponseURL": "https://cloudformation-custom-resource-response.s3.amazonaws.com/x?X-Amz-Signature=abc",
        "StackId": STACK_ID,
        "RequestId": f"req-{kind}",
        "LogicalResourceId": "WarmUninstall",
        "ResourceType": "Custom::WarmVolumesOnDelete",
        "ResourceProperties": {"ServiceToken": "x", "ServiceTimeout": "120"},
        **({"PhysicalResourceId": "eks-image-prefetch-WarmUninstall"} if kind != "Create" else {}),
    }


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return load_handler("warm_uninstall").lambda_handler(event, FakeLambdaContext())


def test_stack_deletion_stops_the_build_terminates_its_builder_and_disables_fast_snapshot_restore(
    warm: WarmStack, answers: list[dict[str, Any]]
) -> None:
    fsr = FastSnapshotRestores().install()
    running = warm.sfn.start_execution(stateMachineArn=warm.state_machine, name="building", input="{}")
    builder = warm.builder(build="building")
    other_stacks_builder = warm.builder(build="building", stack="another-stack")
    published, older = warm.snapshot(), warm.snapshot()
    other_stacks = warm.snapshot(stack="another-stack")
    for snapshot in (published, older, other_stacks):
        fsr.enable(snapshot, warm.zone, "us-east-1b")

    result = invoke(request("Delete"))

    assert warm.sfn.describe_execution(executionArn=running["executionArn"])["status"] == "ABORTED"
    assert warm.state_of(builder) == "terminated"
    assert warm.state_of(other_stacks_builder) == "running"
    assert fsr.zones(published) == fsr.zones(older) == set()
    assert fsr.zones(other_stacks) == {warm.zone, "us-east-1b"}
    # Left on purpose: a node group or launch template that still names a snapshot keeps launching.
    assert warm.snapshots() == {published, older, other_stacks}
    (answer,) = answers
    assert answer["Status"] == "SUCCESS" and answer["PhysicalResourceId"] == "eks-image-prefetch-WarmUninstall"
    assert (answer["RequestId"], answer["LogicalResourceId"], answer["StackId"]) == (
        "req-Delete",
        "WarmUninstall",
        STACK_ID,
    )
    assert result["builders_terminated"] == [builder]
    assert sorted(result["fast_snapshot_restores_disabled"]) == sorted([published, older])


@pytest.mark.parametrize("kind", ["Create", "Update"])
def test_create_and_update_do_nothing(warm: WarmStack, answers: list[dict[str, Any]], kind: str) -> None:
    running = warm.sfn.start_execution(stateMachineArn=warm.state_machine, name="building", input="{}")
    builder = warm.builder(build="building")

    invoke(request(kind))

    assert warm.sfn.describe_execution(executionArn=running["executionArn"])["status"] == "RUNNING"
    assert warm.state_of(builder) == "running"
    assert [answer["Status"] for answer in answers] == ["SUCCESS"]


def test_a_failing_step_is_reported_and_the_others_still_run(
    warm: WarmStack, answers: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never blocks the deletion: whatever fails is named in the answer's reason, and the other steps run."""
    builder = warm.builder(build="building")

    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise ConnectionError("ThrottlingException: Rate exceeded")

    monkeypatch.setattr(aws.sfn, "running_executions", refused)

    invoke(request("Delete"))

    assert warm.state_of(builder) == "terminated"
    (answer,) = answers
    assert answer["Status"] == "SUCCESS" and "Rate exceeded" in answer["Reason"]


def test_a_malformed_request_is_still_answered(warm: WarmStack, answers: list[dict[str, Any]]) -> None:
    event = request("Delete")
    del event["StackId"]

    invoke(event)

    (answer,) = answers
    assert answer["Status"] == "SUCCESS" and answer["RequestId"] == "req-Delete"
