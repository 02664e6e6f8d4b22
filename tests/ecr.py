"""Images in moto's ECR with chosen digests and push times (moto stamps "now" and derives colliding digests)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import boto3
from moto.ecr.models import ecr_backends

from tests.conftest import ACCOUNT, REGION


def digest_of(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def manifest_of(seed: str) -> str:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 7023,
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


def push_image(repository: str, seed: str, *, tag: str | None, pushed_at: datetime) -> str:
    """Put an image (tagged or not) and set its push time; returns its digest."""
    digest = digest_of(seed)
    kwargs = {"repositoryName": repository, "imageManifest": manifest_of(seed), "imageDigest": digest}
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
