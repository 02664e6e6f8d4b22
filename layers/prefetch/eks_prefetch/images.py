"""Image references and the choice of the newest image: pure, no AWS calls."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eks_prefetch import node_contract

# ECR repository names: lowercase path segments (the registry's own rule).
REPOSITORY_PATTERN = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
# Tags as ECR accepts them: the OCI character rule, but up to 300 characters (OCI says 128). Images are pulled by
# digest, so a tag is only matched against the filter and shown, never sent to a node.
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,299}"
# The digest rule, as the node script checks it.
DIGEST_PATTERN = node_contract.DIGEST_PATTERN

# Config media types of runnable images; any other artifact type (signatures, SBOMs, Helm charts) is not pulled.
IMAGE_CONFIG_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.image.config.v1+json",
    }
)


def is_image_artifact(artifact_media_type: str | None) -> bool:
    """True unless the artifact type is known and is not a container image config.

    Indexes (multi-arch images) carry no artifact type, and are images.
    """
    return artifact_media_type is None or artifact_media_type in IMAGE_CONFIG_MEDIA_TYPES


def partition_dns_suffix(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def ecr_registry_host(account_id: str, region: str) -> str:
    if not re.fullmatch(r"[0-9]{12}", account_id):
        raise ValueError(f"not an AWS account id: {account_id!r}")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]", region):
        raise ValueError(f"not an AWS region: {region!r}")
    return f"{account_id}.dkr.ecr.{region}.{partition_dns_suffix(region)}"


@dataclass(frozen=True, order=True)
class ImageCandidate:
    """One tagged image of a repository, as the registry describes it."""

    pushed_at: datetime
    digest: str
    tags: tuple[str, ...]
    registry_id: str
    repository: str
    size_bytes: int | None = None

    @classmethod
    def from_image_detail(cls, detail: Mapping[str, Any]) -> ImageCandidate:
        return cls(
            pushed_at=detail["imagePushedAt"],
            digest=detail["imageDigest"],
            tags=tuple(sorted(detail.get("imageTags") or ())),
            registry_id=detail["registryId"],
            repository=detail["repositoryName"],
            size_bytes=detail.get("imageSizeInBytes"),
        )


@dataclass(frozen=True)
class ResolvedImage:
    """The image to prefetch: pulled by digest, named by its tag on the node too (kubelet asks for the pod's tag)."""

    registry: str
    repository: str
    digest: str
    tag: str
    pushed_at: datetime
    # What a node downloads for it, as ECR gives it (compressed layers; an index: its largest manifest); None: not
    # known. How many nodes pull it at once follows from it (prefetch/commands.py).
    size_bytes: int | None = None

    @property
    def reference(self) -> str:
        """What a node is sent: ``registry/repository:tag@digest`` (``@digest`` alone for a tag outside OCI's
        grammar). The node pulls the digest only; the tag names it, so a pod naming the tag finds it."""
        return node_contract.reference(self.registry, self.repository, self.digest, self.tag)

    @property
    def display_name(self) -> str:
        return f"{self.repository}:{self.tag}"


def matching_tags(tags: Iterable[str], tag_pattern: re.Pattern[str]) -> list[str]:
    return sorted(tag for tag in tags if tag_pattern.search(tag))


def pick_newest(
    image_details: Iterable[Mapping[str, Any]],
    tag_pattern: re.Pattern[str],
    region: str,
) -> ResolvedImage | None:
    """The most recently pushed image with a tag matching the filter.

    Ties on push time are broken by digest, so that every caller, whatever order ECR pages come in, picks the same
    image. Untagged images and non-image artifacts never qualify.
    """
    newest: ImageCandidate | None = None
    for detail in image_details:
        if not detail.get("imageTags") or not is_image_artifact(detail.get("artifactMediaType")):
            continue
        candidate = ImageCandidate.from_image_detail(detail)
        if not matching_tags(candidate.tags, tag_pattern):
            continue
        if newest is None or (candidate.pushed_at, candidate.digest) > (newest.pushed_at, newest.digest):
            newest = candidate
    if newest is None:
        return None
    return ResolvedImage(
        registry=ecr_registry_host(newest.registry_id, region),
        repository=newest.repository,
        digest=newest.digest,
        # The last matching tag in sort order, so the name shown is stable too.
        tag=matching_tags(newest.tags, tag_pattern)[-1],
        pushed_at=newest.pushed_at,
        size_bytes=newest.size_bytes,
    )
