"""The status function against moto: SSM commands, ECR images, EC2 instances and the DynamoDB status table.

Test doubles (see testing/ssm.py), and why:
- ``FakeInvocations``: moto answers every invocation ``Success`` with no output, and has no ListCommandInvocations;
  the double patches moto's SSM backend to answer the Status/StatusDetails/stdout a test chooses, and lists them.
- ``Agents``: moto has no DescribeInstanceInformation; the double says which nodes' agents are Online.
Metrics are read from the EMF JSON the function prints (capsys), state from the DynamoDB table.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.ec2.models import ec2_backends

from eks_prefetch import aws, settings
from eks_prefetch.images import ResolvedImage
from eks_prefetch.prefetch import commands, resolution, sending
from eks_prefetch.status import claims, coverage, invocations, reports
from eks_prefetch.status import table as status_table
from testing.deployment import load_handler
from testing.ecr import at, create_repository, push_image
from testing.environment import ACCOUNT, CLUSTER, DOCUMENT, REGION, REGISTRY, STATUS_TABLE
from testing.events import running_event, scheduled_event, status_event
from testing.output import emitted, image_line, summary_line, total, values
from testing.sqs import LaunchQueue
from testing.ssm import Answer
from tests.integration.conftest import INFERENCE, TRAINER

C = {"ClusterName": CLUSTER}


@pytest.fixture
def env(status_env, monkeypatch):
    # These tests are about counting; self-repair, which sends commands after each sweep, has its own tests.
    monkeypatch.setenv("REPAIR_ENABLED", "false")
    settings.load.cache_clear()


@pytest.fixture(autouse=True)
def _without_repair(env):
    """Every test here runs without self-repair, whichever fixtures it asks for."""


@pytest.fixture
def handler():
    return load_handler("status")


def run_node(launched: datetime | None = None) -> str:
    instance_id = boto3.client("ec2").run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType="m7g.large",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "eks:cluster-name", "Value": CLUSTER}]}],
    )["Instances"][0]["InstanceId"]
    if launched is not None:
        ec2_backends[ACCOUNT][REGION].get_instance(instance_id).launch_time = launched.astimezone(UTC).replace(
            tzinfo=None
        )
    return instance_id


def ref(repository: str, digest: str) -> str:
    return f"{REGISTRY}/{repository}@{digest}"


def send(instance_ids: list[str], references: list[str], document: str = DOCUMENT, comment: str = "") -> str:
    extra = {"Comment": comment} if comment else {}
    return boto3.client("ssm").send_command(
        DocumentName=document, InstanceIds=instance_ids, Parameters={"images": [",".join(references)]}, **extra
    )["Command"]["CommandId"]


def launch_time(node: str) -> datetime:
    return ec2_backends[ACCOUNT][REGION].get_instance(node).launch_time.replace(tzinfo=UTC)


def comment_of(node: str, *, new_node: bool, with_launch_time: bool = True) -> str:
    """The Comment of a command to ``node`` as the functions build it: the new-node path's (``new_node``: with the
    instance's launch time, or as commands sent before it carried one), or a push's or a repair's, marked with an
    event key as ``send_once`` marks every command."""
    image = ResolvedImage(REGISTRY, TRAINER, "sha256:" + "0" * 64, "v2", at(0))
    request = commands.send_command_request(
        [image],
        settings.load(settings.StatusSettings),
        instance_ids=[node],
        new_node=new_node,
        launched=launch_time(node) if new_node and with_launch_time else None,
    )
    return commands.with_comment_marker(request, sending.event_marker({"instance": node}))["Comment"]


def send_to_new_node(node: str, references: list[str], *, with_launch_time: bool = True) -> str:
    """A command as the new-node path sends it to a node that just launched."""
    return send([node], references, comment=comment_of(node, new_node=True, with_launch_time=with_launch_time))


def good_output(records: list[tuple[str, str, str | None]], **extra_summary: Any) -> str:
    lines = [image_line(reference, state, digest, seconds=42.5) for reference, state, digest in records]
    counts = {
        state: sum(1 for _r, s, _d in records if s == state) for state in ("pulled", "cached", "skipped", "failed")
    }
    return "\n".join([*lines, summary_line(**counts, **extra_summary)])


def newest_trainer_pulled(fake, images: dict[str, str], ended: datetime | None = None) -> tuple[str, str, str]:
    """A node that was sent the newest trainer image and pulled it: (node, digest, command id)."""
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    output = good_output([(ref(TRAINER, digest), "pulled", digest)])
    fake.set(command_id, node, Answer("Success", "Success", output, ended))
    return node, digest, command_id


def row(instance_id: str, repository: str) -> dict[str, Any] | None:
    return aws.dynamodb.get_item(STATUS_TABLE, status_table.node_key(instance_id, repository))


def claim(command_id: str, instance_id: str) -> dict[str, Any] | None:
    return aws.dynamodb.get_item(STATUS_TABLE, status_table.claim_key(command_id, instance_id))


def invoke(handler, lambda_context, event: dict[str, Any]) -> dict[str, Any]:
    return handler.lambda_handler(event, lambda_context)


# --- every SSM outcome, each under its own status or reason ---------------------------------------------------------

ENDED = at(5)  # five minutes after the trainer push


def _outputs(digest: str) -> dict[str, str]:
    reference = ref(TRAINER, digest)
    return {
        "good": good_output([(reference, "pulled", digest)]),
        "failed image": good_output([(reference, "failed", None)]).replace(
            '"status": "failed"', '"status": "failed", "error": "403 Forbidden"'
        ),
        "killed": image_line(reference, "pulled", digest),  # no summary: killed at the execution timeout
        "run error": summary_line(error="ctr not found on PATH"),
        "empty": "",
        "text": "bash: ctr: command not found",
        "truncated": _truncated(reference, digest),
    }


def _truncated(reference: str, digest: str) -> str:
    """SSM keeps the first 24,000 characters: whole records, then one cut mid-line, and no summary."""
    other = "sha256:" + "cd" * 32
    full = good_output([(ref(INFERENCE, other), "cached", other), (reference, "pulled", digest)])
    second = full.index("\n") + 1
    return full[: second + 30]


@pytest.mark.parametrize(
    ("ssm_status", "details", "output", "counted_as", "problem"),
    [
        ("Success", "Success", "good", "Success", None),
        ("Failed", "Failed", "failed image", "Failed", None),
        ("Failed", "Failed", "run error", "Failed", None),
        ("Cancelled", "Cancelled", "empty", "Cancelled", None),
        ("Cancelled", "Cancelled", "killed", "Cancelled", "NoSummary"),
        ("TimedOut", "ExecutionTimedOut", "killed", "ExecutionTimedOut", "NoSummary"),
        ("TimedOut", "DeliveryTimedOut", "empty", "DeliveryTimedOut", None),
        ("TimedOut", "TimedOut", "empty", "TimedOut", None),
        ("Failed", "Undeliverable", "empty", "Undeliverable", None),
        ("Failed", "Terminated", "empty", "Terminated", None),
        ("Failed", "InvalidPlatform", "empty", "InvalidPlatform", None),
        ("Failed", "AccessDenied", "empty", "AccessDenied", None),
        ("Success", "Success", "empty", "Success", "EmptyOutput"),
        ("Success", "Success", "text", "Success", "NotJson"),
        ("Failed", "Failed", "truncated", "Failed", "NoSummary"),
        ("Success", "Success", "truncated", "Success", "NoSummary"),
    ],
)
def test_every_outcome_is_counted_under_its_own_status_and_reason(
    fake, fleet, images, handler, lambda_context, capsys, ssm_status, details, output, counted_as, problem
):
    # ``fleet`` (Agents): a Linux node, so that no output with Success is bad output, not a step SSM skipped.
    node = run_node()
    fleet.online.add(node)
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    fake.set(command_id, node, Answer(ssm_status, details, _outputs(digest)[output], ended=ENDED))
    capsys.readouterr()

    result = invoke(handler, lambda_context, status_event(command_id, node, ssm_status, DOCUMENT))

    printed = capsys.readouterr().out
    assert result["result"] == "counted"
    assert result["status"] == counted_as
    assert total(printed, "Invocations", **C, Status=counted_as) == 1
    assert total(printed, "Invocations", **C) == 1
    clean = counted_as == "Success" and problem is None
    assert total(printed, "InvocationsFailed", **C) == (0 if clean else 1)
    bad = [(dims, value) for name, dims, value in emitted(printed) if name == "BadOutput"]
    assert bad == ([] if problem is None else [(frozenset({**C, "Reason": problem}.items()), 1)])
    assert claim(command_id, node)["status"] == counted_as
    state = row(node, TRAINER)
    if output in {"good", "killed"}:
        # The node reported the pull before whatever went wrong: it holds the image, and that is no failure.
        assert state["digest"] == digest
    elif not clean:
        assert state["last_error"], state
        assert state["last_error_at"] == status_table.timestamp(ENDED)
        assert state["last_error_digest"] == digest or output == "failed image"


def test_failure_reasons_are_recorded_on_the_node_row(fake, images, handler, lambda_context):
    node = run_node()
    trainer, inference = images[TRAINER], images[INFERENCE]
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference)])
    stdout = "\n".join(
        [
            image_line(ref(TRAINER, trainer), "failed", error="ECR login failed: AccessDenied"),
            image_line(ref(INFERENCE, inference), "skipped", reason="disk: 91% used after this pull > 80"),
            summary_line(failed=1, skipped=1),
        ]
    )
    fake.set(command_id, node, Answer("Failed", "Failed", stdout, ended=ENDED))

    invoke(handler, lambda_context, status_event(command_id, node, "Failed", DOCUMENT))

    assert row(node, TRAINER)["last_error"] == "ECR login failed: AccessDenied"
    assert row(node, TRAINER)["last_error_kind"] == "failed"
    assert row(node, TRAINER)["last_error_digest"] == trainer
    assert row(node, INFERENCE)["last_error"].startswith("disk: 91%")
    assert row(node, INFERENCE)["last_error_kind"] == "skipped"
    assert "digest" not in row(node, TRAINER)


def test_undelivered_command_names_its_status_on_every_requested_repository(fake, images, handler, lambda_context):
    node = run_node()
    command_id = send([node], [ref(TRAINER, images[TRAINER]), ref(INFERENCE, images[INFERENCE])])
    fake.set(command_id, node, Answer("Failed", "Undeliverable", "", ended=ENDED))

    invoke(handler, lambda_context, status_event(command_id, node, "Failed", DOCUMENT))

    for repository in (TRAINER, INFERENCE):
        assert row(node, repository)["last_error"] == "SSM Undeliverable: the script did not run"
        assert row(node, repository)["last_error_kind"] == "Undeliverable"


# --- images, latencies ----------------------------------------------------------------------------------------------


def test_images_by_status_pull_seconds_and_push_to_cached(fake, images, handler, lambda_context, capsys):
    node = run_node()
    trainer, inference = images[TRAINER], images[INFERENCE]
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference)])
    fake.set(
        command_id,
        node,
        Answer(
            "Success",
            "Success",
            good_output([(ref(TRAINER, trainer), "pulled", trainer), (ref(INFERENCE, inference), "cached", inference)]),
            ended=ENDED,
        ),
    )
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    assert total(printed, "ImagesCached", **C, Repository=INFERENCE) == 1
    assert values(printed, "PullSeconds", **C, Repository=TRAINER) == [42.5]
    assert values(printed, "PullSeconds", **C, Repository=INFERENCE) == []
    # Pushed at 12:00 and 12:10, reported at 12:05: inference's report time is before its push (clamped at 0).
    assert values(printed, "PushToCachedSeconds", **C, Repository=TRAINER) == [300.0]
    assert values(printed, "PushToCachedSeconds", **C, Repository=INFERENCE) == [0.0]


def test_push_to_cached_only_for_the_newest_digest_and_only_when_it_is_new_on_the_node(
    fake, images, handler, lambda_context, capsys
):
    node = run_node()
    old = push_image(TRAINER, "trainer-v0", tag="v0", pushed_at=at(-120))
    first = send([node], [ref(TRAINER, old)])
    fake.set(first, node, Answer("Success", "Success", good_output([(ref(TRAINER, old), "pulled", old)]), ENDED))
    second = send([node], [ref(TRAINER, images[TRAINER])])
    newest = images[TRAINER]
    fake.set(second, node, Answer("Success", "Success", good_output([(ref(TRAINER, newest), "pulled", newest)]), ENDED))
    third = send([node], [ref(TRAINER, newest)])
    fake.set(third, node, Answer("Success", "Success", good_output([(ref(TRAINER, newest), "cached", newest)]), at(9)))
    capsys.readouterr()

    for command_id in (first, second, third):
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    assert values(printed, "PushToCachedSeconds", **C, Repository=TRAINER) == [300.0]
    assert row(node, TRAINER)["digest"] == newest
    assert row(node, TRAINER)["cached_at"] == status_table.timestamp(at(9))


def test_an_older_report_never_overwrites_a_newer_one(fake, images, handler, lambda_context):
    node = run_node()
    old = push_image(TRAINER, "trainer-v0", tag="v0", pushed_at=at(-120))
    newest = images[TRAINER]
    late = send([node], [ref(TRAINER, old)])
    fake.set(late, node, Answer("Success", "Success", good_output([(ref(TRAINER, old), "cached", old)]), at(1)))
    recent = send([node], [ref(TRAINER, newest)])
    fake.set(recent, node, Answer("Success", "Success", good_output([(ref(TRAINER, newest), "pulled", newest)]), at(7)))

    invoke(handler, lambda_context, status_event(recent, node, "Success", DOCUMENT))
    invoke(handler, lambda_context, status_event(late, node, "Success", DOCUMENT))

    assert row(node, TRAINER)["digest"] == newest


def test_launch_to_cached_once_per_launch_from_the_new_node_path(fake, images, handler, lambda_context, capsys):
    launched = ENDED - timedelta(seconds=95)
    node = run_node(launched=launched)
    digest = images[TRAINER]
    first = send_to_new_node(node, [ref(TRAINER, digest)])
    push = send([node], [ref(TRAINER, digest)], comment=comment_of(node, new_node=False))
    fake.set(first, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ENDED))
    later = ENDED + timedelta(minutes=3)
    fake.set(push, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "cached", digest)]), later))
    capsys.readouterr()

    for command_id in (first, push, first):
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT, event_id=command_id))

    assert values(capsys.readouterr().out, "LaunchToCachedSeconds", **C) == [95.0]


def test_a_node_served_first_by_a_push_measures_no_launch_to_cached(fake, images, handler, lambda_context, capsys):
    """Launched before anything was pushed, the node's first images came with a push: its wait for that push is no
    new-node latency, and the new-node command's report that follows is not the launch's first."""
    node = run_node(launched=ENDED - timedelta(hours=2))
    digest = images[TRAINER]
    push = send([node], [ref(TRAINER, digest)], comment=comment_of(node, new_node=False))
    launch = send_to_new_node(node, [ref(TRAINER, digest)])
    fake.set(push, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ENDED))
    later = ENDED + timedelta(seconds=30)
    fake.set(launch, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "cached", digest)]), later))
    capsys.readouterr()

    results = [
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))["result"]
        for command_id in (push, launch)
    ]

    printed = capsys.readouterr().out
    assert results == ["counted", "counted"]
    assert total(printed, "Invocations", **C) == 2
    assert values(printed, "LaunchToCachedSeconds", **C) == []
    node_row = aws.dynamodb.get_item(STATUS_TABLE, status_table.node_row_key(node))
    assert node_row["last_report_at"] == status_table.timestamp(ENDED)  # the push's report, noted
    assert "first_report_command" not in node_row


def test_a_report_from_before_a_restart_does_not_take_the_new_launchs_measure(
    fake, images, handler, lambda_context, capsys
):
    """A push's report of the node's previous launch, recorded late (a lost event the sweep counts), is no report of
    the launch after a stop/start: the new-node command's report is still that launch's first."""
    node = run_node(launched=ENDED - timedelta(seconds=60))
    digest = images[TRAINER]
    before = send([node], [ref(TRAINER, digest)], comment=comment_of(node, new_node=False))
    launch = send_to_new_node(node, [ref(TRAINER, digest)])
    output = good_output([(ref(TRAINER, digest), "cached", digest)])
    fake.set(before, node, Answer("Success", "Success", output, ENDED - timedelta(minutes=10)))
    fake.set(launch, node, Answer("Success", "Success", output, ENDED))
    capsys.readouterr()

    for command_id in (before, launch):
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert values(capsys.readouterr().out, "LaunchToCachedSeconds", **C) == [60.0]


def test_a_new_node_command_sent_before_its_comment_carried_the_launch_time_is_measured_from_ec2(
    fake, images, handler, lambda_context, capsys
):
    """Commands in flight across an upgrade: "new node: ..." without the launch time; EC2 gives it."""
    node = run_node(launched=ENDED - timedelta(seconds=45))
    digest = images[TRAINER]
    launch = send_to_new_node(node, [ref(TRAINER, digest)], with_launch_time=False)
    fake.set(launch, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ENDED))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(launch, node, "Success", DOCUMENT))

    assert values(capsys.readouterr().out, "LaunchToCachedSeconds", **C) == [45.0]


def test_a_repair_or_an_untagged_command_measures_no_launch_to_cached(fake, images, handler, lambda_context, capsys):
    """A repair's command is built like a push's (no new-node mark), and a command whose Comment is empty (sent by
    hand with the document) is no new-node command either: neither measures, on nodes whose first report it is."""
    digest = images[TRAINER]
    repaired, by_hand = (
        run_node(launched=ENDED - timedelta(minutes=20)),
        run_node(launched=ENDED - timedelta(minutes=9)),
    )
    repair = send([repaired], [ref(TRAINER, digest)], comment=comment_of(repaired, new_node=False))
    manual = send([by_hand], [ref(TRAINER, digest)])
    output = good_output([(ref(TRAINER, digest), "pulled", digest)])
    fake.set(repair, repaired, Answer("Success", "Success", output, ENDED))
    fake.set(manual, by_hand, Answer("Success", "Success", output, ENDED))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(repair, repaired, "Success", DOCUMENT))
    invoke(handler, lambda_context, status_event(manual, by_hand, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    assert total(printed, "Invocations", **C) == 2
    assert values(printed, "LaunchToCachedSeconds", **C) == []


def test_the_new_node_functions_command_measures_launch_to_cached(fake, fleet, images, handler, lambda_context, capsys):
    """End to end: the node-launch function sends the command (its Comment as SSM keeps it, event marker and all),
    and the node's report of it is measured from the launch."""
    node = run_node(launched=ENDED - timedelta(seconds=70))
    fleet.online = {node}
    queue = LaunchQueue(load_handler("node_launch").lambda_handler, lambda_context, max_receives=3)
    queue.publish(running_event(node))
    queue.deliver()
    (command,) = boto3.client("ssm").list_commands()["Commands"]
    assert commands.is_new_node_comment(command["Comment"])
    digest = images[TRAINER]
    fake.set(
        command["CommandId"],
        node,
        Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ENDED),
    )
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command["CommandId"], node, "Success", DOCUMENT))

    assert values(capsys.readouterr().out, "LaunchToCachedSeconds", **C) == [70.0]


