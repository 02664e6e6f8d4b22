"""The emulated stack without real nodes (no root needed): the sample events through `make invoke`, the Run Command
agent's SSM semantics, and routing that follows whatever template.yaml wires."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from harness import invoke, stack, template
from harness.agent import WINDOWS
from harness.node import Run
from harness.world import World

ROOT = Path(__file__).resolve().parents[2]
EVENTS = sorted((ROOT / "events").glob("*/*.json"))
SAMPLE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/trainer@sha256:" + "a" * 64

# What each sample does to the function it belongs to. A new sample without an entry here fails the test.
EXPECTED = {
    "ecr_push/delete.json": {"status": "ignored", "reason": "not a successful push"},
    "ecr_push/push-failed.json": {"status": "ignored", "reason": "not a successful push"},
    "ecr_push/push-signature.json": {"status": "ignored", "reason": "not a container image"},
    "ecr_push/push-tagged.json": {"status": "sent"},
    "ecr_push/push-untagged.json": {"status": "ignored", "reason": "untagged push"},
    "ecr_push/push-unwatched.json": {"status": "ignored", "reason": "repository not watched"},
    "node_launch/eventbridge-ec2-running.json": {"batchItemFailures": []},
    "node_launch/sqs-ec2-running.json": {"batchItemFailures": []},
    "status/invocation-failed.json": {"result": "counted", "status": "Failed"},
    "status/invocation-in-progress.json": {"result": "pending", "status": "InProgress"},
    "status/invocation-other-document.json": {"result": "foreign"},
    "status/invocation-success.json": {"result": "counted", "status": "Success"},
    "status/scheduled-sweep.json": {"result": "swept", "errors": 0},
}


def function_for(event_file: Path) -> str:
    """The function whose CodeUri is functions/<the sample's directory>."""
    resources = template.template()["Resources"]
    (logical_id,) = [
        logical_id
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
        and resource["Properties"]["CodeUri"] == f"functions/{event_file.parent.name}"
    ]
    return logical_id


@pytest.mark.parametrize("event_file", EVENTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_sample_event_works_with_its_function(event_file: Path) -> None:
    expected = EXPECTED[f"{event_file.parent.name}/{event_file.name}"]
    invocation = invoke.invoke(function_for(event_file), event_file)

    assert invocation.error is None, invocation.logs
    assert {key: invocation.result.get(key) for key in expected} == expected
    messages = invocation.messages()
    if expected.get("status") == "sent" or event_file.parent.name == "node_launch":
        assert "prefetch command sent" in messages


def test_make_invoke_prints_the_result_and_the_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code = invoke.main(["EcrPushFunction", str(ROOT / "events/ecr_push/push-untagged.json")])

    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == {"status": "ignored", "reason": "untagged push"}
    assert any(json.loads(line).get("message") == "push ignored" for line in err.splitlines() if line.startswith("{"))


@pytest.fixture
def world() -> World:
    parameters = {"ClusterName": "demo", "RepositoryNames": "ml/trainer", "NodeTagGraceSeconds": "0"}
    with World(parameters, real_nodes=False) as started:
        yield started


def send(world: World, **request: Any) -> str:
    parameters = {"images": [SAMPLE_IMAGE], **request.pop("Parameters", {})}
    return world.ssm.send_command(DocumentName=world.stack.document_name, Parameters=parameters, **request)["Command"][
        "CommandId"
    ]


def test_send_command_to_an_unregistered_instance_fails_like_ssm(world: World) -> None:
    instance_id = world.launch("node-1", register_after=None)

    with pytest.raises(ClientError) as error:
        send(world, InstanceIds=[instance_id])
    assert error.value.response["Error"]["Code"] == "InvalidInstanceId"
    with pytest.raises(ClientError) as error:
        world.ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [instance_id]}])
    assert error.value.response["Error"]["Code"] == "InvalidInstanceId"


@pytest.mark.parametrize(
    "parameters",
    [{"images": ["not a reference; rm -rf /"]}, {"pin": ["maybe"]}, {"unknown": ["x"]}, {"keepPinned": ["1", "2"]}],
)
def test_parameters_are_checked_against_the_document(world: World, parameters: dict[str, list[str]]) -> None:
    instance_id = world.launch("node-1")

    with pytest.raises(ClientError) as error:
        send(world, InstanceIds=[instance_id], Parameters=parameters)
    assert error.value.response["Error"]["Code"] == "InvalidParameters"
    assert world.agent.commands == {}


