"""Image references and the choice of the newest image (pure logic)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from eks_prefetch.images import ecr_registry_host, is_image_artifact, pick_newest

T0 = datetime(2026, 11, 1, tzinfo=UTC)
EVERY_TAG = re.compile(r"^(?!sha256-).+$")
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64


def detail(digest: str, tags: list[str] | None, minutes: int, **extra: str) -> dict:
    item = {
        "registryId": "123456789012",
        "repositoryName": "ml/trainer",
        "imageDigest": digest,
        "imagePushedAt": T0 + timedelta(minutes=minutes),
        **extra,
    }
    if tags is not None:
        item["imageTags"] = tags
    return item


def test_newest_by_push_time_pulled_by_digest():
    images = [detail(DIGEST_A, ["v1"], 0), detail(DIGEST_B, ["v2"], 5), detail(DIGEST_C, ["v0"], 1)]

    newest = pick_newest(images, EVERY_TAG, "us-east-1")

    assert newest is not None
    assert newest.reference == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/trainer:v2@{DIGEST_B}"
    assert newest.display_name == "ml/trainer:v2"


def test_ties_break_on_digest_whatever_the_order():
    images = [detail(DIGEST_B, ["b"], 3), detail(DIGEST_C, ["c"], 3), detail(DIGEST_A, ["a"], 3)]

    picks = {
        pick_newest(order, EVERY_TAG, "us-east-1").digest for order in (images, images[::-1], images[1:] + images[:1])
    }

    assert picks == {DIGEST_C}


def test_untagged_missing_tags_and_filtered_tags_never_qualify():
    images = [
        detail(DIGEST_A, ["v1"], 0),
        detail(DIGEST_B, None, 9),  # imageTags absent
        detail(DIGEST_C, ["sha256-abc.sig"], 8),  # cosign signature tag
        detail("sha256:" + "d" * 64, [], 7),
    ]

    assert pick_newest(images, EVERY_TAG, "us-east-1").digest == DIGEST_A


def test_non_image_artifacts_never_qualify():
    images = [
        detail(DIGEST_A, ["v1"], 0, artifactMediaType="application/vnd.oci.image.config.v1+json"),
        detail(DIGEST_B, ["chart-1.0"], 5, artifactMediaType="application/vnd.cncf.helm.config.v1+json"),
    ]

    assert pick_newest(images, EVERY_TAG, "us-east-1").digest == DIGEST_A


def test_tag_filter_and_display_tag():
    semver = re.compile(r"^v[0-9]+\.[0-9]+\.[0-9]+$")
    images = [detail(DIGEST_A, ["v1.0.0", "latest", "stable"], 0), detail(DIGEST_B, ["nightly"], 5)]

    newest = pick_newest(images, semver, "us-east-1")

    assert newest.digest == DIGEST_A
    assert newest.tag == "v1.0.0"


def test_nothing_matches_gives_none():
    assert pick_newest([], EVERY_TAG, "us-east-1") is None
    assert pick_newest([detail(DIGEST_A, None, 0)], EVERY_TAG, "us-east-1") is None


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("us-east-1", "123456789012.dkr.ecr.us-east-1.amazonaws.com"),
        ("cn-north-1", "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
        ("cn-northwest-1", "123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn"),
        ("us-gov-west-1", "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com"),
    ],
)
def test_registry_host_per_partition(region, host):
    assert ecr_registry_host("123456789012", region) == host


@pytest.mark.parametrize(("account", "region"), [("12345", "us-east-1"), ("123456789012", "us-east-1;id")])
def test_registry_host_rejects_junk(account, region):
    with pytest.raises(ValueError):
        ecr_registry_host(account, region)


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        (None, True),
        ("application/vnd.docker.container.image.v1+json", True),
        ("application/vnd.dev.cosign.artifact.sig.v1+json", False),
        ("application/spdx+json", False),
    ],
)
def test_is_image_artifact(media_type, expected):
    assert is_image_artifact(media_type) is expected
