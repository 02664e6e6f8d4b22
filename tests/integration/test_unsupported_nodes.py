"""Nodes this application cannot serve, as their invocations show it: a node where the script finds no containerd
socket (its summary says "unsupported", exit 0), and a Windows node a push reaches by its tag Targets, where SSM
skips the document's step (its precondition is platformType Linux).

Doubles (testing/ssm.py): ``FakeInvocations`` answers each invocation's Status and stdout (moto answers Success with
no output for everything); ``skipped_step`` is SSM's answer for a step the agent skipped; ``Agents`` answers
DescribeInstanceInformation (not in moto) with each node's PlatformType/PlatformName. State is read from the DynamoDB
status table, metrics from the EMF the function prints.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta

import pytest
import time_machine

from eks_prefetch import aws, settings
from eks_prefetch.node_contract import AUTO_MODE_NODE, AUTO_MODE_TAG, CONTAINERD_NOT_UP, NO_CONTAINERD_SOCKET
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status import sweep
from eks_prefetch.status import table as status_table
from eks_prefetch.status.coverage import look_at_fleet
from prefetchctl import status as report
from testing.deployment import load_handler
from testing.ec2 import run_nodes
from testing.ecr import at
from testing.environment import CLUSTER, DOCUMENT
from testing.events import status_event
from testing.output import emitted, image_line, summary_line, total
from testing.ssm import Answer, skipped_step
from tests.integration.conftest import INFERENCE, TRAINER
from tests.integration.test_repair import targets
from tests.integration.test_status import ref, row, send

C = {"ClusterName": CLUSTER}
NO_SOCKET = f"{NO_CONTAINERD_SOCKET} at /run/containerd/containerd.sock"
# What the script prints on such a node (document/prefetch.sh, `unsupported`).
UNSUPPORTED_OUTPUT = json.dumps(
    {"summary": True, "images": 0, "failed": 0, "omitted": 0, "unsupported": NO_SOCKET, "seconds": 0.01}
)
REPORTED = at(30)
LATER = at(0) + timedelta(hours=2)


@pytest.fixture(autouse=True)
def env(status_env, monkeypatch):
    monkeypatch.setenv("REPAIR_ENABLED", "true")
    monkeypatch.setenv("REPAIR_GRACE_SECONDS", "900")
    settings.load.cache_clear()


@pytest.fixture
def handler():
    return load_handler("status")


@pytest.fixture
def nodes(fleet, images) -> dict[str, str]:
    """Online cluster nodes, registered long before the push (past the repair grace): a good Linux node, a Linux node
    without containerd's socket, a Windows node and a Bottlerocket node."""
    good, socketless, windows, bottlerocket = run_nodes(4, {"eks:cluster-name": CLUSTER})
    named = {"good": good, "socketless": socketless, "windows": windows, "bottlerocket": bottlerocket}
    fleet.online.update(named.values())
    fleet.registered.update({node: at(-600) for node in named.values()})
    fleet.platforms[windows] = ("Windows", "Microsoft Windows Server 2022 Datacenter")
    fleet.platforms[bottlerocket] = ("Linux", "Bottlerocket")
    return named


def report_of(fake, handler, lambda_context, node: str, references: list[str], answer: Answer) -> dict:
    """The node's invocation of a command sending ``references``, as SSM answers it, recorded from its event."""
    command_id = send([node], references)
    fake.set(command_id, node, answer)
    return handler.lambda_handler(status_event(command_id, node, answer.status, DOCUMENT), lambda_context)


def no_socket(fake, handler, lambda_context, node: str, images: dict[str, str], ended: datetime = REPORTED) -> dict:
    references = [ref(TRAINER, images[TRAINER]), ref(INFERENCE, images[INFERENCE])]
    return report_of(fake, handler, lambda_context, node, references, Answer(stdout=UNSUPPORTED_OUTPUT, ended=ended))


