"""The warm planner (WarmPlannerFunction): when a build starts, and with what input.

The handler runs against moto (ECR, SSM, EC2, DynamoDB, Step Functions) with the clock moved by time-machine. The
builder state machine is not executed here (its own tests are test_warm_builder.py): an execution stays RUNNING,
as a build in progress does, until ``WarmStack.finish`` ends it and publishes what the builder would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import time_machine

from eks_prefetch import settings as settings_module
from eks_prefetch.prefetch.commands import document_parameters
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import PlannerSettings, load
from eks_prefetch.warm import state as warm_state
from testing.deployment import FakeLambdaContext, create_status_table, load_handler
from testing.ecr import create_repository, push_image
from testing.environment import CLUSTER, REGISTRY
from testing.events import push_event
from testing.output import emitted
from testing.warm import AMI_PARAMETER, SNAPSHOT_PARAMETER, WarmStack

TRAINER = "ml/trainer"
INFERENCE = "ml/inference"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DEBOUNCE = timedelta(minutes=180)
TICK = {"trigger": "tick"}
DAILY = {"trigger": "daily"}


@pytest.fixture
def warm(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[WarmStack]:
    stack = WarmStack()
    for key, value in stack.environment().items():
        monkeypatch.setenv(key, value)
    settings_module.load.cache_clear()
    create_status_table()
    create_repository(TRAINER)
    create_repository(INFERENCE)
    yield stack
    settings_module.load.cache_clear()


@pytest.fixture
def clock() -> Iterator[Any]:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def run(event: dict[str, Any]) -> dict[str, Any]:
    return load_handler("warm_planner").lambda_handler(event, FakeLambdaContext())


def metric(printed: str, name: str) -> list[float]:
    """The values of a metric the handler printed, each checked to carry the cluster's dimension."""
    found = [(dict(dimensions), value) for metric_name, dimensions, value in emitted(printed) if metric_name == name]
    assert all(dimensions.get("ClusterName") == CLUSTER for dimensions, _value in found)
    return [value for _dimensions, value in found]


def push(repository: str, seed: str, tag: str, at: datetime) -> str:
    """Push an image and deliver its event to the planner, at ``at``."""
    digest = push_image(repository, seed, tag=tag, pushed_at=at)
    run(push_event(repository, digest, tag))
    return digest


def built(warm: WarmStack, clock: Any) -> str:
    """A first build, started by the tick and finished (published) by the builder; the time it started."""
    digests = {
        TRAINER: push_image(TRAINER, "trainer-v1", tag="v1", pushed_at=START - timedelta(hours=1)),
        INFERENCE: push_image(INFERENCE, "inference-v1", tag="v1", pushed_at=START - timedelta(hours=1)),
    }
    assert run(TICK)["result"] == "started"
    (execution,) = warm.executions("RUNNING")
    clock.shift(timedelta(minutes=20))
    warm.finish(execution)
    assert {(image["repository"], image["digest"]) for image in warm.published()["images"]} == set(digests.items())
    return execution["name"]


def _images(warm: WarmStack, execution: dict[str, Any]) -> dict[str, str]:
    return {image["repository"]: image["digest"] for image in warm.execution_input(execution)["images"]}


# --- the first build and the input ------------------------------------------------------------------------------------


def test_the_first_tick_builds_with_the_newest_images_and_document_parameters(warm: WarmStack, clock: Any) -> None:
    push_image(TRAINER, "trainer-v1", tag="v1", pushed_at=START - timedelta(hours=2))
    trainer = push_image(TRAINER, "trainer-v2", tag="v2", pushed_at=START - timedelta(hours=1))
    inference = push_image(INFERENCE, "inference-v1", tag="v1", pushed_at=START - timedelta(hours=1))

    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["reason"] == "first"
    (execution,) = warm.executions("RUNNING")
    execution_input = warm.execution_input(execution)
    # Each with the reference the pull is sent: the builder publishes an image only if the pull reports it held.
    assert execution_input["images"] == [
        {"repository": TRAINER, "digest": trainer, "reference": f"{REGISTRY}/{TRAINER}:v2@{trainer}"},
        {"repository": INFERENCE, "digest": inference, "reference": f"{REGISTRY}/{INFERENCE}:v1@{inference}"},
    ]
    # Exactly what every other path sends the document for these images.
    expected = document_parameters(NewestImages(load(PlannerSettings)).every_repository(), load(PlannerSettings))
    assert execution_input["documentParameters"] == expected
    assert expected["images"] == [f"{REGISTRY}/{TRAINER}:v2@{trainer},{REGISTRY}/{INFERENCE}:v1@{inference}"]
    assert expected["pin"] == ["true"] and expected["executionTimeout"] == ["3600"]


