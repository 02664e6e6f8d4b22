"""The application end to end, asserted on containerd's real state (images, digests, pin labels), on the agent's
invocation records as SSM's APIs answer them, and on the stack's queues."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.demo import emf_totals
from harness.node import PIN_LABEL
from harness.world import World

pytestmark = pytest.mark.node

REPOSITORY = "ml/trainer"
LAYERS_MB = [4.0, 4.0]
HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def ecr_name(digest: str) -> str:
    return f"{HOST}/{REPOSITORY}@{digest}"


def pinned(world: World, instance_id: str) -> dict[str, bool]:
    """digest -> pinned, for every image in the node's k8s.io namespace."""
    return {
        image["digest"]: image["labels"].get(PIN_LABEL) == "pinned"
        for image in world.instances[instance_id].node.images().values()
    }


def outputs(world: World, command_id: str, instance_id: str) -> list[dict[str, Any]]:
    text = world.invocation(command_id, instance_id)["StandardOutputContent"]
    return [json.loads(line) for line in text.splitlines()]


def commands_for(world: World, digest: str) -> list[dict[str, Any]]:
    return [command for command in world.commands() if digest in command["Parameters"]["images"][0]]


def test_push_fan_out_update_and_late_node(make_world) -> None:
    world = make_world(MaxConcurrency="2", MaxErrors="1", PinnedVersionsToKeep="1")
    nodes = [world.launch(f"node-{index}") for index in (1, 2, 3)]
    bastion = world.launch("bastion", node=False)
    world.settle(60)

    v1 = world.push(REPOSITORY, "v1", LAYERS_MB)
    world.settle(120)
    (command,) = commands_for(world, v1.digest)
    assert command["Targets"] == [{"Key": "tag:eks:cluster-name", "Values": ["e2e"]}]
    assert command["Status"] == "Success"
    assert command["TargetCount"] == 3
    for node in nodes:
        assert pinned(world, node) == {v1.digest: True}
        assert world.instances[node].node.images()[ecr_name(v1.digest)]["digest"] == v1.digest
        (record, summary) = outputs(world, command["CommandId"], node)
        assert (record["status"], record["digest"], summary["pulled"]) == ("pulled", v1.digest, 1)
        # The same lines in the stack's output log group (/aws/ssm/<stack>/prefetch), as the agent ships them.
        assert [json.loads(line) for line in world.output_log_lines(command["CommandId"], node)] == [record, summary]
    # Registered with SSM, but without the node tag: never targeted, nothing pulled.
    assert world.instances[bastion].node.images() == {}
    assert all(bastion not in c.invocations for c in world.agent.commands.values())

    v2 = world.push(REPOSITORY, "v2", [2.0], based_on="v1")
    world.settle(120)
    (command,) = commands_for(world, v2.digest)
    # The tag the push resolved, beside the digest the node pulls: the node names the image by the pod's tag too.
    assert command["Parameters"]["images"] == [f"{HOST}/{REPOSITORY}:v2@{v2.digest}"]
    for node in nodes:
        # Only v2 was pulled; v1 is still there but lost its pin (PinnedVersionsToKeep=1).
        assert pinned(world, node) == {v1.digest: False, v2.digest: True}
        (record, summary) = outputs(world, command["CommandId"], node)
        # v1's two names lost their pin: by digest, and by the tag v1 it was sent with.
        assert (record["status"], summary["unpinned"]) == ("pulled", 2)

    launch = world.stack.functions["NodeLaunchFunction"]
    late = world.launch("node-4", register_after=2.5)
    world.settle(60)
    retries = [
        record
        for invocation in launch.invocations
        for record in invocation.records
        if record.get("message") == "node not ready, retrying later" and record.get("instance_id") == late
    ]
    assert retries, "node-4 was ready at once: the retry path was not exercised"
    assert pinned(world, late) == {v2.digest: True}
    (command,) = [c for c in world.commands() if c["InstanceIds"] == [late]]
    assert command["Status"] == "Success"

    # What the demo shows as the metrics that would reach CloudWatch: the status function's EMF, by dimensions.
    metrics = emf_totals(world)
    per_repository = f"ClusterName=e2e,Repository={REPOSITORY}"
    assert sum(metrics[("ImagesPulled", per_repository)][1]) == 7  # 3 nodes x 2 pushes, and the late node
    assert metrics[("Invocations", "ClusterName=e2e,Status=Success")][1] == [1.0] * 7
    # Two pushes, the late node's launch: one series per function (service), as CloudWatch keeps them.
    assert metrics[("CommandsSent", "ClusterName=e2e,service=ecr-push")][1] == [1.0, 1.0]
    assert metrics[("CommandsSent", "ClusterName=e2e,service=node-launch")][1] == [1.0]