# --- nodes that booted warm (issue 19): the new node's first report, the one LaunchToCachedSeconds measures ---------


def _first_report(fake, handler, lambda_context, capsys, records: list[tuple[str, str, str | None]]) -> str:
    """A node launched 80 s before ENDED whose first report answers the new-node command with ``records``; what the
    status function printed."""
    node = run_node(launched=ENDED - timedelta(seconds=80))
    command_id = send_to_new_node(node, [reference for reference, _state, _digest in records])
    fake.set(command_id, node, Answer("Success", "Success", good_output(records), ENDED))
    capsys.readouterr()
    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))
    return capsys.readouterr().out


def test_a_new_node_that_found_every_image_cached_booted_warm(fake, images, handler, lambda_context, capsys):
    trainer, inference = images[TRAINER], images[INFERENCE]

    printed = _first_report(
        fake,
        handler,
        lambda_context,
        capsys,
        [(ref(TRAINER, trainer), "cached", trainer), (ref(INFERENCE, inference), "cached", inference)],
    )

    assert values(printed, "NodesBootedWarm", **C) == [1.0]
    assert values(printed, "NodesBootedCold", **C) == [0.0]
    assert values(printed, "LaunchToCachedSeconds", **C) == [80.0]


@pytest.mark.parametrize(
    "inference_state",
    [
        pytest.param(("pulled", True), id="one-image-pulled"),
        pytest.param(("failed", False), id="one-image-failed"),
    ],
)
def test_a_new_node_that_pulled_or_failed_an_image_booted_cold(
    fake, images, handler, lambda_context, capsys, inference_state
):
    trainer, inference = images[TRAINER], images[INFERENCE]
    state, with_digest = inference_state
    records = [
        (ref(TRAINER, trainer), "cached", trainer),
        (ref(INFERENCE, inference), state, inference if with_digest else None),
    ]

    printed = _first_report(fake, handler, lambda_context, capsys, records)

    assert values(printed, "NodesBootedWarm", **C) == [0.0]
    assert values(printed, "NodesBootedCold", **C) == [1.0]