def pulled(fake, handler, lambda_context, node: str, images: dict[str, str], ended: datetime) -> dict:
    lines = [image_line(ref(r, images[r]), "pulled", images[r]) for r in (TRAINER, INFERENCE)]
    stdout = "\n".join([*lines, summary_line(pulled=2, failed=0, cached=0, skipped=0, unpinned=0, omitted=0)])
    references = [ref(TRAINER, images[TRAINER]), ref(INFERENCE, images[INFERENCE])]
    return report_of(fake, handler, lambda_context, node, references, Answer(stdout=stdout, ended=ended))


def fleet_at(now: datetime):
    return look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)), now=now)


# --- no containerd socket -------------------------------------------------------------------------------------------


def test_a_report_of_no_containerd_socket_is_counted_as_no_failure(
    nodes, images, fake, handler, lambda_context, capsys
):
    capsys.readouterr()
    result = no_socket(fake, handler, lambda_context, nodes["socketless"], images)

    printed = capsys.readouterr().out
    assert result["result"] == "counted"
    assert result["status"] == "Success"
    assert result["unsupported"] == NO_SOCKET
    assert total(printed, "InvocationsFailed", **C) == 0
    assert [name for name, _dims, _value in emitted(printed) if name in {"BadOutput", "ImagesFailed"}] == []
    for repository in (TRAINER, INFERENCE):
        state = row(nodes["socketless"], repository)
        assert state["unsupported_reason"] == NO_SOCKET
        assert state["unsupported_at"] == status_table.timestamp(REPORTED)
        assert "last_error" not in state  # not a failure of its images


def test_the_node_is_outside_every_coverage_figure_and_named_with_its_reason(
    nodes, images, fake, handler, lambda_context
):
    no_socket(fake, handler, lambda_context, nodes["socketless"], images)

    fleet = fleet_at(LATER)

    assert fleet.unsupported[nodes["socketless"]] == f"{NO_SOCKET} (reported {status_table.timestamp(REPORTED)})"
    assert set(fleet.unsupported) == {nodes["socketless"], nodes["windows"], nodes["bottlerocket"]}
    for coverage in fleet.coverages:
        assert coverage.online == (nodes["good"],)
        assert [state.instance_id for state in coverage.missing] == [nodes["good"]]


def test_unsupported_nodes_metric_counts_it_and_repair_never_targets_it(
    nodes, images, fake, handler, lambda_context, sent, capsys
):
    no_socket(fake, handler, lambda_context, nodes["socketless"], images)
    sent.clear()
    capsys.readouterr()

    result = sweep.sweep_and_repair(load(StatusSettings), now=LATER)

    printed = capsys.readouterr().out
    assert total(printed, "UnsupportedNodes", **C) == 3
    assert total(printed, "OnlineNodes", **C) == 4
    assert set(targets(sent)) == {nodes["good"]}
    assert result["repair"]["nodes_repaired"] == 1


def test_make_status_names_it_with_the_reason(nodes, images, fake, handler, lambda_context, monkeypatch):
    no_socket(fake, handler, lambda_context, nodes["socketless"], images)
    monkeypatch.setattr(report, "view_of_stack", lambda *_: report.StackView(load(StatusSettings)))
    monkeypatch.setattr(aws.stack, "session_problem", lambda: None)
    monkeypatch.setattr(aws.ec2, "private_dns_names", lambda ids: {nodes["socketless"]: "ip-10-0-0-7.ec2.internal"})
    out = io.StringIO()

    with time_machine.travel(LATER, tick=False):
        report.main(["--stack", "prefetch-prod"], out=out)

    text = out.getvalue()
    assert f"unsupported: ip-10-0-0-7.ec2.internal ({nodes['socketless']})  {NO_SOCKET} (reported " in text
    assert "coverage: 0.0% (0/1 nodes)" in text


