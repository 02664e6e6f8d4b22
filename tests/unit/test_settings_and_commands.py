"""Settings validation and the SendCommand request (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import DEFAULT_CONNECTIONS, push_time_ms
from eks_prefetch.prefetch.commands import (
    FASTEST_PREFETCH_TO_KUBELET,
    KUBELET_PULL_BYTES,
    KUBELET_PULL_SECONDS,
    PULL_BYTES_PER_SECOND,
    PULL_FIXED_SECONDS,
    image_bytes,
    is_new_node_comment,
    launch_time_of,
    pull_seconds,
    pulls_at_once,
    send_command_request,
    with_comment_marker,
)
from eks_prefetch.settings import PushSettings
from harness import template as cfn
from testing.environment import DEPLOYMENT_ENV


def settings(**overrides: str) -> PushSettings:
    return PushSettings.from_env({**DEPLOYMENT_ENV, **overrides})


PUSHED = datetime(2026, 11, 1, 12, 30, 15, 250000, tzinfo=UTC)


def image(repository: str, tag: str, seed: str, size: int | None = 3_500_000_000) -> ResolvedImage:
    return ResolvedImage(
        registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",
        repository=repository,
        digest="sha256:" + seed * 64,
        tag=tag,
        pushed_at=PUSHED,
        size_bytes=size,
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
        {"MAX_CONCURRENCY": "1000000"},
        {"REGISTRY_BANDWIDTH_GBPS": "0"},
        {"REGISTRY_BANDWIDTH_GBPS": "nan"},
        {"REGISTRY_BANDWIDTH_GBPS": "fast"},
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
    # 50 Gbit/s (the default budget) over what one node's prefetch of 3.5 GB asks: 97 MB/s once past its fixed 0.2 s.
    assert request["MaxConcurrency"] == "64"
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
    """The default rollout (MaxConcurrency from the registry path's budget) is what the coverage benchmark measures
    (bench/coverage.py reads CommandSettings): the template, the settings and that benchmark must say the same."""
    parameters = cfn.template()["Parameters"]
    assert PushSettings.model_fields["max_concurrency"].default == parameters["MaxConcurrency"]["Default"] == ""
    assert (
        PushSettings.model_fields["registry_bandwidth_gbps"].default == parameters["RegistryBandwidthGbps"]["Default"]
    )
    assert PushSettings.model_fields["max_errors"].default == parameters["MaxErrors"]["Default"]


def test_push_times_go_with_their_images_in_order_to_the_millisecond():
    """The node orders two pushes of a tag by these: never by the commands' order, nor the images' build times."""
    older = ResolvedImage("r", "ml/trainer", "sha256:" + "a" * 64, "v1", datetime(2026, 11, 1, 12, 0, 0, 1000, UTC))
    newer = ResolvedImage("r", "ml/inference", "sha256:" + "b" * 64, "v2", datetime(2026, 11, 1, 12, 0, 0, 2000, UTC))
    naive = ResolvedImage("r", "ml/tool", "sha256:" + "c" * 64, "v3", datetime(2026, 11, 1, 12, 0, 0, 3000))

    request = send_command_request([newer, older, naive], settings(), instance_ids=["i-0123456789abcdef0"])

    assert request["Parameters"]["pushedAt"] == ["1793534400002,1793534400001,1793534400003"]


# --- MaxConcurrency from the registry path's budget -----------------------------------------------------------------

SIZES = [1, 7_023, 50_000_000, 500_000_000, 3_500_000_000, 10_000_000_000, 80_000_000_000]


@pytest.mark.parametrize("gbps", ["1", "5", "50", "400", "100000"])
@pytest.mark.parametrize("size", SIZES)
def test_pulls_at_once_fill_the_budget_without_going_over(gbps: str, size: int) -> None:
    """Whatever the image and the budget: the pulls at once ask at most the budget (by the rule's model of a pull),
    and one pull more would ask more than it (unless one pull alone is over it, or SSM's limit is reached)."""
    loaded = settings(REGISTRY_BANDWIDTH_GBPS=gbps)
    images = [image("ml/trainer", "v2", "a", size)]
    one_pull = image_bytes(images) / pull_seconds(images)
    budget = float(gbps) * 1e9 / 8

    count = pulls_at_once(images, loaded)

    assert count == 1 or count * one_pull <= budget
    assert count == 999_999 or (count + 1) * one_pull > budget
    assert send_command_request(images, loaded)["MaxConcurrency"] == str(count)


def test_the_concurrency_follows_the_bytes_a_command_sends() -> None:
    """Large images pull at a node's full rate: the budget over it. A small image spends more of its time in fixed
    work, so more of them fit; several images of one command are one node's run, their bytes over its time."""
    loaded = settings()
    counts = {size: pulls_at_once([image("ml/trainer", "v2", "a", size)], loaded) for size in SIZES[2:6]}

    assert counts == {50_000_000: 89, 500_000_000: 66, 3_500_000_000: 64, 10_000_000_000: 64}
    assert int(6.25e9 / PULL_BYTES_PER_SECOND) == 64
    pair = [image("ml/trainer", "v2", "a", 500_000_000), image("ml/inference", "v1", "b", 500_000_000)]
    assert pulls_at_once(pair, loaded) == 66
    # An image whose size ECR does not give counts as a large one.
    assert pulls_at_once([image("ml/trainer", "v2", "a", None)], loaded) == 64


@pytest.mark.parametrize("size", SIZES[2:])
def test_a_pull_is_budgeted_as_the_fastest_measured_prefetch(size: int) -> None:
    """The prefetch pulls ~2-3x faster than kubelet (bench section 9): a pull is budgeted at 3.5 GB over kubelet's 109 s
    times the fastest measured prefetch/kubelet ratio, a few percent above, so that the pulls at once stay within the
    budget even when every one pulls as fast as the fastest shape did."""
    fastest = KUBELET_PULL_BYTES / (KUBELET_PULL_SECONDS * FASTEST_PREFETCH_TO_KUBELET)
    loaded = settings()
    images = [image("ml/trainer", "v2", "a", size)]

    assert fastest <= PULL_BYTES_PER_SECOND <= 1.05 * fastest
    assert PULL_BYTES_PER_SECOND > 2.5 * KUBELET_PULL_BYTES / KUBELET_PULL_SECONDS
    # Each pull as fast as the fastest measured, after the rule's fixed work per image.
    one_pull = size / (PULL_FIXED_SECONDS + size / fastest)
    assert pulls_at_once(images, loaded) * one_pull <= loaded.registry_bytes_per_second


def test_the_budget_scales_the_concurrency_and_a_share_of_it_scales_it_down() -> None:
    images = [image("ml/trainer", "v2", "a")]
    assert pulls_at_once(images, settings(REGISTRY_BANDWIDTH_GBPS="100")) == 129
    assert pulls_at_once(images, settings(REGISTRY_BANDWIDTH_GBPS="5")) == 6
    assert pulls_at_once(images, settings(REGISTRY_BANDWIDTH_GBPS="1")) == 1  # two would ask 193 of its 125 MB/s
    assert pulls_at_once(images, settings(), share=0.25) == 16
    assert (
        send_command_request(images, settings(), instance_ids=["i-0123456789abcdef0"], budget_share=0.25)[
            "MaxConcurrency"
        ]
        == "16"
    )


@pytest.mark.parametrize("explicit", ["100", "10%", "1", "100%"])
def test_an_explicit_max_concurrency_wins_for_every_command(explicit: str) -> None:
    loaded = settings(MAX_CONCURRENCY=explicit, REGISTRY_BANDWIDTH_GBPS="1")
    images = [image("ml/trainer", "v2", "a", 7_023)]

    assert send_command_request(images, loaded)["MaxConcurrency"] == explicit
    assert (
        send_command_request(images, loaded, instance_ids=["i-0123456789abcdef0"], budget_share=0.1)["MaxConcurrency"]
        == explicit
    )


def test_the_new_node_comment_carries_the_launch_time_so_the_status_function_needs_no_ec2_call() -> None:
    images = [image(f"team-{n}/very-long-repository-name", "2026.11.29-build", "c") for n in range(6)]
    launched = datetime(2026, 11, 29, 20, 7, 5, tzinfo=UTC)
    request = send_command_request(
        images, settings(), instance_ids=["i-0123456789abcdef0"], new_node=True, launched=launched
    )

    marked = with_comment_marker(request, "evt-0123456789abcdef")["Comment"]

    assert marked.startswith("new node launched 20261129T200705Z: prefetch team-0/")
    assert len(marked) == 100 and marked.endswith("... [evt-0123456789abcdef]")
    assert is_new_node_comment(marked)
    assert launch_time_of(marked) == launched
    # A command sent before the Comment carried it: still the new-node path's, with no launch time.
    assert is_new_node_comment("new node: prefetch ml/trainer:v1 [evt-0123456789abcdef]")
    assert launch_time_of("new node: prefetch ml/trainer:v1") is None
    assert launch_time_of("prefetch ml/trainer:v1") is None
    assert not is_new_node_comment("prefetch new node: x")
