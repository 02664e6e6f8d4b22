"""The warm planner's tick cleans up: snapshot retention (WarmSnapshotsToKeep) and builders left behind.

moto has no fast snapshot restore: ``FastSnapshotRestores`` (testing/warm.py) answers Describe- and
DisableFastSnapshotRestores; nor DeleteLaunchTemplateVersions: ``delete_launch_template_versions`` (testing/warm.py)
deletes as EC2 does. The rest is moto's EC2, SSM and Step Functions, with the clock moved by time-machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import time_machine

from eks_prefetch import settings as settings_module
from eks_prefetch.warm.cleanup import builders_left_behind, retention
from eks_prefetch.warm.planner import WarmPlanError
from testing.deployment import FakeLambdaContext, create_status_table, load_handler
from testing.ec2 import set_launch_time
from testing.environment import CLUSTER
from testing.events import event_envelope
from testing.output import emitted
from testing.warm import AMI_PARAMETER, BUILD_TAG, FastSnapshotRestores, WarmStack, delete_launch_template_versions

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TICK = {"trigger": "tick"}


@pytest.fixture
def warm(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[WarmStack]:
    delete_launch_template_versions(monkeypatch)
    stack = WarmStack()
    for key, value in stack.environment().items():
        monkeypatch.setenv(key, value)
    settings_module.load.cache_clear()
    create_status_table()
    yield stack
    settings_module.load.cache_clear()


@pytest.fixture
def fsr(warm: WarmStack) -> FastSnapshotRestores:
    return FastSnapshotRestores().install()


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def run(event: dict[str, Any]) -> dict[str, Any]:
    return load_handler("warm_planner").lambda_handler(event, FakeLambdaContext())


def metric(printed: str, name: str) -> list[float]:
    found = [(dict(dimensions), value) for metric_name, dimensions, value in emitted(printed) if metric_name == name]
    assert all(dimensions.get("ClusterName") == CLUSTER for dimensions, _value in found)
    return [value for _dimensions, value in found]


# --- retention ------------------------------------------------------------------------------------------------------


def test_retention_keeps_the_newest_disables_fsr_on_the_rest_and_deletes_only_what_no_version_uses(
    warm: WarmStack, fsr: FastSnapshotRestores, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshots = []
    for _hour in range(5):
        snapshots.append(warm.snapshot())
        clock.shift(timedelta(hours=1))
    oldest, second, third, fourth, newest = snapshots
    oldest_version = warm.use_in_launch_template(oldest)
    # A self-managed group still launches the oldest's version, by number.
    autoscaling = boto3.client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="pinned",
        LaunchTemplate={"LaunchTemplateId": warm.launch_template, "Version": str(oldest_version)},
        MinSize=0,
        MaxSize=0,
        AvailabilityZones=[warm.zone],
    )
    warm.use_in_launch_template(fourth)
    warm.use_in_launch_template(newest, default=True)
    warm.publish(newest, warm.amd64_ami, [])
    for snapshot in (oldest, second, newest):
        fsr.enable(snapshot, warm.zone, "us-east-1b")
    elsewhere = warm.snapshot(stack="another-stack")
    capsys.readouterr()

    outcome = run(TICK)

    assert sorted(outcome["snapshots_deleted"]) == sorted([second, third])
    assert warm.snapshots() == {oldest, fourth, newest, elsewhere}
    assert fsr.zones(oldest) == fsr.zones(second) == set()
    assert fsr.zones(newest) == {warm.zone, "us-east-1b"}
    assert sorted(outcome["fast_snapshot_restores_disabled"]) == sorted([oldest, second])
    assert metric(capsys.readouterr().out, "WarmSnapshotsDeleted") == [2]

    # Once no group launches its version any more, the version is pruned and the oldest goes too.
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName="pinned", ForceDelete=True)
    clock.shift(timedelta(minutes=15))
    outcome = run(TICK)
    assert outcome["launch_template_versions_deleted"] == [oldest_version]
    assert outcome["snapshots_deleted"] == [oldest]
    assert warm.snapshots() == {fourth, newest, elsewhere}


def test_retention_waits_while_a_build_runs(warm: WarmStack, fsr: FastSnapshotRestores, clock: Any) -> None:
    snapshots = []
    for _hour in range(4):
        snapshots.append(warm.snapshot())
        clock.shift(timedelta(hours=1))
    warm.sfn.start_execution(stateMachineArn=warm.state_machine, name="building", input="{}")

    outcome = run(TICK)

    assert outcome["result"] == "running" and "snapshots_deleted" not in outcome
    assert warm.snapshots() == set(snapshots)


def _snapshot(snapshot_id: str, hour: int, state: str = "completed") -> dict[str, Any]:
    return {"SnapshotId": snapshot_id, "StartTime": START + timedelta(hours=hour), "State": state}


def test_retention_never_touches_a_pending_snapshot_and_always_keeps_the_published_one() -> None:
    snapshots = [
        _snapshot("snap-published", 0),
        _snapshot("snap-1", 1),
        _snapshot("snap-2", 2),
        _snapshot("snap-building", 3, state="pending"),
        _snapshot("snap-failed", -1, state="error"),
    ]

    plan = retention(snapshots, keep=1, published="snap-published", in_use={"snap-1"})

    assert plan.old == ("snap-1", "snap-failed")
    assert plan.deletable == ("snap-failed",)


def test_retention_never_deletes_a_snapshot_another_launch_template_names_or_one_tagged_to_keep(
    warm: WarmStack, fsr: FastSnapshotRestores, clock: Any
) -> None:
    """A user's own launch template, a managed node group's copy of WarmLaunchTemplate, Karpenter's template from an
    EC2NodeClass's snapshotID: any version of any launch template of the account that names a snapshot keeps it.
    A snapshot no template names yet (an EC2NodeClass not launched from) is kept by the tag
    eks-image-prefetch:keep."""
    snapshots = []
    for _hour in range(5):
        snapshots.append(warm.snapshot())
        clock.shift(timedelta(hours=1))
    karpenters, kept_by_tag, unused, fourth, newest = snapshots
    own = warm.ec2.create_launch_template(
        LaunchTemplateName="karpenter.k8s.aws/1234", LaunchTemplateData={"InstanceType": "m7i.large"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    warm.use_in_launch_template(karpenters, template=own)
    warm.ec2.create_tags(Resources=[kept_by_tag], Tags=[{"Key": "eks-image-prefetch:keep", "Value": "karpenter"}])
    warm.use_in_launch_template(newest, default=True)
    warm.publish(newest, warm.amd64_ami, [])

    outcome = run(TICK)

    assert outcome["snapshots_deleted"] == [unused]
    assert warm.snapshots() == {karpenters, kept_by_tag, fourth, newest}


def test_retention_prunes_old_builder_versions_no_auto_scaling_group_launches_then_their_snapshots(
    warm: WarmStack, fsr: FastSnapshotRestores, clock: Any
) -> None:
    """Each build adds a version of WarmLaunchTemplate; kept, every old one would keep its snapshot forever. A
    version the builder made whose snapshots are all beyond the newest N goes, unless it is the default or the latest
    or an Auto Scaling group launches it by number (a self-managed group pinned to it); the stack's own versions
    (not the builder's) stay."""
    snapshots, versions = [], []
    for _hour in range(4):
        snapshot = warm.snapshot()
        snapshots.append(snapshot)
        versions.append(warm.use_in_launch_template(snapshot, default=True))
        clock.shift(timedelta(hours=1))
    first, pinned, third, newest = snapshots
    warm.publish(newest, warm.amd64_ami, [], launch_template_version=versions[-1])
    boto3.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName="self-managed-warm",
        LaunchTemplate={"LaunchTemplateId": warm.launch_template, "Version": str(versions[1])},
        MinSize=0,
        MaxSize=0,
        AvailabilityZones=[warm.zone],
    )

    outcome = run(TICK)

    assert warm.launch_template_versions() == {1, *versions[1:]}  # the stack's version 1, and the pinned one
    assert outcome["launch_template_versions_deleted"] == [versions[0]]
    assert outcome["snapshots_deleted"] == [first]
    assert warm.snapshots() == {pinned, third, newest}