def test_make_status_names_an_eks_auto_mode_node_carrying_the_node_tag(nodes, images, monkeypatch):
    """SSM never lists an Auto Mode node (AWS allows no SSM on it): coverage never counts it, and `make status` says
    why it gets no prefetch."""
    auto_mode_tags = {"eks:cluster-name": CLUSTER, AUTO_MODE_TAG: "default", "eks:kubernetes-node-pool-name": "general"}
    (auto_mode,) = run_nodes(1, auto_mode_tags)
    monkeypatch.setattr(report, "view_of_stack", lambda *_: report.StackView(load(StatusSettings)))
    monkeypatch.setattr(aws.stack, "session_problem", lambda: None)
    out = io.StringIO()

    with time_machine.travel(LATER, tick=False):
        report.main(["--stack", "prefetch-prod"], out=out)

    text = out.getvalue()
    assert f"({auto_mode})  {AUTO_MODE_NODE} (outside coverage, never repaired)" in text
    assert f"cluster {CLUSTER}: 4 online node(s)" in text
    assert auto_mode not in fleet_at(LATER).online


def test_a_later_report_of_its_images_clears_the_mark(nodes, images, fake, handler, lambda_context, sent):
    """containerd installed since: the next command that reaches the node (a push by tag, a restart's command) pulls;
    from then on it is in coverage, holding the images."""
    node = nodes["socketless"]
    no_socket(fake, handler, lambda_context, node, images)
    pulled(fake, handler, lambda_context, node, images, ended=REPORTED + timedelta(minutes=5))

    fleet = fleet_at(LATER)

    assert node not in fleet.unsupported
    for coverage in fleet.coverages:
        assert node in coverage.online
        assert node not in [state.instance_id for state in coverage.missing]


def test_an_older_report_of_no_socket_recorded_late_does_not_mark_the_node(
    nodes, images, fake, handler, lambda_context
):
    """Events come in any order, and the sweep records lost ones later: the newest report decides."""
    node = nodes["socketless"]
    pulled(fake, handler, lambda_context, node, images, ended=REPORTED + timedelta(minutes=5))
    no_socket(fake, handler, lambda_context, node, images, ended=REPORTED)

    assert node not in fleet_at(LATER).unsupported


def test_a_failure_the_script_reports_clears_the_mark_but_a_failure_ssm_reports_does_not(
    nodes, images, fake, handler, lambda_context
):
    """A failed pull means the script reached containerd: the node is served again, and missing with its error. A
    command SSM could not deliver says nothing about the node's containerd."""
    node = nodes["socketless"]
    no_socket(fake, handler, lambda_context, node, images)
    trainer = [ref(TRAINER, images[TRAINER])]
    report_of(fake, handler, lambda_context, node, trainer, Answer("Failed", "Undeliverable", "", at(40)))
    assert node in fleet_at(LATER).unsupported

    failed = "\n".join(
        [image_line(trainer[0], "failed", error="403 Forbidden", reason="unauthorized"), summary_line(failed=1)]
    )
    report_of(fake, handler, lambda_context, node, trainer, Answer("Failed", "Failed", failed, at(50)))

    fleet = fleet_at(LATER)
    assert node not in fleet.unsupported
    (coverage,) = [c for c in fleet.coverages if c.repository == TRAINER]
    assert [state.last_error for state in coverage.missing if state.instance_id == node] == ["403 Forbidden"]


def test_the_mark_lapses_a_node_state_ttl_after_the_last_report(nodes, images, fake, handler, lambda_context, sent):
    """Not renewed by any report for NodeStateTtlSeconds: the node is checked again by self-repair's command (and
    marked again if it still has no socket)."""
    node = nodes["socketless"]
    no_socket(fake, handler, lambda_context, node, images)
    ttl = timedelta(seconds=load(StatusSettings).node_state_ttl_seconds)

    assert node in fleet_at(REPORTED + ttl - timedelta(minutes=5)).unsupported
    sent.clear()
    sweep.sweep_and_repair(load(StatusSettings), now=REPORTED + ttl + timedelta(minutes=5))

    assert node in targets(sent)