def test_a_tick_with_nothing_wanted_builds_nothing(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    clock.shift(DEBOUNCE * 2)

    outcome = run(TICK)

    assert outcome["result"] == "unchanged"
    assert warm.executions("RUNNING") == []
    assert len(warm.executions()) == 1


def test_no_images_at_all_builds_nothing(warm: WarmStack, clock: Any) -> None:
    outcome = run(TICK)

    assert outcome["result"] == "unchanged" and outcome["details"] == {"noImages": True}
    assert warm.executions() == []


# --- pushes, debounced ----------------------------------------------------------------------------------------------


def test_a_push_builds_only_after_the_debounce_window_and_once(warm: WarmStack, clock: Any) -> None:
    first = built(warm, clock)  # started at START
    clock.shift(timedelta(minutes=10))
    digest = push(TRAINER, "trainer-v2", "v2", START + timedelta(minutes=30))
    assert warm_state.read_state(load(PlannerSettings)).wanted

    for minutes in (45, 90, 179):
        clock.move_to(START + timedelta(minutes=minutes))
        assert run(TICK)["result"] == "waiting", minutes
    assert warm.executions("RUNNING") == []

    clock.move_to(START + DEBOUNCE)
    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["reason"] == "push"
    (execution,) = warm.executions("RUNNING")
    assert execution["name"] != first
    assert _images(warm, execution)[TRAINER] == digest
    # Later ticks: first the build runs, then it is published and nothing is wanted any more.
    clock.shift(timedelta(minutes=15))
    assert run(TICK)["result"] == "running"
    warm.finish(execution)
    clock.shift(timedelta(minutes=15))
    assert run(TICK)["result"] == "unchanged"
    clock.shift(DEBOUNCE)
    assert run(TICK)["result"] == "unchanged"
    assert len(warm.executions()) == 2


def test_ten_pushes_in_a_window_start_one_build_with_the_newest_of_each(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    newest: dict[str, str] = {}
    for number in range(10):
        repository = (TRAINER, INFERENCE)[number % 2]
        clock.move_to(START + timedelta(minutes=30 + number * 10))
        newest[repository] = push(
            repository, f"{repository}-{number}", f"build-{number}", START + timedelta(minutes=30 + number * 10)
        )
        assert run(TICK)["result"] in {"waiting", "unchanged"}

    clock.move_to(START + DEBOUNCE)
    assert run(TICK)["result"] == "started"
    clock.shift(timedelta(minutes=15))
    run(TICK)

    assert len(warm.executions()) == 2
    (execution,) = warm.executions("RUNNING")
    assert _images(warm, execution) == newest


def test_a_push_of_what_the_snapshot_holds_builds_nothing_and_is_no_longer_wanted(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    held = warm.published()["images"][0]
    # The same image pushed again (a re-tag): ECR sends the event, nothing new is in the repository.
    run(push_event(held["repository"], held["digest"], "latest"))
    assert warm_state.read_state(load(PlannerSettings)).wanted

    clock.move_to(START + DEBOUNCE)
    outcome = run(TICK)

    assert outcome["result"] == "unchanged" and outcome["reason"] == "push"
    assert not warm_state.read_state(load(PlannerSettings)).wanted
    assert len(warm.executions()) == 1


def test_after_a_stack_update_of_the_launch_template_the_next_tick_rebuilds_the_same_images(
    warm: WarmStack, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CloudFormation wrote a new version of WarmLaunchTemplate (a new warm boot part) and left the default on the
    last build's: until a build bases a version on it, nodes launched from $Default run the old part and those from
    $Latest boot cold. The images have not changed, yet the next tick builds."""
    built(warm, clock)
    clock.shift(DEBOUNCE)
    assert run(TICK)["result"] == "unchanged"
    monkeypatch.setenv("WARM_LAUNCH_TEMPLATE_VERSION", "3")  # the stack update's new environment
    load.cache_clear()

    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["reason"] == "template"
    (execution,) = warm.executions("RUNNING")
    assert _images(warm, execution) == {i["repository"]: i["digest"] for i in warm.published()["images"]}
    warm.finish(execution)
    warm.publish(warm.published()["snapshotId"], warm.amd64_ami, warm.published()["images"], stack_template_version="3")
    clock.shift(DEBOUNCE)
    assert run(TICK)["result"] == "unchanged"


def test_a_push_of_another_repository_is_not_noted(warm: WarmStack, clock: Any) -> None:
    create_repository("other/app")
    digest = push_image("other/app", "other-v1", tag="v1", pushed_at=START)

    outcome = run(push_event("other/app", digest, "v1"))

    assert outcome == {"result": "ignored", "reason": "repository not watched"}
    assert not warm_state.read_state(load(PlannerSettings)).wanted


def test_a_malformed_event_is_dropped_and_counted(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run({"trigger": "hourly"})

    assert outcome == {"result": "ignored", "reason": "malformed event"}
    assert metric(capsys.readouterr().out, "EventsIgnored") == [1]
    assert warm.executions() == []


# --- the published snapshot, measured on the tick -------------------------------------------------------------------


def test_the_tick_measures_the_published_snapshots_age_and_images_even_during_a_build(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    built(warm, clock)  # published 20 minutes after START
    clock.move_to(START + timedelta(hours=2))
    run(TICK)
    quiet = capsys.readouterr().out
    clock.move_to(START + DEBOUNCE)
    push(TRAINER, "trainer-v2", "v2", START + DEBOUNCE)
    assert run(TICK)["result"] == "started"
    capsys.readouterr()
    clock.shift(timedelta(minutes=15))

    outcome = run(TICK)

    during = capsys.readouterr().out
    assert outcome["result"] == "running"
    assert metric(quiet, "WarmSnapshotAgeSeconds") == [100 * 60.0]
    assert metric(quiet, "WarmSnapshotImages") == [2]
    # The build in progress has published nothing yet: the snapshot nodes get is still the first one.
    assert metric(during, "WarmSnapshotAgeSeconds") == [(180 + 15 - 20) * 60.0]
    assert metric(during, "WarmSnapshotImages") == [2]


def test_no_snapshot_yet_measures_nothing_and_the_daily_check_never_does(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run(TICK)  # no image anywhere: nothing built, nothing published
    before = capsys.readouterr().out
    built(warm, clock)
    capsys.readouterr()
    run(DAILY)

    daily = capsys.readouterr().out
    assert metric(before, "WarmSnapshotAgeSeconds") == [] and metric(before, "WarmSnapshotImages") == []
    assert metric(before, "WarmBuildsStarted") == [0]
    assert metric(daily, "WarmSnapshotAgeSeconds") == []


def test_a_published_value_without_a_build_time_measures_nothing(
    warm: WarmStack, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parameter written by hand, or by an older builder: no age rather than a wrong one."""
    snapshot = warm.snapshot()
    value = {"snapshotId": snapshot, "amiId": warm.amd64_ami, "images": [], "builtAt": "yesterday"}
    boto3.client("ssm").put_parameter(Name=SNAPSHOT_PARAMETER, Value=json.dumps(value), Type="String", Overwrite=True)

    run(TICK)

    assert metric(capsys.readouterr().out, "WarmSnapshotAgeSeconds") == []


# --- the AMI ----------------------------------------------------------------------------------------------------------


def test_a_new_ami_builds_at_the_next_tick_whatever_the_debounce(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    clock.shift(timedelta(minutes=30))
    boto3.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=warm.arm64_ami, Type="String", Overwrite=True)

    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["reason"] == "ami"
    (execution,) = warm.executions("RUNNING")
    assert len(_images(warm, execution)) == 2


def test_a_failed_build_for_a_new_ami_is_retried_after_the_window_not_every_tick(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    boto3.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=warm.arm64_ami, Type="String", Overwrite=True)
    clock.move_to(START + timedelta(hours=1))
    assert run(TICK)["reason"] == "ami"
    (failed,) = warm.executions("RUNNING")
    warm.finish(failed, publish=False)

    clock.shift(timedelta(minutes=15))
    assert run(TICK)["result"] == "unchanged"
    clock.move_to(START + timedelta(hours=1) + DEBOUNCE)
    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["reason"] == "ami"
    assert len(warm.executions()) == 3


def test_an_image_without_a_manifest_for_the_amis_architecture_is_left_out(warm: WarmStack, clock: Any) -> None:
    boto3.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=warm.arm64_ami, Type="String", Overwrite=True)
    amd64_only = _push_index(TRAINER, "v1", ["amd64"])
    both = _push_index(INFERENCE, "v1", ["amd64", "arm64"])

    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["skipped"] == [TRAINER]
    (execution,) = warm.executions("RUNNING")
    assert _images(warm, execution) == {INFERENCE: both}
    assert amd64_only not in json.dumps(warm.execution_input(execution))


def _push_index(repository: str, tag: str, architectures: list[str]) -> str:
    """An OCI index with a manifest per architecture (the digests of the children are made up: only read here)."""
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + f"{repository}{architecture}".encode().hex().ljust(64, "0")[:64],
                "size": 1000,
                "platform": {"os": "linux", "architecture": architecture},
            }
            for architecture in architectures
        ],
    }
    body = json.dumps(index)
    # Given as ECR computes it (the manifest's sha256): moto makes up an index's digest from one of 101 values, and
    # two indexes of a test then share one a time in a hundred.
    digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    image = boto3.client("ecr").put_image(
        repositoryName=repository, imageManifest=body, imageTag=tag, imageDigest=digest
    )
    assert image["image"]["imageId"]["imageDigest"] == digest
    return digest


