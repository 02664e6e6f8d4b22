"""The warm planner's tick cleans up: snapshot retention (WarmSnapshotsToKeep) and builders left behind.

moto has no fast snapshot restore: ``FastSnapshotRestores`` (testing/warm.py) answers Describe- and
DisableFastSnapshotRestores; nor DeleteLaunchTemplateVersions: ``WarmStack.delete_launch_template_version`` empties
the version in moto's backend. The rest is moto's EC2, SSM and Step Functions, with the clock moved by time-machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from eks_prefetch import settings as settings_module
from eks_prefetch.warm.cleanup import builders_left_behind, retention
from eks_prefetch.warm.planner import WarmPlanError
from testing.deployment import FakeLambdaContext, create_status_table, load_handler
from testing.ec2 import set_launch_time
from testing.environment import CLUSTER
from testing.output import emitted
from testing.warm import AMI_PARAMETER, BUILD_TAG, FastSnapshotRestores, WarmStack

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
TICK = {"trigger": "tick"}


@pytest.fixture
def warm(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[WarmStack]:
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
    oldest_version = warm.use_in_launch_template(oldest)  # a node group may still launch this version
    warm.use_in_launch_template(fourth)
    warm.use_in_launch_template(newest)
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

    # Once no version names it any more, the oldest goes too.
    warm.delete_launch_template_version(oldest_version)
    clock.shift(timedelta(minutes=15))
    assert run(TICK)["snapshots_deleted"] == [oldest]
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