def test_only_the_launchs_first_new_node_report_says_how_it_booted(fake, images, handler, lambda_context, capsys):
    """A later report of the same node (a push's, all cached) and a node first served by a push count neither."""
    digest = images[TRAINER]
    node = run_node(launched=ENDED - timedelta(seconds=80))
    first = send_to_new_node(node, [ref(TRAINER, digest)])
    later = send([node], [ref(TRAINER, digest)], comment=comment_of(node, new_node=False))
    fake.set(first, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ENDED))
    cached = good_output([(ref(TRAINER, digest), "cached", digest)])
    fake.set(later, node, Answer("Success", "Success", cached, ENDED + timedelta(minutes=2)))
    old = run_node(launched=ENDED - timedelta(hours=2))
    pushed = send([old], [ref(TRAINER, digest)], comment=comment_of(old, new_node=False))
    launch = send_to_new_node(old, [ref(TRAINER, digest)])
    fake.set(pushed, old, Answer("Success", "Success", cached, ENDED))
    fake.set(launch, old, Answer("Success", "Success", cached, ENDED + timedelta(seconds=30)))
    capsys.readouterr()

    for command_id, instance_id in ((first, node), (later, node), (first, node), (pushed, old), (launch, old)):
        invoke(handler, lambda_context, status_event(command_id, instance_id, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    assert values(printed, "NodesBootedWarm", **C) == [0.0]
    assert values(printed, "NodesBootedCold", **C) == [1.0]


# --- exactly once ---------------------------------------------------------------------------------------------------


def test_a_duplicate_event_is_counted_once(fake, images, handler, lambda_context, capsys):
    node, _digest, command_id = newest_trainer_pulled(fake, images)
    event = status_event(command_id, node, "Success", DOCUMENT)
    capsys.readouterr()

    first = invoke(handler, lambda_context, event)
    second = invoke(handler, lambda_context, event)

    printed = capsys.readouterr().out
    assert (first["result"], second["result"]) == ("counted", "duplicate")
    assert total(printed, "Invocations", **C) == 1
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    # The duplicate stops at the claim: no second GetCommandInvocation.
    assert fake.gets == [(command_id, node)]


def test_the_sweep_recovers_an_invocation_whose_event_was_lost(fake, fleet, images, handler, lambda_context, capsys):
    node, _digest, command_id = newest_trainer_pulled(fake, images)
    capsys.readouterr()

    result = invoke(handler, lambda_context, scheduled_event())

    printed = capsys.readouterr().out
    assert (result["counted"], result["already_counted"]) == (1, 0)
    assert claim(command_id, node)["via"] == "sweep"
    assert total(printed, "Invocations", **C, Status="Success") == 1
    assert total(printed, "SweepRecoveredInvocations", **C) == 1

    again = invoke(handler, lambda_context, scheduled_event())
    assert (again["counted"], again["already_counted"]) == (0, 1)
    assert total(capsys.readouterr().out, "Invocations", **C) == 0


@pytest.mark.parametrize("first", ["event", "sweep"])
def test_sweep_and_late_event_count_once_in_either_order(fake, fleet, images, handler, lambda_context, capsys, first):
    node, _digest, command_id = newest_trainer_pulled(fake, images)
    capsys.readouterr()
    event = status_event(command_id, node, "Success", DOCUMENT)

    steps = [event, scheduled_event()] if first == "event" else [scheduled_event(), event]
    for step in steps:
        invoke(handler, lambda_context, step)

    printed = capsys.readouterr().out
    assert total(printed, "Invocations", **C) == 1
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    assert claim(command_id, node)["via"] == first


def test_unfinished_invocation_is_not_counted_and_holds_the_watermark(
    fake, fleet, images, handler, lambda_context, capsys
):
    nodes = [run_node(), run_node()]
    digest = images[TRAINER]
    command_id = send(nodes, [ref(TRAINER, digest)])
    output = good_output([(ref(TRAINER, digest), "pulled", digest)])
    fake.set(command_id, nodes[0], Answer("Success", "Success", output))
    fake.set(command_id, nodes[1], Answer("InProgress", "InProgress", ""))

    # An event that claims a final status while SSM still says InProgress: not counted.
    early = invoke(handler, lambda_context, status_event(command_id, nodes[1], "Success", DOCUMENT))
    assert early["result"] == "pending"
    swept = invoke(handler, lambda_context, scheduled_event())
    assert swept["counted"] == 1
    assert swept["next_watermark"] <= status_table.timestamp(
        boto3.client("ssm").list_commands(CommandId=command_id)["Commands"][0]["RequestedDateTime"]
    )

    fake.set(command_id, nodes[1], Answer("Failed", "ExecutionTimedOut", output.splitlines()[0]))
    capsys.readouterr()
    later = invoke(handler, lambda_context, scheduled_event())

    assert (later["counted"], later["already_counted"]) == (1, 1)
    assert total(capsys.readouterr().out, "Invocations", **C, Status="ExecutionTimedOut") == 1


def test_sweep_leaves_an_invocation_it_could_not_record_for_the_next_sweep(
    fake, fleet, images, handler, lambda_context, monkeypatch
):
    newest_trainer_pulled(fake, images)
    real = aws.ssm.get_command_invocation
    monkeypatch.setattr(aws.ssm, "get_command_invocation", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))

    failed = invoke(handler, lambda_context, scheduled_event())
    assert (failed["counted"], failed["errors"]) == (0, 1)

    monkeypatch.setattr(aws.ssm, "get_command_invocation", real)
    recovered = invoke(handler, lambda_context, scheduled_event())
    assert recovered["counted"] == 1


def test_the_sweep_counts_only_our_document(fake, fleet, images, handler, lambda_context, capsys):
    # moto ignores ListCommands filters: this is the function's own guard at work.
    node = run_node()
    other = send([node], ["registry.example/other/app:v1"], document="AWS-RunShellScript")
    fake.set(other, node, Answer("Success", "Success", "hello"))
    capsys.readouterr()

    result = invoke(handler, lambda_context, scheduled_event())

    assert result["commands"] == 0
    assert total(capsys.readouterr().out, "Invocations", **C) == 0
    assert fake.gets == []


def test_an_event_of_another_document_is_dropped(fake, images, handler, lambda_context, capsys):
    node = run_node()
    other = send([node], ["registry.example/other/app:v1"], document="AWS-RunShellScript")
    fake.set(other, node, Answer("Success", "Success", "hello"))
    capsys.readouterr()

    result = invoke(handler, lambda_context, status_event(other, node, "Success", "AWS-RunShellScript"))

    assert result["result"] == "foreign"
    assert total(capsys.readouterr().out, "Invocations", **C) == 0
    assert claim(other, node) is None


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"source": "aws.ssm", "detail-type": "EC2 Command Invocation Status-change Notification", "detail": {}},
        status_event("not-a-uuid", "i-0123456789abcdef0", "Success", DOCUMENT),
    ],
)
def test_malformed_events_are_dropped_not_raised(env, handler, lambda_context, capsys, event):
    assert invoke(handler, lambda_context, event) == {"result": "ignored", "reason": "malformed event"}


