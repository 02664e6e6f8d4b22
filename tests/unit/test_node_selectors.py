"""RepositoryNodeSelectors: parsed and refused with the problem named (CommandSettings and the deploy-time check
share the parser), the Targets a push sends, and which repositories a node's tags select."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
import regex
from pydantic import ValidationError

from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_selectors import (
    MAX_CONDITIONS,
    MAX_KEY_LENGTH,
    MAX_VALUES,
    SelectorError,
    matches,
    parse_node_selectors,
    target_key_problem,
)
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


# --- what SSM's SendCommand accepts in Targets (botocore's SSM model) -------------------------------------------------


@pytest.mark.parametrize("key", ["team+pool", "pool#1", "gpu,cpu", "pool*", "pool\n", "x" * 129])
def test_a_tag_key_ssm_targets_refuse_is_refused_with_the_reason(key: str) -> None:
    """EC2 allows '+' in a tag key (and more); SSM's Targets do not: every push of the repository would fail to send.
    The deploy error says why, in one line."""
    text = json.dumps({"ml/trainer": {key: "gpu"}})

    with pytest.raises(SelectorError) as raised:
        parse_node_selectors(text, WATCHED, "eks:cluster-name")

    message = str(raised.value)
    assert "\n" not in message.replace(repr("\n"), "")
    assert "SSM Run Command's Targets refuse" in message or "1 to 128 characters" in message
    assert "rename the tag" in message


@pytest.mark.parametrize(
    "key",
    ["karpenter.sh/nodepool", "kubernetes.io/cluster/ml-prod", "aws:autoscaling:groupName", "team name", "équipe=a@b"],
)
def test_tag_keys_ssm_targets_accept_are_accepted(key: str) -> None:
    selectors = parse_node_selectors(json.dumps({"ml/trainer": {key: ["gpu+a", "gpu b"]}}), WATCHED, "x")

    assert selectors == {"ml/trainer": {key: ("gpu+a", "gpu b")}}


def _ssm_targets_model() -> Any:
    model = botocore.session.get_session().get_service_model("ssm")
    return model.operation_model("SendCommand").input_shape.members["Targets"]


def test_the_key_rule_is_ssms_own_pattern_and_limits() -> None:
    """Read from the installed botocore's SSM model: the number of targets and values, the key's length and pattern
    (compared character by character over the Basic Multilingual Plane, with the `regex` module, which reads
    \\p{...} as SSM's Java does)."""
    targets = _ssm_targets_model()
    key = targets.member.members["Key"]
    assert targets.metadata["max"] == MAX_CONDITIONS + 1
    assert targets.member.members["Values"].metadata["max"] == MAX_VALUES
    assert len("tag:") + MAX_KEY_LENGTH <= key.metadata["max"]
    tag_pattern, *_other_alternatives = key.metadata["pattern"].split("|")
    assert tag_pattern == r"^[\p{L}\p{Z}\p{N}_.:/=\-@]*$"
    ssm = regex.compile(tag_pattern)

    differ = [
        hex(point)
        for point in range(0x10000)
        if unicodedata.category(chr(point)) != "Cn"
        and bool(ssm.fullmatch(f"tag:a{chr(point)}")) != (target_key_problem(f"a{chr(point)}") is None)
    ]
    assert differ == []


@pytest.mark.parametrize("key", ["eks+cluster-name", "eks:cluster name!"])
def test_settings_refuse_a_node_tag_key_ssm_targets_refuse(key: str) -> None:
    with pytest.raises(ValidationError, match="SSM Run Command's Targets refuse"):
        CommandSettings.from_env({**DEPLOYMENT_ENV, "NODE_TAG_KEY": key})
