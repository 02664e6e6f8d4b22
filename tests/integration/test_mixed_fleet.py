"""A mixed cluster in the status function's sweep, self-repair and `make status`: per-repository denominators from
node selectors, platform skips (not applicable), and unsupported nodes (Windows, Bottlerocket).

Doubles (testing/ssm.py): ``Agents`` answers DescribeInstanceInformation (not in moto), with each node's
PlatformType/PlatformName; ``FakeInvocations`` answers a node's output. Node tags come from moto's EC2, through
the real ``aws.ec2.describe_instances`` (DescribeInstanceInformation returns no tags).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import timedelta

import boto3
import pytest

from eks_prefetch import aws, settings
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status import sweep
from eks_prefetch.status.coverage import look_at_fleet
from eks_prefetch.status.invocations import record_invocation
from prefetchctl import status as report
from testing.apicalls import ApiCalls
from testing.ec2 import run_nodes
from testing.ecr import at
from testing.environment import CLUSTER
from testing.output import image_line, summary_line, total
from testing.ssm import Answer
from tests.integration.conftest import INFERENCE, TRAINER
from tests.integration.test_repair import holds, ref, targets

GPU = {"eks:cluster-name": CLUSTER, "karpenter.sh/nodepool": "gpu"}
CPU = {"eks:cluster-name": CLUSTER, "eks:nodegroup-name": "cpu"}
LATER = at(0) + timedelta(hours=2)


@pytest.fixture(autouse=True)
def env(status_env, monkeypatch):
    monkeypatch.setenv("REPAIR_ENABLED", "true")
    monkeypatch.setenv("REPAIR_GRACE_SECONDS", "900")
    monkeypatch.setenv("REPOSITORY_NODE_SELECTORS", json.dumps({TRAINER: {"karpenter.sh/nodepool": "gpu"}}))
    settings.load.cache_clear()


@pytest.fixture
def pools(fleet, images):
    """2 GPU and 2 CPU nodes online, holding nothing yet; a Windows and a Bottlerocket node with the cluster tag."""
    nodes = {
        "gpu": run_nodes(2, GPU),
        "cpu": run_nodes(2, CPU),
        "windows": run_nodes(1, GPU),
        "bottlerocket": run_nodes(1, GPU),
    }
    fleet.online.update(node for group in nodes.values() for node in group)
    # Registered long before the push: past the node-launch grace period.
    fleet.registered.update({node: at(-600) for group in nodes.values() for node in group})
    fleet.platforms[nodes["windows"][0]] = ("Windows", "Microsoft Windows Server 2022 Datacenter")
    fleet.platforms[nodes["bottlerocket"][0]] = ("Linux", "Bottlerocket")
    return nodes


def test_each_repository_counts_only_the_supported_online_nodes_it_selects(pools, images):
    # The CPU nodes hold inference and not the trainer: they do not lower the trainer's coverage.
    for node in pools["cpu"]:
        holds(node, INFERENCE, images[INFERENCE], at(20))
    for node in pools["gpu"]:
        holds(node, TRAINER, images[TRAINER], at(20))

    fleet = look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)))

    by_repository = {coverage.repository: coverage for coverage in fleet.coverages}
    assert by_repository[TRAINER].online == tuple(sorted(pools["gpu"]))
    assert by_repository[TRAINER].percent == 100.0
    assert by_repository[INFERENCE].online == tuple(sorted(pools["gpu"] + pools["cpu"]))
    assert {node.instance_id for node in by_repository[INFERENCE].missing} == set(pools["gpu"])
    assert fleet.unsupported == {
        pools["windows"][0]: "Windows node: the document runs on Linux only",
        pools["bottlerocket"][
            0
        ]: "Bottlerocket node: containerd is not reachable from the SSM agent's control container",
    }


def test_repair_sends_a_repository_only_to_the_nodes_it_selects_and_never_to_unsupported_ones(pools, images, sent):
    result = sweep.sweep_and_repair(load(StatusSettings), now=LATER)

    sent_to = targets(sent)
    trainer, inference = ref(TRAINER, images[TRAINER]), ref(INFERENCE, images[INFERENCE])
    assert {node: sorted(refs) for node, refs in sent_to.items()} == {
        **{node: sorted([trainer, inference]) for node in pools["gpu"]},
        **{node: [inference] for node in pools["cpu"]},
    }
    assert result["repair"]["nodes_repaired"] == 4


def test_unsupported_nodes_are_counted_in_their_metric_with_the_cluster(pools, capsys):
    capsys.readouterr()
    sweep.sweep_and_repair(load(StatusSettings), now=LATER)

    stdout = capsys.readouterr().out
    assert total(stdout, "UnsupportedNodes", ClusterName=CLUSTER) == 2
    assert total(stdout, "OnlineNodes", ClusterName=CLUSTER) == 6


def test_a_platform_skip_takes_the_node_out_of_the_repositorys_coverage_and_repairs(pools, images, fake, sent):
    """The GPU node reports the trainer image has no manifest for its platform: skipped, exit 0; from then on it is
    not applicable for that digest: outside the trainer's coverage, never repaired for it."""
    skipped_node, other = pools["gpu"]
    command_id = boto3.client("ssm").send_command(
        InstanceIds=[skipped_node], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
    )["Command"]["CommandId"]
    reference = ref(TRAINER, images[TRAINER])
    stdout = "\n".join(
        [
            image_line(reference, "skipped", reason="platform: no manifest for linux/amd64 in the image index"),
            summary_line(skipped=1, failed=0, pulled=0, cached=0, unpinned=0, omitted=0),
        ]
    )
    fake.set(command_id, skipped_node, Answer(stdout=stdout, ended=at(30)))
    settings_ = load(StatusSettings).model_copy(update={"document_name": "AWS-RunShellScript"})
    assert record_invocation(command_id, skipped_node, settings_, via="event").counted
    holds(other, TRAINER, images[TRAINER], at(20))

    fleet = look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)))
    (trainer,) = [coverage for coverage in fleet.coverages if coverage.repository == TRAINER]
    assert trainer.online == (other,)
    assert trainer.percent == 100.0

    sent.clear()
    sweep.sweep_and_repair(load(StatusSettings), now=LATER)
    assert all(reference not in refs for refs in targets(sent).values())


