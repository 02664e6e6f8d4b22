"""Self-repair after each sweep, against moto: ECR images, SSM commands, the status and idempotency tables.

Test doubles (testing/ssm.py), and why:
- ``FakeInvocations``: moto answers every invocation ``Success`` with no output and has no ListCommandInvocations;
  the double answers the Status/output a test chooses and lists those invocations.
- ``Agents``: moto has no DescribeInstanceInformation; the double says which nodes' agents are Online, and since
  when they are registered.
The sweep runs at a time the test chooses (``sweep_and_repair(now=...)``); what was sent is read from the
SendCommand requests the code handed botocore, and from the status table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest
from moto.ssm.models import ssm_backends

from eks_prefetch import aws, settings
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status import repair, sweep
from eks_prefetch.status import table as status_table
from eks_prefetch.status.reports import RecordingScope
from testing.ecr import at, push_image
from testing.environment import ACCOUNT, DOCUMENT, REGION, REGISTRY, STATUS_TABLE
from testing.output import image_line, summary_line, total
from testing.ssm import Answer
from tests.faults import refuse_instances
from tests.integration.conftest import INFERENCE, TRAINER

GRACE = timedelta(minutes=15)


@pytest.fixture(autouse=True)
def env(status_env, monkeypatch):
    monkeypatch.setenv("REPAIR_ENABLED", "true")
    monkeypatch.setenv("REPAIR_GRACE_SECONDS", str(int(GRACE.total_seconds())))
    settings.load.cache_clear()


def node_ids(count: int, start: int = 0) -> list[str]:
    return [f"i-{n:017x}" for n in range(start, start + count)]


def ref(repository: str, digest: str) -> str:
    return f"{REGISTRY}/{repository}@{digest}"


def holds(instance_id: str, repository: str, digest: str, when: datetime) -> None:
    """The node reported this digest pulled (what the status function writes on a report)."""
    aws.dynamodb.update_item(
        STATUS_TABLE,
        status_table.node_key(instance_id, repository),
        "SET instance_id = :i, repository = :r, digest = :d, image_status = :s, cached_at = :t",
        {":i": instance_id, ":r": repository, ":d": digest, ":s": "pulled", ":t": status_table.timestamp(when)},
    )


def run_sweep(now: datetime) -> dict[str, Any]:
    return sweep.sweep_and_repair(load(StatusSettings), now=now)


def targets(requests: list[dict[str, Any]]) -> dict[str, list[str]]:
    """instance id -> the images sent to it, over every repair request."""
    sent: dict[str, list[str]] = {}
    for request in requests:
        assert "Targets" not in request
        for instance_id in request["InstanceIds"]:
            sent.setdefault(instance_id, []).extend(
                by_digest(reference) for reference in request["Parameters"]["images"][0].split(",")
            )
    return sent


def by_digest(reference: str) -> str:
    """``registry/repository:tag@digest`` as ``registry/repository@digest``: which image, whatever tag names it on
    the node (the tag a request carries is tested with the request builder)."""
    name, _, digest = reference.partition("@")
    registry, _, path = name.partition("/")
    return f"{registry}/{path.split(':', 1)[0]}@{digest}"


def test_a_push_whose_event_was_lost_is_repaired_on_every_node_that_lacks_it(fake, fleet, images, sent, capsys):
    """120 online nodes, 20 of which already hold both newest images: after the grace period, one sweep sends the
    missing images to the other 100, in commands of at most 50 ids, with the push path's safety settings."""
    nodes = node_ids(120)
    fleet.online = set(nodes)
    for node in nodes[:20]:
        holds(node, TRAINER, images[TRAINER], at(5))
        holds(node, INFERENCE, images[INFERENCE], at(15))

    result = run_sweep(at(10) + GRACE + timedelta(minutes=1))

    assert result["repair"]["nodes_repaired"] == 100
    assert [len(request["InstanceIds"]) for request in sent] == [50, 50]
    expected = sorted([ref(INFERENCE, images[INFERENCE]), ref(TRAINER, images[TRAINER])])
    assert targets(sent) == {node: expected for node in nodes[20:]}
    for request in sent:
        assert request["DocumentName"] == DOCUMENT
        assert request["MaxErrors"] == "25%"
        assert request["TimeoutSeconds"] == 600
        assert request["Comment"].endswith("]")  # the event-key marker of the at-most-once send
    assert total(capsys.readouterr().out, "RepairCommandsSent", ClusterName="ml-prod") == 2