def test_a_bottlerocket_node_running_the_script_is_unsupported_not_failed(
    nodes, images, fake, handler, lambda_context, capsys
):
    """Bottlerocket is Linux: the precondition lets the step run, in the agent's control container, where the script
    finds no containerd socket."""
    capsys.readouterr()
    result = no_socket(fake, handler, lambda_context, nodes["bottlerocket"], images)

    assert result["status"] == "Success"
    assert total(capsys.readouterr().out, "InvocationsFailed", **C) == 0
    assert fleet_at(LATER).unsupported[nodes["bottlerocket"]].startswith("Bottlerocket node")


# --- containerd installed but not up yet: a failure that repair retries, not an unsupported node ---------------------

NOT_UP = f"{CONTAINERD_NOT_UP}: no socket at /run/containerd/containerd.sock after 60s"


def test_containerd_not_up_yet_is_a_failure_that_repair_retries_not_an_unsupported_node(
    nodes, images, fake, handler, lambda_context, sent, capsys
):
    """A new node's first command before nodeadm started containerd, or a restart: the script fails its run (exit 2)
    with CONTAINERD_NOT_UP. The node stays in coverage, missing with that error, and the sweep's repair sends to it
    again (was: "unsupported", outside coverage and self-repair for up to NodeStateTtlSeconds)."""
    node = nodes["socketless"]
    references = [ref(TRAINER, images[TRAINER]), ref(INFERENCE, images[INFERENCE])]
    stdout = json.dumps({"summary": True, "images": 0, "failed": 0, "omitted": 0, "error": NOT_UP, "seconds": 60.2})
    capsys.readouterr()

    result = report_of(fake, handler, lambda_context, node, references, Answer("Failed", "Failed", stdout, REPORTED))

    assert "unsupported" not in result
    assert total(capsys.readouterr().out, "InvocationsFailed", **C) == 1
    fleet = fleet_at(LATER)
    assert node not in fleet.unsupported
    for coverage in fleet.coverages:
        (missing,) = [state for state in coverage.missing if state.instance_id == node]
        assert missing.last_error == f"run failed: {NOT_UP}"
    sent.clear()
    sweep.sweep_and_repair(load(StatusSettings), now=LATER)
    assert node in targets(sent)


# --- a Windows node reached by a push's tag Targets: SSM skips the step --------------------------------------------


@pytest.mark.parametrize("message", [False, True], ids=["no-stdout", "skip-message"])
def test_a_step_ssm_skipped_on_a_windows_node_is_no_failure_and_no_bad_output(
    nodes, images, fake, handler, lambda_context, capsys, message
):
    capsys.readouterr()
    answer = skipped_step(message=message, ended=REPORTED)
    result = report_of(fake, handler, lambda_context, nodes["windows"], [ref(TRAINER, images[TRAINER])], answer)

    printed = capsys.readouterr().out
    assert result["result"] == "counted"
    assert result["status"] == "Success"
    assert "problem" not in result
    assert result["unsupported"]
    assert total(printed, "Invocations", **C, Status="Success") == 1
    assert total(printed, "InvocationsFailed", **C) == 0
    assert [name for name, _dims, _value in emitted(printed) if name == "BadOutput"] == []
    # No failure recorded on its rows: the node is outside coverage by its platform.
    assert row(nodes["windows"], TRAINER) is None
    assert nodes["windows"] in fleet_at(LATER).unsupported


def test_a_nodes_platform_is_asked_once_per_container_however_many_pushes_skip_it(
    nodes, images, fake, handler, fleet, lambda_context
):
    """A step skipped with no stdout is told apart from a broken run by the node's platform (one
    DescribeInstanceInformation); a warm container remembers it, as a node's platform does not change: every push
    that reaches a Windows node by its tags would otherwise ask again."""
    fleet.asked.clear()
    for _push in range(3):
        result = report_of(
            fake, handler, lambda_context, nodes["windows"], [ref(TRAINER, images[TRAINER])], skipped_step()
        )
        assert result["unsupported"]

    assert fleet.asked == [nodes["windows"]]