def test_make_status_shows_each_repositorys_own_denominator_and_names_the_unsupported_nodes(pools, images, monkeypatch):
    for node in pools["gpu"]:
        holds(node, TRAINER, images[TRAINER], at(20))
    monkeypatch.setattr(report, "view_of_stack", lambda *_: report.StackView(load(StatusSettings)))
    monkeypatch.setattr(aws.stack, "session_problem", lambda: None)
    monkeypatch.setattr(aws.ec2, "private_dns_names", lambda ids: {})
    out = io.StringIO()

    code = report.main(["--stack", "prefetch-prod"], out=out)

    text = out.getvalue()
    assert code == 1  # inference is below 100%
    assert "cluster ml-prod: 6 online node(s)" in text
    assert "coverage: 100.0% (2/2 nodes, selected by karpenter.sh/nodepool=gpu)" in text
    assert "coverage: 0.0% (0/4 nodes, selected by every cluster node)" in text
    assert f"unsupported: {pools['windows'][0]}  Windows node" in text
    assert f"unsupported: {pools['bottlerocket'][0]}  Bottlerocket node" in text


@pytest.mark.parametrize(("nodes", "describes"), [(10, 1), (200, 1), (201, 2), (450, 3)])
def test_coverage_with_selectors_describes_the_nodes_in_pages_of_200(fleet, images, nodes, describes):
    fleet.online.update(run_nodes(nodes, GPU))
    with ApiCalls().counting() as calls:
        look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)))

    assert calls.only(("ec2",)) == Counter({"ec2:DescribeInstances": describes})


def test_without_selectors_coverage_describes_no_instance(fleet, images, monkeypatch):
    monkeypatch.setenv("REPOSITORY_NODE_SELECTORS", "")
    settings.load.cache_clear()
    fleet.online.update(run_nodes(5, GPU))
    with ApiCalls().counting() as calls:
        look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)))

    assert calls.only(("ec2",)) == Counter()