def test_nothing_within_the_grace_period_after_a_push(fake, fleet, images, sent):
    fleet.online = set(node_ids(3))

    result = run_sweep(at(10) + GRACE - timedelta(minutes=1))  # inference was pushed at 12:10

    # The trainer push is past its grace, so the trainer image is repaired alone; inference waits.
    assert targets(sent) == {node: [ref(TRAINER, images[TRAINER])] for node in node_ids(3)}
    assert result["repair"]["nodes_repaired"] == 3
    sent.clear()
    run_sweep(at(0) + timedelta(minutes=5))  # both pushes within the grace period
    assert sent == []


def test_a_node_offline_during_the_push_is_repaired_on_the_first_sweep_after_it_is_back(fake, fleet, images, sent):
    back, steady = node_ids(2)
    fleet.online = {steady}
    for repository in (TRAINER, INFERENCE):
        holds(steady, repository, images[repository], at(12))

    run_sweep(at(10) + GRACE + timedelta(minutes=1))
    assert sent == []  # the offline node is not online: nothing to send to

    fleet.online.add(back)
    run_sweep(at(10) + GRACE + timedelta(minutes=6))
    assert set(targets(sent)) == {back}


def test_a_node_that_registered_recently_is_left_to_the_node_launch_path(fake, fleet, images, sent):
    now = at(10) + GRACE + timedelta(minutes=1)
    new, old = node_ids(2)
    fleet.online = {new, old}
    fleet.registered[new] = now - timedelta(minutes=3)

    run_sweep(now)

    assert set(targets(sent)) == {old}


def test_a_node_that_keeps_failing_backs_off_and_is_not_sent_a_command_every_sweep(fake, fleet, images, sent, capsys):
    """Each repair fails on the node (disk full). Sweeps every 5 minutes for 3 hours: the repairs come at growing
    intervals (10, 20, 40, 80 minutes...), not every sweep, and the backoff is recorded on the node's row."""
    (node,) = node_ids(1)
    fleet.online = {node}
    start = at(10) + GRACE + timedelta(minutes=1)
    sweeps_with_a_repair = []
    for n in range(36):
        now = start + timedelta(minutes=5 * n)
        before = len(sent)
        run_sweep(now)
        if len(sent) > before:
            sweeps_with_a_repair.append(n)
            (request,) = sent[before:]
            command_id = boto3.client("ssm").list_commands()["Commands"][-1]["CommandId"]
            failed = "\n".join(
                [
                    image_line(reference, "skipped", reason="disk: 91% used")
                    for reference in request["Parameters"]["images"][0].split(",")
                ]
                + [summary_line(skipped=2)]
            )
            fake.set(command_id, node, Answer("Success", "Success", failed, ended=now + timedelta(minutes=1)))

    assert sweeps_with_a_repair == [0, 2, 6, 14, 30]  # sent, then 10, 20, 40, 80 minutes after each send
    row = aws.dynamodb.get_item(STATUS_TABLE, status_table.node_row_key(node))
    assert row["repair_attempts"] == 5
    assert total(capsys.readouterr().out, "NodesBackedOff", ClusterName="ml-prod") > 0


def test_a_node_with_a_command_in_flight_gets_nothing(fake, fleet, images, sent):
    busy, idle = node_ids(2)
    fleet.online = {busy, idle}
    command_id = boto3.client("ssm").send_command(
        DocumentName=DOCUMENT, InstanceIds=[busy], Parameters={"images": [ref(TRAINER, images[TRAINER])]}
    )["Command"]["CommandId"]
    fake.set(command_id, busy, Answer("InProgress", "InProgress", ""))
    sent.clear()

    run_sweep(at(10) + GRACE + timedelta(minutes=1))

    assert set(targets(sent)) == {idle}


def test_a_repeated_or_overlapping_sweep_sends_nothing_twice(fake, fleet, images, sent):
    fleet.online = set(node_ids(3))
    now = at(10) + GRACE + timedelta(minutes=1)

    # Two sweeps that planned on the same view before either sent (overlapping invocations of the schedule).
    scope = RecordingScope.for_sweep(load(StatusSettings))
    swept, fleet = sweep.sweep(load(StatusSettings), now=now, scope=scope)
    inputs = repair.RepairInputs(fleet, swept.in_flight, scope.newest)
    first = repair.repair(inputs, load(StatusSettings), now=now)
    second = repair.repair(inputs, load(StatusSettings), now=now)
    # And the schedule's event delivered again a minute later.
    again = run_sweep(now + timedelta(minutes=1))

    assert first.commands_sent == 1
    assert second.commands_sent == 0
    assert again["repair"]["commands_sent"] == 0
    assert len(sent) == 1
    assert len(boto3.client("ssm").list_commands()["Commands"]) == 1


