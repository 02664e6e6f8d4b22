"""Which image of a repository to prefetch: the one implementation every path uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage, pick_newest
from eks_prefetch.settings import Settings


def resolve_newest(
    repository: str,
    settings: Settings,
    seen: dict[str, datetime] | None = None,
) -> ResolvedImage | None:
    """The newest image of the repository whose tag matches the filter, or None if it has none.

    ``seen``, if given, receives the push time of every tagged image listed, by digest (from the same listing: no
    extra call). Raises the ECR client's RepositoryNotFoundException for a repository that does not exist.
    """
    details = aws.describe_tagged_images(repository)
    if seen is not None:
        details = _noting(details, seen)
    return pick_newest(details, settings.tag_pattern, settings.region)


def _noting(details: Iterable[Mapping[str, Any]], seen: dict[str, datetime]) -> Iterator[Mapping[str, Any]]:
    for detail in details:
        seen[detail["imageDigest"]] = detail["imagePushedAt"]
        yield detail