# --- never two builds -----------------------------------------------------------------------------------------------


def test_no_build_starts_while_one_runs(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    boto3.client("stepfunctions").start_execution(stateMachineArn=warm.state_machine, name="by-hand", input="{}")
    boto3.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=warm.arm64_ami, Type="String", Overwrite=True)
    clock.move_to(START + DEBOUNCE)
    push(TRAINER, "trainer-v2", "v2", START + DEBOUNCE)

    for trigger in (TICK, DAILY):
        assert run(trigger) == {"trigger": trigger["trigger"], "result": "running", "execution": "by-hand"}

    assert [execution["name"] for execution in warm.executions("RUNNING")] == ["by-hand"]
    assert warm_state.read_state(load(PlannerSettings)).wanted


def test_two_planners_at_once_claim_one_build(warm: WarmStack, clock: Any) -> None:
    settings = load(PlannerSettings)
    seen = warm_state.read_state(settings)
    now = datetime.now(UTC)

    first = warm_state.claim_build(settings, seen, at=now, resolved_at=now, execution="tick-1", ami="ami-1")
    second = warm_state.claim_build(settings, seen, at=now, resolved_at=now, execution="daily-1", ami="ami-1")

    assert (first, second) == (True, False)
    assert warm_state.read_state(settings).last_execution == "tick-1"