def test_an_invocation_ssm_does_not_know_is_logged_not_counted(fake, images, handler, lambda_context):
    node = run_node()
    command_id = send([node], [ref(TRAINER, images[TRAINER])])
    unknown_node = "i-0123456789abcdef0"

    result = invoke(handler, lambda_context, status_event(command_id, unknown_node, "Success", DOCUMENT))

    assert result["result"] == "missing"
    assert claim(command_id, unknown_node) is None


# --- coverage -------------------------------------------------------------------------------------------------------


def test_coverage_as_nodes_join_leave_fail_and_catch_up(fake, fleet, images, handler, lambda_context, capsys):
    digest = images[TRAINER]
    a, b, c = run_node(), run_node(), run_node()
    fleet.online = {a, b}

    def report(node: str, answer: Answer) -> None:
        command_id = send([node], [ref(TRAINER, digest)])
        fake.set(command_id, node, answer)

    def sweep() -> tuple[float, float, float]:
        capsys.readouterr()
        invoke(handler, lambda_context, scheduled_event())
        printed = capsys.readouterr().out
        (coverage,) = values(printed, "Coverage", **C, Repository=TRAINER)
        (missing,) = values(printed, "NodesMissingNewest", **C, Repository=TRAINER)
        (worst,) = values(printed, "Coverage", **C)
        return coverage, missing, worst

    assert sweep() == (0.0, 2, 0.0)

    report(a, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)])))
    failed = image_line(ref(TRAINER, digest), "failed", error="no space left on device") + "\n" + summary_line(failed=1)
    report(b, Answer("Failed", "Failed", failed))
    assert sweep() == (50.0, 1, 0.0)  # inference: nobody holds it yet

    fleet.online.add(c)  # a node joins
    assert sweep()[:2] == (pytest.approx(100 / 3), 2)
    coverages = coverage.look_at_fleet(
        settings.load(settings.StatusSettings), resolution.NewestImages(settings.load(settings.StatusSettings))
    ).coverages
    trainer = next(coverage for coverage in coverages if coverage.repository == TRAINER)
    missing = {state.instance_id: state for state in trainer.missing}
    assert set(missing) == {b, c}
    assert missing[b].last_error == "no space left on device"
    assert missing[c].last_error == ""  # never reported

    report(c, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "cached", digest)])))
    assert sweep()[:2] == (pytest.approx(200 / 3), 1)

    fleet.online.discard(b)  # the failed node leaves
    assert sweep()[:2] == (100.0, 0)

    fleet.online.add(b)  # and comes back, then catches up
    report(b, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)])))
    assert sweep()[:2] == (100.0, 0)