def test_tag_targets_reach_registered_tagged_running_instances_only(world: World) -> None:
    node = world.launch("node-1")
    world.launch("late", register_after=None)
    world.launch("bastion", node=False)
    stopped = world.launch("stopped")
    world.ec2.stop_instances(InstanceIds=[stopped])

    command_id = send(world, Targets=[{"Key": "tag:eks:cluster-name", "Values": ["demo"]}])
    world.agent.wait(30)

    invocations = world.ssm.list_command_invocations(CommandId=command_id)["CommandInvocations"]
    assert [(item["InstanceId"], item["Status"]) for item in invocations] == [(node, "Success")]
    info = world.ssm.describe_instance_information()["InstanceInformationList"]
    assert {item["InstanceId"] for item in info} == set(world.instances) - {
        i for i, instance in world.instances.items() if instance.name == "late"
    }


def test_a_windows_node_reports_its_platform_and_skips_the_linux_step_as_ssm_does(world: World) -> None:
    """SSM's agent skips a step whose precondition does not hold and ends the invocation Success, with the skip as
    the step's output (amazon-ssm-agent's executer). The node itself never runs anything."""
    linux = world.launch("node-1")
    windows = world.launch("win-1", platform=WINDOWS)

    command_id = send(world, Targets=[{"Key": "tag:eks:cluster-name", "Values": ["demo"]}])
    world.agent.wait(30)

    skipped = world.ssm.get_command_invocation(CommandId=command_id, InstanceId=windows)
    assert (skipped["Status"], skipped["ResponseCode"]) == ("Success", 0)
    assert skipped["StandardOutputContent"] == (
        "Step execution skipped due to unsatisfied preconditions: '\"StringEquals\": [platformType, Linux]'. "
        "Step name: prefetchImages"
    )
    assert world.instances[windows].node.would_run == []
    assert world.ssm.get_command_invocation(CommandId=command_id, InstanceId=linux)["Status"] == "Success"
    info = {i["InstanceId"]: i for i in world.ssm.describe_instance_information()["InstanceInformationList"]}
    assert (info[windows]["PlatformType"], info[linux]["PlatformType"]) == ("Windows", "Linux")


class LoudNode:
    """A node whose run prints more than SSM keeps."""

    name = "loud"

    def execute(self, content: dict[str, Any], values: dict[str, str], command_id: str, timeout: float) -> Run:
        return Run(3, "o" * 30_000, "e" * 10_000, 0.0)


def test_output_is_truncated_to_ssm_limits_and_a_non_zero_exit_fails(world: World) -> None:
    instance_id = world.launch("loud")
    world.agent.register(instance_id, LoudNode())
    world.settle(30)

    group = "/aws/ssm/test/prefetch"
    command_id = send(
        world,
        InstanceIds=[instance_id],
        CloudWatchOutputConfig={"CloudWatchLogGroupName": group, "CloudWatchOutputEnabled": True},
    )
    world.settle(30)

    answer = world.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    assert (answer["Status"], answer["ResponseCode"]) == ("Failed", 3)
    assert (len(answer["StandardOutputContent"]), len(answer["StandardErrorContent"])) == (24_000, 8_000)
    (item,) = world.ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    assert len(item["CommandPlugins"][0]["Output"]) == 2_500
    # CloudWatch Logs (the command's CloudWatchOutputConfig) gets all of it.
    assert world.output_log_lines(command_id, instance_id) == ["o" * 30_000]


def test_dry_run_node_says_so_and_records_what_it_would_run(world: World) -> None:
    instance_id = world.launch("node-1")

    command_id = send(world, InstanceIds=[instance_id])
    world.settle(30)

    answer = world.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    assert json.loads(answer["StandardOutputContent"])["dry_run"] is True
    assert "DRY RUN" in answer["StandardErrorContent"]
    (would,) = world.instances[instance_id].node.would_run
    assert would["parameters"]["images"] == SAMPLE_IMAGE
    assert "ctr -n" in Path(would["script"]).read_text()