# --- the daily check ------------------------------------------------------------------------------------------------


def test_the_daily_check_builds_a_change_whose_push_event_was_lost(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    clock.shift(timedelta(minutes=30))
    digest = push_image(TRAINER, "trainer-v2", tag="v2", pushed_at=datetime.now(UTC))  # no event reached the planner
    assert run(TICK)["result"] == "unchanged"

    outcome = run(DAILY)

    assert outcome["result"] == "started" and outcome["reason"] == "daily"
    (execution,) = warm.executions("RUNNING")
    assert _images(warm, execution)[TRAINER] == digest


def test_the_daily_check_with_nothing_new_builds_nothing(warm: WarmStack, clock: Any) -> None:
    built(warm, clock)
    clock.shift(timedelta(days=1))

    assert run(DAILY)["result"] == "unchanged"
    assert len(warm.executions()) == 1


def test_a_start_that_fails_releases_the_claim(warm: WarmStack, clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    push_image(TRAINER, "trainer-v1", tag="v1", pushed_at=START)

    def refused(*_args: Any, **_kwargs: Any) -> str:
        raise RuntimeError("StartExecution failed")

    # Double for a StartExecution that fails after the retries (moto's does not).
    monkeypatch.setattr("eks_prefetch.aws.sfn.start_execution", refused)
    with pytest.raises(RuntimeError):
        run(TICK)
    monkeypatch.undo()

    assert warm_state.read_state(load(PlannerSettings)).last_started_at is None
    assert run(TICK)["result"] == "started"


def test_an_unreadable_snapshot_parameter_counts_as_no_snapshot(warm: WarmStack, clock: Any) -> None:
    push_image(TRAINER, "trainer-v1", tag="v1", pushed_at=START)
    boto3.client("ssm").put_parameter(Name=SNAPSHOT_PARAMETER, Value="not json", Type="String", Overwrite=True)

    outcome = run(TICK)

    assert outcome["result"] == "started" and outcome["reason"] == "first"
