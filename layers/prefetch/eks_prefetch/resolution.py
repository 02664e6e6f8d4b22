"""Which image of a repository to prefetch: the one implementation every path uses."""

from __future__ import annotations

from typing import Any

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage, pick_newest
from eks_prefetch.settings import Settings


def resolve_newest(repository: str, settings: Settings, ecr: Any = None) -> ResolvedImage | None:
    """The newest image of the repository whose tag matches the filter, or None if it has none.

    Raises the ECR client's RepositoryNotFoundException for a repository that does not exist.
    """
    return pick_newest(aws.describe_tagged_images(repository, ecr=ecr), settings.tag_pattern, settings.region)