def test_coverage_with_no_online_node_is_full_and_a_repository_without_image_is_not_measured(
    fleet, env, handler, lambda_context, capsys
):
    create_repository(TRAINER)
    push_image(TRAINER, "trainer-v2", tag="v2", pushed_at=at(0))  # inference does not exist
    capsys.readouterr()

    result = invoke(handler, lambda_context, scheduled_event())

    printed = capsys.readouterr().out
    assert result["coverage"] == {TRAINER: 100.0}
    assert values(printed, "Coverage", **C, Repository=INFERENCE) == []
    assert values(printed, "OnlineNodes", **C) == [0]


def test_sweep_refreshes_the_ttl_of_online_nodes_only(fake, fleet, images, handler, lambda_context, monkeypatch):
    alive, gone = run_node(), run_node()
    digest = images[TRAINER]
    for node in (alive, gone):
        command_id = send([node], [ref(TRAINER, digest)])
        fake.set(
            command_id,
            node,
            Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ended=at(0)),
        )
    invoke(handler, lambda_context, scheduled_event())  # counts both (TTL from the 2026-11-01 report time)
    before = {node: row(node, TRAINER)["expires_at"] for node in (alive, gone)}
    fleet.online = {alive}

    invoke(handler, lambda_context, scheduled_event())

    assert row(alive, TRAINER)["expires_at"] > before[alive]
    assert row(gone, TRAINER)["expires_at"] == before[gone]