def test_the_per_sweep_bound_holds_with_500_missing_nodes_oldest_gap_first(fake, fleet, images, sent, monkeypatch):
    """500 nodes lack something: 100 lack the trainer image (pushed first), 400 only the inference image. With the
    default bound of 200, the 100 oldest gaps go first, then 100 of the others; the rest wait for the next sweep."""
    nodes = node_ids(500)
    fleet.online = set(nodes)
    for node in nodes[100:]:
        holds(node, TRAINER, images[TRAINER], at(5))

    result = run_sweep(at(10) + GRACE + timedelta(minutes=1))

    sent_to = targets(sent)
    assert len(sent_to) == load(StatusSettings).repair_max_nodes_per_sweep == 200
    assert set(nodes[:100]) <= set(sent_to)
    assert all(len(request["InstanceIds"]) <= 50 for request in sent)
    assert result["repair"]["nodes_waiting"] == 300


def test_a_sweeps_repairs_share_the_registry_paths_budget(fake, fleet, images, sent):
    """200 nodes lack a new 3.5 GB trainer image: 4 commands of 50 ids go out together, each with a quarter of the
    budget's pulls (50 Gbit/s over a 3.5 GB pull: 64 at once), so that together they pull no more at once than one
    command would; MaxErrors keeps its meaning."""
    big = push_image(TRAINER, "trainer-v3", tag="v3", pushed_at=at(20), size=3_500_000_000)
    nodes = node_ids(200)
    fleet.online = set(nodes)
    for node in nodes:
        holds(node, INFERENCE, images[INFERENCE], at(15))

    result = run_sweep(at(20) + GRACE + timedelta(minutes=1))

    assert result["repair"]["nodes_repaired"] == 200
    assert [request["MaxConcurrency"] for request in sent] == ["16"] * 4
    assert sum(int(request["MaxConcurrency"]) for request in sent) <= 64
    assert all(request["MaxErrors"] == "25%" for request in sent)
    assert set(targets(sent)) == set(nodes)
    assert {tuple(images) for images in targets(sent).values()} == {(ref(TRAINER, big),)}


def test_a_node_holding_a_newer_digest_than_the_one_resolved_is_left_alone(fake, fleet, images, sent):
    """A newer trainer image whose tag the filter rejects (a cosign-style tag) is on one node: the resolution's
    newest is older than what that node holds, so it is not sent there."""
    newer = push_image(TRAINER, "trainer-v3-signed", tag="sha256-abc.sig", pushed_at=at(20))
    ahead, behind = node_ids(2)
    fleet.online = {ahead, behind}
    holds(ahead, TRAINER, newer, at(21))
    for node in (ahead, behind):
        holds(node, INFERENCE, images[INFERENCE], at(12))

    run_sweep(at(20) + GRACE + timedelta(minutes=1))

    assert targets(sent) == {behind: [ref(TRAINER, images[TRAINER])]}


def test_repair_disabled_sends_nothing(fake, fleet, images, sent, monkeypatch):
    monkeypatch.setenv("REPAIR_ENABLED", "false")
    settings.load.cache_clear()
    fleet.online = set(node_ids(2))

    result = run_sweep(at(10) + GRACE + timedelta(minutes=1))

    assert result["repair"] == {"enabled": False}
    assert sent == []


def test_one_node_ssm_refuses_does_not_hold_back_its_group(fake, fleet, images, sent):
    """SSM refuses a whole SendCommand for one instance id it does not accept (InvalidInstanceId, raised inside moto):
    the group is split until the other nodes are sent their repair; the refused node backs off like a failed one."""
    nodes = node_ids(8)
    fleet.online = set(nodes)
    bad = nodes[5]
    calls = refuse_instances(ssm_backends[ACCOUNT][REGION], {bad})
    now = at(10) + GRACE + timedelta(minutes=1)

    result = run_sweep(now)

    repaired = sorted(
        node for command in boto3.client("ssm").list_commands()["Commands"] for node in command["InstanceIds"]
    )
    assert repaired == sorted(set(nodes) - {bad})
    assert len(calls) <= 2 * len(nodes) - 1  # halving: bounded
    assert result["repair"]["errors"] == 1
    row = aws.dynamodb.get_item(STATUS_TABLE, status_table.node_row_key(bad))
    assert row["repair_attempts"] == 1
    assert "repair_sent_at" not in row  # nothing in flight: only the backoff
    calls.clear()
    run_sweep(now + timedelta(minutes=5))
    assert calls == []  # the refused node backs off, and the others have their repair in flight
    run_sweep(now + timedelta(minutes=11))
    assert calls == [[bad]]  # its backoff over, it is tried again, alone
