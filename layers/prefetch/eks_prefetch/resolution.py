"""Which image of a repository to prefetch: the one implementation every path uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage, pick_newest
from eks_prefetch.settings import Settings


def resolve_newest(
    repository: str,
    settings: Settings,
    seen_digests: set[str] | None = None,
) -> ResolvedImage | None:
    """The newest image of the repository whose tag matches the filter, or None if it has none.

    ``seen_digests``, if given, receives the digest of every tagged image listed. Raises the ECR client's
    RepositoryNotFoundException for a repository that does not exist.
    """
    details = aws.describe_tagged_images(repository)
    if seen_digests is not None:
        details = _noting_digests(details, seen_digests)
    return pick_newest(details, settings.tag_pattern, settings.region)


def _noting_digests(details: Iterable[Mapping[str, Any]], seen: set[str]) -> Iterator[Mapping[str, Any]]:
    for detail in details:
        seen.add(detail["imageDigest"])
        yield detail