def test_a_burst_of_events_resolves_the_newest_image_once(fake, images, handler, lambda_context):
    calls: list[str] = []
    aws.client("ecr").meta.events.register("before-call.ecr.DescribeImages", lambda **_: calls.append("describe"))
    digest = images[TRAINER]
    nodes = [run_node() for _ in range(3)]
    command_id = send(nodes, [ref(TRAINER, digest)])
    for node in nodes:
        fake.set(
            command_id, node, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]))
        )

    for node in nodes:
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT, event_id=node))

    assert len(calls) == 1


def test_a_sweep_out_of_time_keeps_its_watermark_and_the_next_one_counts(fake, fleet, images, handler):
    newest_trainer_pulled(fake, images)

    class AlmostOutOfTime:
        function_name = "status"
        memory_limit_in_mb = 256
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:status"
        aws_request_id = "req"

        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 10_000

    first = invoke(handler, AlmostOutOfTime(), scheduled_event())
    assert (first["counted"], first["next_watermark"]) == (0, first["watermark"])

    class Plenty(AlmostOutOfTime):
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 290_000

    assert invoke(handler, Plenty(), scheduled_event())["counted"] == 1


def test_a_sweep_that_cannot_list_a_command_retries_it_next_time(
    fake, fleet, images, handler, lambda_context, monkeypatch
):
    _node, _digest, command_id = newest_trainer_pulled(fake, images)
    listing = aws.ssm.list_command_invocations

    def throttled(command_id: str, ssm: Any = None):
        raise ClientError(
            {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "ListCommandInvocations"
        )

    monkeypatch.setattr(aws.ssm, "list_command_invocations", throttled)
    failed = invoke(handler, lambda_context, scheduled_event())
    assert (failed["counted"], failed["errors"]) == (0, 1)
    requested = boto3.client("ssm").list_commands(CommandId=command_id)["Commands"][0]["RequestedDateTime"]
    assert failed["next_watermark"] <= status_table.timestamp(requested)

    monkeypatch.setattr(aws.ssm, "list_command_invocations", listing)
    assert invoke(handler, lambda_context, scheduled_event())["counted"] == 1


def test_records_omitted_for_the_output_limit_count_as_held_when_the_summary_says_nothing_else_failed(
    fake, fleet, images, handler, lambda_context, capsys
):
    node = run_node()
    fleet.online = {node}
    trainer, inference = images[TRAINER], images[INFERENCE]
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference)])
    # Only the trainer record fit; the summary says 2 images, none failed or skipped, 1 record omitted.
    stdout = image_line(ref(TRAINER, trainer), "pulled", trainer) + "\n" + summary_line(pulled=2, omitted=1)
    fake.set(command_id, node, Answer("Success", "Success", stdout, ENDED))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))
    swept = invoke(handler, lambda_context, scheduled_event())

    assert row(node, INFERENCE)["digest"] == inference
    assert row(node, INFERENCE)["image_status"] == "held"
    assert swept["coverage"] == {TRAINER: 100.0, INFERENCE: 100.0}
    assert total(capsys.readouterr().out, "ImagesOmitted", **C) == 1