# --- builders left behind -------------------------------------------------------------------------------------------


def test_the_sweep_terminates_only_old_builders_of_no_running_build(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    warm.sfn.start_execution(stateMachineArn=warm.state_machine, name="still-building", input="{}")
    left_behind = warm.builder(build="failed-build")
    long_build = warm.builder(build="still-building")
    young = warm.builder(build="just-started")
    another_stack = warm.builder(build="failed-build", stack="another-stack")
    for instance in (left_behind, long_build, another_stack):
        set_launch_time(instance, START - timedelta(hours=13))
    set_launch_time(young, START - timedelta(hours=1))
    capsys.readouterr()

    outcome = run(TICK)

    assert outcome["builders_terminated"] == [left_behind]
    assert warm.state_of(left_behind) == "terminated"
    assert {warm.state_of(i) for i in (long_build, young, another_stack)} == {"running"}
    assert metric(capsys.readouterr().out, "WarmBuildersLeftBehind") == [1]


def test_a_builder_without_a_build_tag_counts_as_left_behind_once_old() -> None:
    old = {"InstanceId": "i-0123456789abcdef0", "LaunchTime": START - timedelta(hours=13), "Tags": []}
    new = {"InstanceId": "i-0123456789abcdef1", "LaunchTime": START, "Tags": [{"Key": BUILD_TAG, "Value": "x"}]}

    assert builders_left_behind([old, new], set(), START, timedelta(hours=12)) == [old["InstanceId"]]


def test_a_quiet_tick_reports_zero_builders_left_behind(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run(TICK)

    assert "builders_terminated" not in outcome
    printed = capsys.readouterr().out
    assert metric(printed, "WarmBuildersLeftBehind") == [0]
    assert metric(printed, "WarmBuildsStarted") == [0]


def test_a_tick_whose_ami_cannot_be_resolved_fails_but_still_sweeps(warm: WarmStack, clock: Any) -> None:
    left_behind = warm.builder(build="failed-build")
    set_launch_time(left_behind, START - timedelta(hours=13))
    warm.ssm.delete_parameter(Name=AMI_PARAMETER)

    with pytest.raises(WarmPlanError, match=AMI_PARAMETER):
        run(TICK)

    assert warm.state_of(left_behind) == "terminated"
    assert warm.executions() == []


# --- the builder of a build that ended without terminating it ------------------------------------------------------


def build_ended(warm: WarmStack, name: str, status: str, state_machine: str | None = None) -> dict[str, Any]:
    """Step Functions' own event when an execution of the builder ends (its rule: FAILED, TIMED_OUT, ABORTED)."""
    machine = state_machine or warm.state_machine
    detail = {
        "executionArn": f"{machine.replace(':stateMachine:', ':execution:')}:{name}",
        "stateMachineArn": machine,
        "name": name,
        "status": status,
        "startDate": 1_793_000_000_000,
        "stopDate": 1_793_000_600_000,
        "input": "{}",
        "output": None,
    }
    return event_envelope(
        "aws.states", "Step Functions Execution Status Change", detail, resources=[detail["executionArn"]]
    )


@pytest.mark.parametrize("status", ["FAILED", "TIMED_OUT", "ABORTED"])
def test_a_build_that_ended_without_terminating_its_builder_has_it_terminated_at_once(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    """A runtime error no Catch catches (States.Runtime), a timeout, or a build stopped by hand ends the execution
    with its builder up; the sweep would wait 12 hours. Step Functions' event of that end terminates it at once."""
    left = warm.builder(build="runtime-error")
    other_build = warm.builder(build="building-now")
    another_stack = warm.builder(build="runtime-error", stack="another-stack")
    capsys.readouterr()

    outcome = run(build_ended(warm, "runtime-error", status))

    assert outcome["builders_terminated"] == [left]
    assert warm.state_of(left) == "terminated"
    assert {warm.state_of(i) for i in (other_build, another_stack)} == {"running"}
    assert metric(capsys.readouterr().out, "WarmBuildersLeftBehind") == [1]


def test_a_build_that_ended_with_its_builder_terminated_has_nothing_left(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    builder = warm.builder(build="failed-cleanly")
    warm.ec2.terminate_instances(InstanceIds=[builder])
    capsys.readouterr()

    outcome = run(build_ended(warm, "failed-cleanly", "FAILED"))

    assert outcome["result"] == "build-ended" and "builders_terminated" not in outcome
    assert metric(capsys.readouterr().out, "WarmBuildersLeftBehind") == [0]


def test_the_end_of_another_state_machines_execution_touches_nothing(warm: WarmStack, clock: Any) -> None:
    builder = warm.builder(build="same-name")
    other = warm.state_machine.replace("warm-volume-builder", "something-else")

    outcome = run(build_ended(warm, "same-name", "FAILED", state_machine=other))

    assert outcome["result"] == "ignored"
    assert warm.state_of(builder) == "running"
