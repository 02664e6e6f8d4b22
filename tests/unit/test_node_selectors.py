"""RepositoryNodeSelectors: parsed and refused with the problem named (CommandSettings and the deploy-time check
share the parser), the Targets a push sends, and which repositories a node's tags select."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_selectors import SelectorError, matches, parse_node_selectors
from eks_prefetch.prefetch.commands import send_command_request
from eks_prefetch.settings import CommandSettings
from testing.environment import DEPLOYMENT_ENV, WATCHED

SELECTORS = {
    "ml/trainer": {"karpenter.sh/nodepool": ["gpu-a", "gpu-b"], "node.kubernetes.io/arch": "amd64"},
    "ml/inference": {"eks:nodegroup-name": "infer"},
}


def settings(selectors: object = SELECTORS) -> CommandSettings:
    text = selectors if isinstance(selectors, str) else json.dumps(selectors)
    return CommandSettings.from_env({**DEPLOYMENT_ENV, "REPOSITORY_NODE_SELECTORS": text})


def image(repository: str) -> ResolvedImage:
    return ResolvedImage(
        registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",
        repository=repository,
        tag="v1",
        digest="sha256:" + "a" * 64,
        pushed_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_push_targets_the_cluster_tag_and_the_repositorys_conditions() -> None:
    request = send_command_request([image("ml/trainer")], settings())

    assert request["Targets"] == [
        {"Key": "tag:eks:cluster-name", "Values": ["ml-prod"]},
        {"Key": "tag:karpenter.sh/nodepool", "Values": ["gpu-a", "gpu-b"]},
        {"Key": "tag:node.kubernetes.io/arch", "Values": ["amd64"]},
    ]
    assert "InstanceIds" not in request


def test_a_repository_without_selector_targets_every_cluster_node() -> None:
    request = send_command_request([image("ml/inference")], settings({"ml/trainer": {"pool": "gpu"}}))

    assert request["Targets"] == [{"Key": "tag:eks:cluster-name", "Values": ["ml-prod"]}]


def test_no_selectors_is_the_default() -> None:
    assert CommandSettings.from_env(DEPLOYMENT_ENV).node_selectors == {}
    assert settings("").node_selectors == {}


def test_a_node_gets_exactly_the_repositories_its_tags_select() -> None:
    loaded = settings()

    gpu = {"karpenter.sh/nodepool": "gpu-b", "node.kubernetes.io/arch": "amd64", "eks:cluster-name": "ml-prod"}
    assert loaded.repositories_for(gpu) == ("ml/trainer",)
    assert loaded.repositories_for({"eks:nodegroup-name": "infer"}) == ("ml/inference",)
    assert loaded.repositories_for({"karpenter.sh/nodepool": "gpu-b"}) == ()  # arch missing: ANDed
    assert matches({}, {}) is True


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["ml/trainer"]', "must be a JSON object"),
        ('{"ml/unwatched": {"pool": "gpu"}}', "'ml/unwatched' is not one of RepositoryNames"),
        ('{"ml/trainer": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}}', "5 tag keys, at most 4"),
        ('{"ml/trainer": {}}', "non-empty object"),
        ('{"ml/trainer": {"pool": 3}}', "a string or a non-empty list of strings"),
        ('{"ml/trainer": {"pool": []}}', "a string or a non-empty list of strings"),
        ('{"ml/trainer": {"eks:cluster-name": "ml-prod"}}', "is NodeTagKey"),
        ('{"ml/trainer": {"pool": ""}}', "tag values must be 1 to 256 characters"),
    ],
)
def test_invalid_selectors_are_refused_with_the_problem_named(text: str, problem: str) -> None:
    with pytest.raises(SelectorError, match="RepositoryNodeSelectors") as raised:
        parse_node_selectors(text, WATCHED, "eks:cluster-name")
    assert problem in str(raised.value)
    with pytest.raises(ValidationError, match="RepositoryNodeSelectors"):
        settings(text)
