"""ECR push → one prefetch command for the whole fleet."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.events import EcrImageActionEvent
from eks_prefetch.images import is_image_artifact
from eks_prefetch.prefetch.commands import send_command_request
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.prefetch.sending import send_once
from eks_prefetch.settings import PushSettings

logger = Logger(child=True)


class PushedImageNotFoundError(RuntimeError):
    """The pushed digest is not in the repository (not visible yet, or deleted): fail, so that Lambda retries."""


@dataclass(frozen=True)
class PushOutcome:
    status: str  # sent | duplicate | ignored
    reason: str = ""
    image: str = ""
    command_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value}


def _ignored(reason: str, **log_fields: Any) -> PushOutcome:
    logger.info("push ignored", extra={"reason": reason, **log_fields})
    return PushOutcome(status="ignored", reason=reason)


def prefetch_pushed_image(
    event: EcrImageActionEvent,
    settings: PushSettings,
    *,
    lambda_context: LambdaContext | None = None,
) -> PushOutcome:
    """Send one fleet-wide prefetch command if the pushed image is the newest matching image of its repository.

    Irrelevant events are ignored (returned, never raised, so nothing retries them). AWS errors that survive
    botocore's retries propagate, so that the invocation fails and is retried, then dead-lettered.
    """
    detail = event.detail
    repository = detail.repository_name
    if detail.action_type != "PUSH" or detail.result != "SUCCESS":
        return _ignored("not a successful push", action=detail.action_type, result=detail.result)
    if repository not in settings.repository_names:
        return _ignored("repository not watched", repository=repository)
    if detail.image_tag is None:
        return _ignored("untagged push", repository=repository, digest=detail.image_digest)
    if not is_image_artifact(detail.artifact_media_type):
        return _ignored("not a container image", artifact_media_type=detail.artifact_media_type)
    if not settings.tag_pattern.search(detail.image_tag):
        return _ignored("tag does not match the filter", tag=detail.image_tag, tag_filter=settings.tag_filter)

    # One event, one resolution: nothing outlives the invocation.
    listing = NewestImages(settings).listing(repository)
    if not listing.exists:
        return _ignored("repository does not exist", repository=repository)
    newest = listing.newest
    if detail.image_digest not in listing.pushed and not aws.ecr.image_exists(repository, detail.image_digest):
        # Not stale (it would be listed, tagged or not): the push is not visible yet, or the image was deleted.
        # Failing lets Lambda retry with backoff, and dead-letter it if it never appears; nothing is lost silently.
        logger.warning("pushed image not found in the repository", extra={"digest": detail.image_digest})
        raise PushedImageNotFoundError(f"{repository}@{detail.image_digest} is not in the repository")
    if newest is None:
        return _ignored("no tagged image matches the filter", repository=repository)
    if newest.digest != detail.image_digest:
        # Out of order, an old digest re-tagged, or its tag already moved on: pulling it could replace a newer image
        # on the nodes.
        return _ignored(
            "stale event: a newer image is the newest",
            event_digest=detail.image_digest,
            newest_digest=newest.digest,
            newest_tag=newest.tag,
        )

    request = send_command_request([newest], settings)
    command_id, sent_now = send_once(
        request,
        key={"repository": repository, "digest": newest.digest},
        settings=settings,
        lambda_context=lambda_context,
        # MaxConcurrency: from the image's size and the registry path's budget, unless the user set it.
        log_fields={
            "image": newest.reference,
            "targets": request["Targets"],
            "image_bytes": newest.size_bytes,
            "max_concurrency": request["MaxConcurrency"],
        },
    )
    return PushOutcome(status="sent" if sent_now else "duplicate", image=newest.reference, command_id=command_id)
