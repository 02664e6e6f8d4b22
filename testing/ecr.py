"""Images in moto's ECR with chosen digests and push times (moto stamps "now" and derives colliding digests), and
ECR's paging, which moto does not do."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.ecr.models import Image, ecr_backends

from testing.answers import answer_from
from testing.environment import ACCOUNT, REGION


def digest_of(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def manifest_of(seed: str, size: int = 7023) -> str:
    """An image manifest; ``size``: what moto's DescribeImages gives as the image's imageSizeInBytes (the config's
    size, in moto)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": size,
                "digest": digest_of(f"config-{seed}"),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": 32654,
                    "digest": digest_of(f"layer-{seed}"),
                }
            ],
        }
    )


def create_repository(name: str) -> None:
    boto3.client("ecr").create_repository(repositoryName=name)


def push_image(repository: str, seed: str, *, tag: str | None, pushed_at: datetime, size: int = 7023) -> str:
    """Put an image (tagged or not, of ``size`` bytes as DescribeImages gives it) and set its push time; returns its
    digest."""
    digest = digest_of(seed)
    kwargs = {"repositoryName": repository, "imageManifest": manifest_of(seed, size), "imageDigest": digest}
    if tag is not None:
        kwargs["imageTag"] = tag
    boto3.client("ecr").put_image(**kwargs)
    set_pushed_at(repository, digest, pushed_at)
    return digest


def set_pushed_at(repository: str, digest: str, pushed_at: datetime) -> None:
    repo = ecr_backends[ACCOUNT][REGION].repositories[repository]
    for image in repo.images:
        if image.image_digest == digest:
            image.image_pushed_at = int(pushed_at.timestamp())


def at(minute: int) -> datetime:
    """A fixed point in time, minute by minute, so that tests order pushes explicitly."""
    return datetime(2026, 11, 1, 12, 0, tzinfo=UTC).replace(minute=minute % 60, hour=12 + minute // 60)


def fill_repository(name: str, images: int) -> str:
    """A repository with ``images`` tagged images, one a second apart; returns the newest one's digest.

    Straight into moto's repository: its PutImage scans the repository on every put, too slow for 5,000."""
    create_repository(name)
    repository = ecr_backends[ACCOUNT][REGION].repositories[name]
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
    digest = ""
    for number in range(images):
        digest = digest_of(f"{name}-{number}")
        image = Image(ACCOUNT, f"v{number}", manifest_of(f"{name}-{number}"), name, digest=digest)
        image.image_pushed_at = start + number
        repository.images.append(image)
    return digest


def page_describe_images_as_ecr_does() -> None:
    """moto returns every image in one page whatever maxResults asks; ECR returns at most 1,000 a page. Listing
    calls are served from moto's repository in ECR's pages, so that the page count is what ECR would make."""

    def describe(params: Mapping[str, Any]) -> dict[str, Any] | None:
        if "imageIds" in params:
            return None
        repository = ecr_backends[ACCOUNT][REGION].repositories[params["repositoryName"]]
        tagged = [image for image in repository.images if image.image_tag]
        start = int(params.get("nextToken", "0"))
        end = start + min(params.get("maxResults", 100), 1000)
        page: dict[str, Any] = {
            "imageDetails": [
                {
                    "registryId": ACCOUNT,
                    "repositoryName": params["repositoryName"],
                    "imageDigest": image.image_digest,
                    "imageTags": [image.image_tag],
                    "imagePushedAt": datetime.fromtimestamp(image.image_pushed_at, UTC),
                }
                for image in tagged[start:end]
            ]
        }
        if end < len(tagged):
            page["nextToken"] = str(end)
        return page

    answer_from("ecr", "DescribeImages", describe, "ecr-pages")