def test_two_deliveries_racing_past_the_claim_check_still_count_once(fake, images, capsys, monkeypatch):
    """The conditional write decides: both read "not claimed", only the first write wins (and emits metrics)."""
    node, _digest, command_id = newest_trainer_pulled(fake, images)
    monkeypatch.setattr(claims, "read_claim", lambda *_args: None)
    capsys.readouterr()

    first = invocations.record_invocation(command_id, node, settings.load(settings.StatusSettings), via="event")
    second = invocations.record_invocation(command_id, node, settings.load(settings.StatusSettings), via="sweep")

    assert (first.result, second.result) == ("counted", "duplicate")
    printed = capsys.readouterr().out
    assert total(printed, "Invocations", **C) == 1
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    assert claim(command_id, node)["via"] == "event"


def test_push_to_cached_is_measured_against_a_push_newer_than_the_warm_resolution(
    fake, images, handler, lambda_context, capsys, monkeypatch
):
    """A warm function resolved the newest trainer image before a new push; a node then reports the new digest.
    The report of a digest other than the cached newest redoes the listing (at most every REFRESH_FLOOR_SECONDS,
    0 here), so the latency is the new push's."""
    monkeypatch.setattr(reports, "REFRESH_FLOOR_SECONDS", 0.0)
    old = images[TRAINER]
    first, second = run_node(), run_node()
    command_id = send([first], [ref(TRAINER, old)])
    fake.set(command_id, first, Answer("Success", "Success", good_output([(ref(TRAINER, old), "pulled", old)]), ENDED))
    invoke(handler, lambda_context, status_event(command_id, first, "Success", DOCUMENT, event_id="e-old"))
    new = push_image(TRAINER, "trainer-v3", tag="v3", pushed_at=at(20))
    command_id = send([second], [ref(TRAINER, new)])
    reported = at(23)
    fake.set(
        command_id, second, Answer("Success", "Success", good_output([(ref(TRAINER, new), "pulled", new)]), reported)
    )
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, second, "Success", DOCUMENT, event_id="e-new"))

    assert values(capsys.readouterr().out, "PushToCachedSeconds", **C, Repository=TRAINER) == [180.0]
