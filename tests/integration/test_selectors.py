"""Per-repository node selectors on the push and new-node paths, in the real handlers against moto.

moto resolves a command's tag Targets through EC2's tag filters (keys ANDed, values ORed), as SSM does, so the
instance ids moto's command lists are the nodes SSM would run it on.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import boto3
import pytest

from eks_prefetch.node_output import repository_of
from testing.apicalls import ApiCalls
from testing.deployment import FakeLambdaContext, deployment, load_handler
from testing.ec2 import run_instance, run_nodes
from testing.ecr import fill_repository, page_describe_images_as_ecr_does
from testing.environment import CLUSTER
from testing.events import push_event, running_event
from testing.sqs import LaunchQueue
from testing.ssm import Agents
from tests.integration.test_node_launch import env, images, images_of, queue  # noqa: F401 - fixtures

GPU = {"eks:cluster-name": CLUSTER, "karpenter.sh/nodepool": "gpu-a", "kubernetes.io/arch": "amd64"}
GPU_B = {**GPU, "karpenter.sh/nodepool": "gpu-b"}
CPU = {"eks:cluster-name": CLUSTER, "eks:nodegroup-name": "cpu"}
OTHER_CLUSTER_GPU = {**GPU, "eks:cluster-name": "other"}
SELECTORS = {"ml/trainer": {"karpenter.sh/nodepool": ["gpu-a", "gpu-b"], "kubernetes.io/arch": "amd64"}}


def push_to_mixed_fleet(matching: int) -> tuple[ApiCalls, dict[str, Any], dict[str, list[str]]]:
    """One push of ml/trainer (selected: the GPU pools) to a fleet with ``matching`` nodes in its first GPU pool,
    and a few of each other pool."""
    with deployment(REPOSITORY_NAMES="ml/trainer,ml/inference", REPOSITORY_NODE_SELECTORS=json.dumps(SELECTORS)):
        pools = {
            name: run_nodes(matching if name == "gpu" else 3, tags)
            for name, tags in {"gpu": GPU, "gpu-b": GPU_B, "cpu": CPU, "other": OTHER_CLUSTER_GPU}.items()
        }
        digest = fill_repository("ml/trainer", 3)
        page_describe_images_as_ecr_does()
        handler = load_handler("ecr_push").lambda_handler
        with ApiCalls().counting() as calls:
            result = handler(push_event("ml/trainer", digest, "v2"), FakeLambdaContext())
        assert result["status"] == "sent", result
        (command,) = boto3.client("ssm").list_commands()["Commands"]
        return calls, command, pools


@pytest.mark.parametrize("matching", [1, 100, 1000])
def test_a_selected_push_is_one_command_to_exactly_the_matching_nodes(matching: int) -> None:
    calls, command, pools = push_to_mixed_fleet(matching)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter({"ecr:DescribeImages": 1, "ssm:SendCommand": 1})
    assert command["Targets"] == [
        {"Key": "tag:eks:cluster-name", "Values": [CLUSTER]},
        {"Key": "tag:karpenter.sh/nodepool", "Values": ["gpu-a", "gpu-b"]},
        {"Key": "tag:kubernetes.io/arch", "Values": ["amd64"]},
    ]
    assert sorted(command["InstanceIds"]) == sorted(pools["gpu"] + pools["gpu-b"])


def test_a_new_node_of_each_pool_gets_exactly_its_repositories(
    queue: LaunchQueue,  # noqa: F811
    agents: Agents,
    sent: list[dict[str, Any]],
    images: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    selectors = {**SELECTORS, "ml/inference": {"eks:nodegroup-name": "cpu"}}
    monkeypatch.setenv("REPOSITORY_NODE_SELECTORS", json.dumps(selectors))
    nodes = {
        name: run_instance(tags)
        for name, tags in {"gpu": GPU, "cpu": CPU, "system": {"eks:cluster-name": CLUSTER}}.items()
    }
    agents.online.update(nodes.values())
    for node in nodes.values():
        queue.publish(running_event(node))

    queue.deliver()

    got = {request["InstanceIds"][0]: [repository_of(ref) for ref in images_of(request)] for request in sent}
    assert got == {nodes["gpu"]: ["ml/trainer"], nodes["cpu"]: ["ml/inference"]}
    # The system node no repository selects is not waited for: its agent is never asked.
    assert nodes["system"] not in agents.asked
