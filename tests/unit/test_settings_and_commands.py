"""Settings validation and the SendCommand request (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import DEFAULT_CONNECTIONS, push_time_ms
from eks_prefetch.prefetch.commands import is_new_node_comment, send_command_request, with_comment_marker
from eks_prefetch.settings import PushSettings
from harness import template as cfn
from testing.environment import DEPLOYMENT_ENV


def settings(**overrides: str) -> PushSettings:
    return PushSettings.from_env({**DEPLOYMENT_ENV, **overrides})


PUSHED = datetime(2026, 11, 1, 12, 30, 15, 250000, tzinfo=UTC)


def image(repository: str, tag: str, seed: str) -> ResolvedImage:
    return ResolvedImage(
        registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",
        repository=repository,
        digest="sha256:" + seed * 64,
        tag=tag,
        pushed_at=PUSHED,
    )


def test_settings_from_the_template_environment():
    loaded = settings()

    assert loaded.repository_names == ("ml/trainer", "ml/inference")
    assert loaded.pin_images is True
    assert loaded.tag_pattern.search("v1") and not loaded.tag_pattern.search("sha256-abc.sig")


@pytest.mark.parametrize(
    "overrides",
    [
        {"REPOSITORY_NAMES": ""},
        {"REPOSITORY_NAMES": "ML/Trainer"},
        {"REPOSITORY_NAMES": "ok,bad name"},
        {"TAG_FILTER": "(unclosed"},
        {"MAX_ERRORS": "lots"},
        {"MAX_CONCURRENCY": "0"},
        {"DELIVERY_TIMEOUT_SECONDS": "10"},
        {"PIN_IMAGES": "maybe"},
        {"CLUSTER_NAME": ""},
    ],
)
def test_bad_configuration_fails_at_start_with_the_variable_named(overrides):
    with pytest.raises(ValidationError):
        settings(**overrides)


def test_missing_required_variable_is_an_error():
    env = dict(DEPLOYMENT_ENV)
    del env["DOCUMENT_NAME"]
    with pytest.raises(ValidationError, match="DOCUMENT_NAME"):
        PushSettings.from_env(env)


def test_fleet_request_targets_the_tag_and_sets_every_safety_knob():
    request = send_command_request([image("ml/trainer", "v2", "a")], settings(MAX_ERRORS="3", PIN_IMAGES="false"))

    assert request["Targets"] == [{"Key": "tag:eks:cluster-name", "Values": ["ml-prod"]}]
    assert "InstanceIds" not in request
    assert request["MaxErrors"] == "3"
    assert request["MaxConcurrency"] == "100"
    assert request["DocumentVersion"] == "1"
    assert request["Parameters"] == {
        # The pod's tag and the digest: the node pulls the digest and names the image by the tag too.
        "images": ["123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/trainer:v2@sha256:" + "a" * 64],
        # When ECR received the push, in ms: the node moves the tag, and keeps pins, by it.
        "pushedAt": [str(push_time_ms(PUSHED))],
        "pin": ["false"],
        "keepPinned": ["2"],
        "maxDiskUsagePercent": ["80"],
        "pullTimeoutSeconds": ["1800"],
        "connections": [str(DEFAULT_CONNECTIONS)],
        "executionTimeout": ["3600"],
    }


def test_instance_request_lists_every_image_once():
    images = [image("ml/trainer", "v2", "a"), image("ml/inference", "v9", "b")]

    request = send_command_request(images, settings(), instance_ids=["i-0123456789abcdef0"])

    assert request["InstanceIds"] == ["i-0123456789abcdef0"]
    assert "Targets" not in request
    assert request["Parameters"]["images"][0].split(",") == [i.reference for i in images]
    assert request["Comment"] == "prefetch ml/trainer:v2, ml/inference:v9"


def test_comment_stays_within_the_ssm_limit():
    images = [image(f"team-{n}/very-long-repository-name", "2026.11.29-build", "c") for n in range(6)]

    comment = send_command_request(images, settings(), instance_ids=["i-0123456789abcdef0"])["Comment"]

    assert len(comment) == 100
    assert comment.endswith("...")


def test_the_new_node_paths_comment_keeps_its_mark_when_shortened_and_marked():
    """The mark opens the Comment: shortening to SSM's limit and the event marker both work at its end."""
    images = [image(f"team-{n}/very-long-repository-name", "2026.11.29-build", "c") for n in range(6)]
    request = send_command_request(images, settings(), instance_ids=["i-0123456789abcdef0"], new_node=True)

    marked = with_comment_marker(request, "evt-0123456789abcdef")["Comment"]

    assert len(marked) == 100
    assert marked.startswith("new node: prefetch team-0/very-long-repository-name:2026.11.29-build")
    assert marked.endswith("... [evt-0123456789abcdef]")
    assert is_new_node_comment(marked)
    assert not is_new_node_comment(send_command_request(images[:1], settings())["Comment"])
    assert not is_new_node_comment(None)


def test_a_new_node_command_by_tag_is_a_programming_error():
    with pytest.raises(ValueError, match="names its node"):
        send_command_request([image("ml/trainer", "v2", "a")], settings(), new_node=True)


def test_no_images_is_a_programming_error():
    with pytest.raises(ValueError):
        send_command_request([], settings())


def test_the_safety_defaults_are_the_templates() -> None:
    """MaxConcurrency's default was chosen from the coverage benchmark (bench/coverage.py reads it from
    CommandSettings): the template, the settings and that benchmark must say the same."""
    parameters = cfn.template()["Parameters"]
    assert PushSettings.model_fields["max_concurrency"].default == parameters["MaxConcurrency"]["Default"] == "100"
    assert PushSettings.model_fields["max_errors"].default == parameters["MaxErrors"]["Default"]


def test_push_times_go_with_their_images_in_order_to_the_millisecond():
    """The node orders two pushes of a tag by these: never by the commands' order, nor the images' build times."""
    older = ResolvedImage("r", "ml/trainer", "sha256:" + "a" * 64, "v1", datetime(2026, 11, 1, 12, 0, 0, 1000, UTC))
    newer = ResolvedImage("r", "ml/inference", "sha256:" + "b" * 64, "v2", datetime(2026, 11, 1, 12, 0, 0, 2000, UTC))
    naive = ResolvedImage("r", "ml/tool", "sha256:" + "c" * 64, "v3", datetime(2026, 11, 1, 12, 0, 0, 3000))

    request = send_command_request([newer, older, naive], settings(), instance_ids=["i-0123456789abcdef0"])

    assert request["Parameters"]["pushedAt"] == ["1793534400002,1793534400001,1793534400003"]
