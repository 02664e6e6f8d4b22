"""Which image of a repository to prefetch: the one implementation every path uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage, pick_newest
from eks_prefetch.settings import ClusterSettings

logger = Logger(child=True)


def resolve_newest(
    repository: str,
    settings: ClusterSettings,
    seen: dict[str, datetime] | None = None,
) -> ResolvedImage | None:
    """The newest image of the repository whose tag matches the filter, or None if it has none.

    ``seen``, if given, receives the push time of every tagged image listed, by digest (from the same listing: no
    extra call). Raises RepositoryNotFoundError for a repository that does not exist.
    """
    details = aws.ecr.describe_tagged_images(repository)
    if seen is not None:
        details = _noting(details, seen)
    return pick_newest(details, settings.tag_pattern, settings.region)


def _noting(details: Iterable[Mapping[str, Any]], seen: dict[str, datetime]) -> Iterator[Mapping[str, Any]]:
    for detail in details:
        seen[detail["imageDigest"]] = detail["imagePushedAt"]
        yield detail


@dataclass(frozen=True)
class Listing:
    """One resolution of a repository: its newest matching image, and when each tagged image was pushed."""

    exists: bool
    newest: ResolvedImage | None = None
    pushed: Mapping[str, datetime] = field(default_factory=dict)


@dataclass
class NewestImages:
    """The newest image of each watched repository, resolved once per repository for ``lifetime_seconds``.

    The caller owns it and decides its scope: the push path one event, the node-launch path one batch (a scale-out's
    records share one resolution, never longer: a node registering just after a push must see it), the status
    function a warm container for a few seconds (a push's burst of status events), the sweep one run.
    ``lifetime_seconds`` None keeps a resolution as long as the object lives.
    """

    settings: ClusterSettings
    lifetime_seconds: float | None = None
    # A report of a digest that is not the cached newest may follow a push the cache predates: ``get_fresh`` lists
    # again, at most this often.
    refresh_floor_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _listings: dict[str, tuple[float, Listing]] = field(default_factory=dict, repr=False)
    # Push times of digests the tagged listings do not show (None: not in the repository), by (repository, digest).
    _untagged: dict[tuple[str, str], datetime | None] = field(default_factory=dict, repr=False)

    def listing(self, repository: str) -> Listing:
        cached = self._listings.get(repository)
        if cached is not None and (self.lifetime_seconds is None or self.clock() - cached[0] < self.lifetime_seconds):
            return cached[1]
        listing = self._resolve(repository)
        self._listings[repository] = (self.clock(), listing)
        return listing

    def get(self, repository: str) -> ResolvedImage | None:
        """The newest image; None for a repository not watched, missing, or with no matching image."""
        return self.listing(repository).newest

    def get_fresh(self, repository: str) -> ResolvedImage | None:
        """As ``get``, but from a listing at most ``refresh_floor_seconds`` old."""
        cached = self._listings.get(repository)
        if cached is not None and self.clock() - cached[0] >= self.refresh_floor_seconds:
            del self._listings[repository]
        return self.get(repository)

    def pushed_at(self, repository: str, digest: str) -> datetime | None:
        """When a tagged image of the repository was pushed; None if the listing does not show it."""
        return self.listing(repository).pushed.get(digest)

    def push_time(self, repository: str, digest: str) -> datetime | None:
        """When the image was pushed, tagged or not; None if ECR does not hold it (any more)."""
        return self.push_times(repository, [digest]).get(digest)

    def push_times(self, repository: str, digests: Iterable[str]) -> dict[str, datetime]:
        """When each of these images of the repository was pushed, tagged or not: from the tagged listing, and for
        the digests it does not show (an image whose tag moved away, or that never had one), by image id (one
        DescribeImages per 100 such digests, each asked once in this object's life). A digest the repository does
        not hold is left out."""
        digests = set(digests)
        pushed = self.listing(repository).pushed
        times = {digest: pushed[digest] for digest in digests if digest in pushed}
        unknown = {digest for digest in digests if digest not in pushed and (repository, digest) not in self._untagged}
        if unknown and repository in self.settings.repository_names:
            try:
                found = aws.ecr.pushed_at(repository, unknown)
            except aws.RepositoryNotFoundError:
                found = {}
            self._untagged.update({(repository, digest): found.get(digest) for digest in unknown})
        times.update({digest: at for digest in digests if (at := self._untagged.get((repository, digest))) is not None})
        return times

    def every_repository(self, repositories: Iterable[str] | None = None) -> list[ResolvedImage]:
        """The newest image of every watched repository (or of these); a missing or empty repository contributes
        nothing."""
        images = []
        for repository in self.settings.repository_names if repositories is None else repositories:
            listing = self.listing(repository)
            if listing.newest is not None:
                images.append(listing.newest)
            elif listing.exists:
                logger.info("no tagged image matches the filter", extra={"repository": repository})
        return images

    def _resolve(self, repository: str) -> Listing:
        if repository not in self.settings.repository_names:
            return Listing(exists=False)
        pushed: dict[str, datetime] = {}
        try:
            newest = resolve_newest(repository, self.settings, seen=pushed)
        except aws.RepositoryNotFoundError:
            # One deleted repository must not keep the others from the nodes.
            logger.warning("watched repository does not exist", extra={"repository": repository})
            return Listing(exists=False)
        return Listing(exists=True, newest=newest, pushed=pushed)