def test_duplicate_push_sends_one_command(make_world) -> None:
    world = make_world(MaxConcurrency="100%")
    nodes = [world.launch(f"node-{index}") for index in (1, 2)]
    world.settle(60)
    image = world.push(REPOSITORY, "v1", LAYERS_MB, emit=False)
    event = world.push_event(image)
    (first,) = world.emit(event)
    (second,) = world.emit(event)  # EventBridge delivers at least once
    world.settle(120)

    assert first.invocation.result["status"] == "sent"
    assert second.invocation.result == {**first.invocation.result, "status": "duplicate"}
    assert len(commands_for(world, image.digest)) == 1
    for node in nodes:
        assert pinned(world, node) == {image.digest: True}


def test_registry_outage_fails_that_node_only(make_world) -> None:
    world = make_world(MaxConcurrency="100%", MaxErrors="1")
    healthy = [world.launch("node-1"), world.launch("node-3")]
    cut = world.launch("node-2", proxy=True)
    world.settle(60)
    # The node's connection to the registry drops 1 MB into the pull: the manifest gets through, a layer does not.
    world.instances[cut].proxy.cut(after_bytes=1_000_000)

    image = world.push(REPOSITORY, "v1", [8.0])
    world.settle(180)

    (command,) = commands_for(world, image.digest)
    failed = world.invocation(command["CommandId"], cut)
    assert (failed["Status"], failed["StatusDetails"], failed["ResponseCode"]) == ("Failed", "Failed", 1)
    (record, summary) = outputs(world, command["CommandId"], cut)
    assert record["status"] == "failed" and record["error"]
    assert summary["failed"] == 1
    assert world.instances[cut].proxy.cut_done.is_set()
    assert image.digest not in pinned(world, cut)
    for node in healthy:
        assert world.invocation(command["CommandId"], node)["Status"] == "Success"
        assert pinned(world, node) == {image.digest: True}
    # The status-change events a status function would receive, in AWS's shape.
    statuses = {
        (event["detail"]["instance-id"], event["detail"]["status"])
        for event in world.emitted
        if event["detail-type"] == "EC2 Command Invocation Status-change Notification"
    }
    assert {(cut, "Failed"), *((node, "Success") for node in healthy)} <= statuses
    # One error, within MaxErrors=1: tried everywhere, not all Success.
    assert (command["Status"], command["StatusDetails"]) == ("Failed", "Incomplete")


def test_errors_beyond_max_errors_cancel_the_targets_not_started(make_world) -> None:
    world = make_world(MaxConcurrency="1", MaxErrors="0")
    first = world.launch("node-1", proxy=True)
    rest = [world.launch("node-2"), world.launch("node-3")]
    world.settle(60)
    world.instances[first].proxy.cut(after_bytes=0)

    image = world.push(REPOSITORY, "v1", LAYERS_MB)
    world.settle(120)

    (command,) = commands_for(world, image.digest)
    assert (command["Status"], command["StatusDetails"]) == ("Failed", "Failed")
    assert world.invocation(command["CommandId"], first)["Status"] == "Failed"
    for node in rest:
        assert world.invocation(command["CommandId"], node)["Status"] == "Cancelled"
        assert world.instances[node].node.images() == {}