def test_a_rule_added_to_the_template_is_routed_without_code_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the status function will need: SSM status events reach a function the template wires to them."""
    extended = copy.deepcopy(template.template())
    extended["Resources"]["StatusStubFunction"] = {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "CodeUri": "tests/e2e/status_stub",
            "Handler": "app.lambda_handler",
            "Layers": [],
            "Events": {
                "InvocationStatus": {
                    "Type": "EventBridgeRule",
                    "Properties": {
                        "Pattern": {
                            "source": ["aws.ssm"],
                            "detail-type": ["EC2 Command Invocation Status-change Notification"],
                            "detail": {
                                "document-name": [{"Ref": "PrefetchDocument"}],
                                "status": [{"anything-but": ["Pending", "InProgress", "Delayed", "Cancelling"]}],
                            },
                        }
                    },
                }
            },
        },
    }
    monkeypatch.setattr(stack, "template", lambda: extended)
    monkeypatch.setattr(template, "template", lambda: extended)
    with World({"ClusterName": "demo", "RepositoryNames": "ml/trainer"}, real_nodes=False) as world:
        instance_id = world.launch("node-1")
        send(world, InstanceIds=[instance_id])
        world.settle(30)
        results = [invocation.result for invocation in world.stack.functions["StatusStubFunction"].invocations]
    assert results == [{"instance": instance_id, "status": "Success"}]


def test_the_stack_is_created_from_the_template(world: World) -> None:
    environment = world.stack.environment("NodeLaunchFunction")
    assert environment["DOCUMENT_NAME"] == world.stack.document_name
    assert environment["NODE_TAG_VALUE"] == "demo"  # NodeTagValue empty -> ClusterName (!If)
    max_receives = template.template()["Parameters"]["NodeLaunchMaxReceives"]["Default"]
    assert environment["NODE_LAUNCH_MAX_RECEIVES"] == str(max_receives)
    document = world.ssm.get_document(Name=world.stack.document_name, DocumentFormat="YAML")
    assert "ctr -n" in document["Content"]
    queue = world.stack.queues["NodeLaunchQueue"]
    attributes = world.sqs.get_queue_attributes(QueueUrl=queue["url"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive == {
        "deadLetterTargetArn": world.stack.queues["NodeLaunchDeadLetterQueue"]["arn"],
        "maxReceiveCount": max_receives,
    }
    table = environment["IDEMPOTENCY_TABLE"]
    assert boto3.client("dynamodb").describe_table(TableName=table)["Table"]["KeySchema"][0]["AttributeName"] == "id"


def test_a_node_registering_after_a_push_gets_the_pushed_image() -> None:
    """The push's tag-targeted command cannot reach a node whose agent registers after it; the node-launch path must
    send that node the pushed image, not a resolution its warm container made before the push."""
    parameters = {
        "ClusterName": "demo",
        "RepositoryNames": "ml/trainer",
        "NodeTagGraceSeconds": "0",
        "NodeLaunchRetryBaseSeconds": "1",
        "NodeLaunchRetryMaxSeconds": "1",
    }
    with World(parameters, real_nodes=False) as world:
        world.push("ml/trainer", "v1", [1.0])
        world.launch("node-1")
        world.settle(30)  # node-1's launch resolves v1 in the warm node-launch container
        late = world.launch("node-2", register_after=3.0)
        v2 = world.push("ml/trainer", "v2", [1.0])  # its fleet command cannot reach node-2 yet
        world.settle(60)
        (command,) = [c for c in world.commands() if c["InstanceIds"] == [late]]
    assert command["Parameters"]["images"] == [
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/trainer:v2@{v2.digest}"
    ]


class HungNode:
    """A node whose run outlives the step's timeout (the agent kills it)."""

    name = "hung"

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def execute(self, content: dict[str, Any], values: dict[str, str], command_id: str, timeout: float) -> Run:
        self.timeouts.append(timeout)
        error = TimeoutError(f"step timed out after {timeout:.0f} s")
        error.stdout = '{"image":"x","status":"failed"}\n'  # type: ignore[attr-defined]
        raise error


def test_a_step_past_its_timeout_is_timed_out_and_counts_as_an_error(world: World) -> None:
    hung = world.launch("hung")
    world.agent.register(hung, node := HungNode())
    other = world.launch("other")

    command_id = send(world, InstanceIds=[hung, other], MaxConcurrency="1", MaxErrors="0")
    world.agent.wait(30)

    answer = world.ssm.get_command_invocation(CommandId=command_id, InstanceId=hung)
    assert (answer["Status"], answer["StatusDetails"]) == ("TimedOut", "ExecutionTimedOut")
    assert answer["StandardOutputContent"] == '{"image":"x","status":"failed"}\n'
    assert node.timeouts == [3600.0]  # the step's timeoutSeconds: {{ executionTimeout }}, its default
    assert world.ssm.get_command_invocation(CommandId=command_id, InstanceId=other)["Status"] == "Cancelled"
