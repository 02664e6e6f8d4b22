"""ECR: the images of a repository."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code
from eks_prefetch.aws.errors import RepositoryNotFoundError


def describe_tagged_images(repository: str, ecr: Any = None) -> Iterator[Mapping[str, Any]]:
    """Every tagged image of a repository, page by page (ECR neither sorts nor returns more than 1,000 a page).
    Raises RepositoryNotFoundError."""
    paginator = (ecr or clients.client("ecr")).get_paginator("describe_images")
    pages = paginator.paginate(
        repositoryName=repository,
        filter={"tagStatus": "TAGGED"},
        PaginationConfig={"PageSize": 1000},
    )
    try:
        for page in pages:
            yield from page["imageDetails"]
    except ClientError as error:
        if error_code(error) == "RepositoryNotFoundException":
            raise RepositoryNotFoundError(repository) from error
        raise


def image_exists(repository: str, digest: str, ecr: Any = None) -> bool:
    """Whether the repository holds an image with this digest, tagged or not."""
    return digest in pushed_at(repository, [digest], ecr)


# DescribeImages takes at most 100 image ids a request.
MAX_IMAGE_IDS = 100


def pushed_at(repository: str, digests: Iterable[str], ecr: Any = None) -> dict[str, datetime]:
    """When each image of the repository with one of these digests was pushed, tagged or not (DescribeImages by
    image id, 100 a request). A digest the repository does not hold (deleted since) is left out. Raises
    RepositoryNotFoundError."""
    client = ecr or clients.client("ecr")
    wanted = sorted(set(digests))
    found: dict[str, datetime] = {}
    for start in range(0, len(wanted), MAX_IMAGE_IDS):
        found.update(_pushed_at(client, repository, wanted[start : start + MAX_IMAGE_IDS]))
    return found


def _pushed_at(client: Any, repository: str, digests: list[str]) -> dict[str, datetime]:
    try:
        details = client.describe_images(
            repositoryName=repository, imageIds=[{"imageDigest": digest} for digest in digests]
        )["imageDetails"]
    except ClientError as error:
        if error_code(error) == "RepositoryNotFoundException":
            raise RepositoryNotFoundError(repository) from error
        if error_code(error) != "ImageNotFoundException":
            raise
        # One missing id fails the whole request: halved until the missing one is alone (few calls for few).
        if len(digests) == 1:
            return {}
        half = len(digests) // 2
        return {**_pushed_at(client, repository, digests[:half]), **_pushed_at(client, repository, digests[half:])}
    return {detail["imageDigest"]: detail["imagePushedAt"] for detail in details if detail.get("imagePushedAt")}


def repository_images(repository: str, ecr: Any = None) -> list[Mapping[str, Any]] | None:
    """Every tagged image of a repository, or None if the repository does not exist."""
    try:
        return list(describe_tagged_images(repository, ecr=ecr))
    except RepositoryNotFoundError:
        return None


# What BatchGetImage may answer with: an index is returned as such, so its platforms can be read.
_INDEX_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def image_manifests(repository: str, digests: Iterable[str], ecr: Any = None) -> dict[str, Mapping[str, Any]]:
    """Digest -> the image's manifest as stored (an index stays an index), 100 digests a request; a digest the
    repository does not hold is left out. Raises RepositoryNotFoundError."""
    client = ecr or clients.client("ecr")
    wanted = sorted(set(digests))
    found: dict[str, Mapping[str, Any]] = {}
    for start in range(0, len(wanted), MAX_IMAGE_IDS):
        try:
            images = client.batch_get_image(
                repositoryName=repository,
                imageIds=[{"imageDigest": digest} for digest in wanted[start : start + MAX_IMAGE_IDS]],
                acceptedMediaTypes=[*_INDEX_MEDIA_TYPES, *_MANIFEST_MEDIA_TYPES],
            )["images"]
        except ClientError as error:
            if error_code(error) == "RepositoryNotFoundException":
                raise RepositoryNotFoundError(repository) from error
            raise
        for image in images:
            digest = image.get("imageId", {}).get("imageDigest")
            try:
                manifest = json.loads(image.get("imageManifest") or "")
            except ValueError:
                continue
            if digest and isinstance(manifest, dict):
                found[digest] = manifest
    return found