def test_node_that_never_registers_ends_in_the_dead_letter_queue(make_world) -> None:
    world = make_world(NodeLaunchMaxReceives="2")
    world.push(REPOSITORY, "v1", LAYERS_MB)
    world.settle(60)
    launch = world.stack.functions["NodeLaunchFunction"]
    launch.recycle()
    lost = world.launch("node-lost", register_after=None)
    # The last receive gives up without a backoff: the message comes back after the queue's own visibility timeout
    # (360 s), and SQS moves it to the DLQ on that receive. Time passes instead of waiting.
    world.settle(60, fast_forward=True)
    assert world.fast_forwards >= 1

    (dead,) = world.queue_messages("NodeLaunchDeadLetterQueue")
    assert dead["detail"] == {"instance-id": lost, "state": "running"}
    messages = [message for invocation in launch.invocations for message in invocation.messages()]
    assert any(message.startswith("giving up: SSM agent not online after 2 attempts") for message in messages)
    assert not [c for c in world.commands() if c["InstanceIds"] == [lost]]
    assert world.instances[lost].node.images() == {}


def _coverage(world: World) -> dict[str, Any]:
    """What `make status` computes (the status function's code, in a fresh environment of the function)."""
    import importlib  # noqa: PLC0415 - the function's modules, loaded inside its environment

    with world.stack.functions["StatusFunction"].container(fresh=True):
        coverage = importlib.import_module("eks_prefetch.status.coverage")
        resolution = importlib.import_module("eks_prefetch.prefetch.resolution")
        settings_module = importlib.import_module("eks_prefetch.settings")
        settings = settings_module.load(settings_module.StatusSettings)
        coverages = coverage.look_at_fleet(settings, resolution.NewestImages(settings)).coverages
    return {coverage.repository: coverage for coverage in coverages}


def test_a_lost_status_event_is_recovered_by_the_sweep(make_world) -> None:
    world = make_world(MaxConcurrency="100%")
    nodes = [world.launch(f"node-{index}") for index in (1, 2)]
    world.settle(60)
    # EventBridge drops node-2's final status event (SSM's events are best effort).
    world.lose = lambda event: (
        event["detail-type"] == "EC2 Command Invocation Status-change Notification"
        and event["detail"]["instance-id"] == nodes[1]
        and event["detail"]["status"] == "Success"
    )

    image = world.push(REPOSITORY, "v1", LAYERS_MB)
    world.settle(120)

    assert len(world.lost) == 1
    status = world.stack.functions["StatusFunction"]
    counted = {i.result["instance_id"] for i in status.invocations if i.result.get("result") == "counted"}
    assert counted == {nodes[0]}
    (sweep,) = world.router.fire_schedules()
    assert sweep.invocation.error is None
    assert (sweep.invocation.result["counted"], sweep.invocation.result["already_counted"]) == (1, 1)
    coverage = _coverage(world)[REPOSITORY]
    assert coverage.newest.digest == image.digest
    assert (coverage.percent, tuple(coverage.missing)) == (100.0, ())
    for node in nodes:
        assert pinned(world, node) == {image.digest: True}


def test_a_push_whose_events_are_all_lost_is_repaired_within_one_sweep(make_world) -> None:
    """EventBridge drops the push's event: no command goes out. The first sweep after the grace period (0 here)
    sends the image to every online node, by instance id, and coverage reaches 100% on the real nodes."""
    world = make_world(RepairGraceSeconds="0")
    nodes = [world.launch(f"node-{index}") for index in (1, 2, 3)]
    bastion = world.launch("bastion", node=False)
    world.settle(60)
    world.lose = lambda event: event["detail-type"] == "ECR Image Action"

    image = world.push(REPOSITORY, "v1", LAYERS_MB)
    world.settle(60)
    assert [event["detail-type"] for event in world.lost] == ["ECR Image Action"]
    assert world.commands() == []

    (sweep,) = world.router.fire_schedules()
    world.settle(120)

    assert sweep.invocation.error is None
    assert sweep.invocation.result["repair"]["nodes_repaired"] == 3
    (command,) = world.commands()
    assert sorted(command["InstanceIds"]) == sorted(nodes)
    coverage = _coverage(world)[REPOSITORY]
    assert coverage.newest.digest == image.digest
    assert (coverage.percent, tuple(coverage.missing)) == (100.0, ())
    for node in nodes:
        assert pinned(world, node) == {image.digest: True}
    assert world.instances[bastion].node.images() == {}
