"""New node (EC2 instance running) → one prefetch command of the newest images, to that instance only.

The event arrives through SQS, and the queue is the retry mechanism: a node that is not ready yet (tags not
propagated, SSM agent not registered) has its message hidden for a growing backoff and is reported failed, so that
SQS delivers it again, and after the redrive budget moves it to the dead-letter queue. No Lambda sleeps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.events import INSTANCE_ID_PATTERN, Ec2StateChangeEvent
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import auto_mode_reason, unsupported_reason
from eks_prefetch.node_selectors import tags_of
from eks_prefetch.prefetch import pacing
from eks_prefetch.prefetch.commands import image_batches, send_command_request
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.prefetch.sending import SendOutcomeUnknownError, event_marker, send_once
from eks_prefetch.settings import LaunchSettings

logger = Logger(child=True)

GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
# A record is started only with room for one whole attempt of a call and the bookkeeping after it: a function that
# its timeout kills would send every record of the batch around again.
RECORD_MIN_SECONDS = aws.WORST_ATTEMPT_SECONDS + 2
# SQS's longest visibility timeout: a node waiting for its slot longer comes back and waits again.
MAX_VISIBILITY_SECONDS = 43_200


class NodeVerdict(Enum):
    NODE = "node"
    NOT_A_NODE = "not a cluster node"
    GONE = "instance is no longer running"
    TAGS_PENDING = "node tag not present yet"


@dataclass(frozen=True)
class Delivery:
    """The SQS message an event came in: where to change its visibility, and how often it has been received."""

    queue_arn: str
    receipt_handle: str
    receive_count: int


@dataclass(frozen=True)
class LaunchOutcome:
    status: str  # sent | duplicate | ignored | retry | waiting (for its slot in the budget) | gave_up
    reason: str = ""
    instance_id: str = ""
    images: tuple[str, ...] = ()
    command_ids: tuple[str, ...] = ()
    retry_in_seconds: int = 0

    @property
    def failed(self) -> bool:
        """The record must be reported as a batch failure: retried by SQS, or dead-lettered."""
        return self.status in {"retry", "waiting", "gave_up"}

    def as_dict(self) -> dict[str, Any]:
        return {
            key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items() if value
        }


def classify_instance(instance: Mapping[str, Any], settings: LaunchSettings, now: datetime) -> NodeVerdict:
    """Whether a described instance is a running node of the cluster, not one, or may still become one.

    The event carries no tags, and tags an autoscaling group propagates land 30-60+ s after launch: an untagged
    instance younger than the grace period is asked again later, not dropped.
    """
    if instance.get("State", {}).get("Name") in GONE_STATES:
        return NodeVerdict.GONE
    tags = {tag["Key"]: tag.get("Value", "") for tag in instance.get("Tags") or ()}
    value = tags.get(settings.node_tag_key)
    if value == settings.node_tag_value:
        return NodeVerdict.NODE
    if value is not None:
        # The key with another value: another cluster's node, and tags do not change to ours later.
        return NodeVerdict.NOT_A_NODE
    age = (now - instance["LaunchTime"]).total_seconds()
    return NodeVerdict.TAGS_PENDING if age < settings.node_tag_grace_seconds else NodeVerdict.NOT_A_NODE


def backoff_seconds(receive_count: int, settings: LaunchSettings) -> int:
    """Delay before the next receive: the base for the first fast retries, then doubling from it, capped.

    Agents register 20-180 s after the launch event, mostly: polling often through that window keeps a new node's
    wait for its command short, and backing off after it keeps the total budget (and the invocations) bounded.
    With one fast retry this is plain doubling from the base.
    """
    exponent = min(max(max(receive_count, 1) - settings.node_launch_fast_retries, 0), 30)
    delay = settings.node_launch_retry_base_seconds * 2**exponent
    # LaunchSettings keeps the maximum within SQS's 12-hour visibility limit. A base above the maximum (CloudFormation
    # cannot compare the two) waits the maximum: see LaunchSettings.conflicts.
    return min(delay, settings.node_launch_retry_max_seconds)


def instance_ids_of(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The instance ids the SQS records' EC2 events name, for a look-ahead; malformed records are left to the
    record handler, which drops them with a log line."""
    found = []
    for record in records:
        try:
            event = json.loads(record.get("body") or "")
        except (ValueError, AttributeError, TypeError):
            continue
        detail = event.get("detail") if isinstance(event, dict) else None
        if not isinstance(detail, dict) or event.get("source") != "aws.ec2" or detail.get("state") != "running":
            continue
        instance_id = detail.get("instance-id")
        if isinstance(instance_id, str) and re.fullmatch(INSTANCE_ID_PATTERN, instance_id):
            found.append(instance_id)
    return sorted(set(found))


@dataclass
class LaunchBatch:
    """What the records of one batch (one invocation) share, built by the handler before the records are handled:
    their instances, described in one call (a scale-out makes this call more than any other, and EC2 throttles it
    per account), and one resolution of the newest images."""

    settings: LaunchSettings
    # None: the look-ahead failed or was not made, and each record describes its own instance.
    described: Mapping[str, Mapping[str, Any]] | None
    newest: NewestImages

    @classmethod
    def of(cls, records: Iterable[Mapping[str, Any]], settings: LaunchSettings) -> LaunchBatch:
        """Describe every instance of the batch in one call; a failure leaves each record to describe its own."""
        described = None
        instance_ids = instance_ids_of(records)
        if instance_ids:
            try:
                described = aws.ec2.describe_instances(instance_ids)
            except aws.AWS_ERRORS as error:
                logger.warning(
                    "batch DescribeInstances failed: each record describes its own", extra={"error": repr(error)}
                )
        # Resolved once for the batch, never longer: a resolution kept across invocations could hand a node that
        # registers just after a push the images of before it, which the push's tag-targeted command missed too.
        return cls(settings, described, NewestImages(settings))

    def instance(self, instance_id: str) -> Mapping[str, Any] | None:
        """The instance as the look-ahead described it (None: EC2 does not know it), or by its own call."""
        if self.described is not None:
            return self.described.get(instance_id)
        return aws.ec2.describe_instance(instance_id)


def _ignored(reason: str, instance_id: str, **log_fields: Any) -> LaunchOutcome:
    logger.info("launch ignored", extra={"reason": reason, "instance_id": instance_id, **log_fields})
    return LaunchOutcome(status="ignored", reason=reason, instance_id=instance_id)


def _not_ready(
    reason: str,
    event: Ec2StateChangeEvent,
    delivery: Delivery,
    settings: LaunchSettings,
    now: datetime,
    *,
    delay: int | None = None,
) -> LaunchOutcome:
    """Retry later through the queue (after ``delay`` seconds, else the backoff), or, on the last receive the
    redrive policy allows, give up loudly."""
    instance_id = event.detail.instance_id
    attempt = delivery.receive_count
    if attempt >= settings.node_launch_max_receives:
        # EventBridge times are UTC ("Z"); a zone-less one is read as UTC rather than failing the record.
        changed_at = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)
        elapsed = max(0, int((now - changed_at).total_seconds()))
        # The message goes to the dead-letter queue after this receive: say why, once.
        logger.error(
            f"giving up: {reason} after {attempt} attempts / {elapsed} seconds",
            extra={"instance_id": instance_id, "reason": reason, "attempts": attempt, "elapsed_seconds": elapsed},
        )
        return LaunchOutcome(status="gave_up", reason=reason, instance_id=instance_id)
    delay = backoff_seconds(attempt, settings) if delay is None else delay
    aws.sqs.change_visibility(delivery.queue_arn, delivery.receipt_handle, delay)
    logger.info(
        "node not ready, retrying later",
        extra={"instance_id": instance_id, "reason": reason, "attempt": attempt, "retry_in_seconds": delay},
    )
    return LaunchOutcome(status="retry", reason=reason, instance_id=instance_id, retry_in_seconds=delay)


def prefetch_launched_node(
    event: Ec2StateChangeEvent,
    batch: LaunchBatch,
    *,
    delivery: Delivery,
    lambda_context: LambdaContext | None = None,
    now: datetime | None = None,
) -> LaunchOutcome:
    """Send one prefetch command with the newest image of every watched repository to a node that just started.

    Once per (instance, launch time): a duplicate event sends nothing; a stop/start (new launch time) sends again,
    which is harmless as the node skips cached images. A node that is not ready yet is retried through the queue.
    AWS errors that survive botocore's retries propagate, so that the record fails and returns to the queue.
    """
    now = now or datetime.now(UTC)
    settings = batch.settings
    instance_id = event.detail.instance_id
    if event.detail.state != "running":
        return _ignored("not a running state", instance_id, state=event.detail.state)
    left = aws.seconds_left()
    if left is not None and left < RECORD_MIN_SECONDS:
        return _not_ready(f"not started: {left:.0f} s left in this invocation", event, delivery, settings, now)

    instance = batch.instance(instance_id)
    if instance is None:
        return _ignored("instance not found", instance_id)
    verdict = classify_instance(instance, settings, now)
    auto_mode = auto_mode_reason(instance)
    if auto_mode is not None and verdict in {NodeVerdict.NODE, NodeVerdict.TAGS_PENDING}:
        # Its agent will never register (AWS allows no SSM on it): not waited for, left out as Windows is.
        return _ignored(f"unsupported node: {auto_mode}", instance_id)
    if verdict is NodeVerdict.TAGS_PENDING:
        return _not_ready(verdict.value, event, delivery, settings, now)
    if verdict is NodeVerdict.NOT_A_NODE:
        # Most instances launched in an account are not ours: quietly.
        logger.debug("launch ignored", extra={"reason": verdict.value, "instance_id": instance_id})
        return LaunchOutcome(status="ignored", reason=verdict.value, instance_id=instance_id)
    if verdict is NodeVerdict.GONE:
        return _ignored(verdict.value, instance_id, state=instance["State"]["Name"])

    # Only the repositories whose node selectors the node's own tags match (none set: every repository). Before the
    # agent's check: a node no repository selects is not waited for.
    repositories = settings.repositories_for(tags_of(instance))
    if not repositories:
        return _ignored("no watched repository selects this node", instance_id)

    # Until the agent registers, SendCommand by instance id fails with InvalidInstanceId.
    agent = aws.ssm.online_agent(instance_id)
    if agent is None:
        return _not_ready("SSM agent not online", event, delivery, settings, now)
    unsupported = unsupported_reason(agent)
    if unsupported is not None:
        # A command could not succeed there (no script on Windows, no containerd within reach on Bottlerocket).
        return _ignored(f"unsupported node: {unsupported}", instance_id)

    images = batch.newest.every_repository(repositories)
    if not images:
        return _ignored("no image to prefetch in any watched repository", instance_id)
    waiting = _wait_for_slot(images, instance, event, settings, delivery, now)
    if waiting is not None:
        return waiting
    return _send_to_node(images, instance, event, settings, delivery=delivery, lambda_context=lambda_context, now=now)


def _launch_key(instance_id: str, instance: Mapping[str, Any]) -> dict[str, str]:
    """The at-most-once key of a launch: its commands are sent once per (instance, launch time)."""
    return {"instance": instance_id, "launch_time": instance["LaunchTime"].isoformat()}


def _wait_for_slot(
    images: list[ResolvedImage],
    instance: Mapping[str, Any],
    event: Ec2StateChangeEvent,
    settings: LaunchSettings,
    delivery: Delivery,
    now: datetime,
) -> LaunchOutcome | None:
    """None: the node may pull now. Else it waits for its slot in the registry path's budget, which a scale-out's
    new nodes share (``pacing``): its message comes back when the slot opens. The last receive the redrive policy
    allows sends whatever the schedule says: pacing never costs a node its images."""
    if delivery.receive_count >= settings.node_launch_max_receives:
        return None
    instance_id = event.detail.instance_id
    try:
        slot = pacing.reserve(
            event_marker(_launch_key(instance_id, instance)),
            images,
            settings,
            now.timestamp(),
            may_have_reserved=delivery.receive_count > 1,
        )
    except (*aws.AWS_ERRORS, RuntimeError) as error:
        logger.warning(
            "new-node schedule not available: sending now", extra={"instance_id": instance_id, "error": repr(error)}
        )
        return None
    wait = math.ceil(slot.start_at - now.timestamp())
    if wait <= 0:
        return None
    logger.info(
        "new node waits for its slot in the registry path's budget",
        extra={"instance_id": instance_id, "wait_seconds": wait, "pulls_at_once": slot.at_once},
    )
    outcome = _not_ready(
        "waiting for the registry path's budget",
        event,
        delivery,
        settings,
        now,
        delay=min(wait, MAX_VISIBILITY_SECONDS),
    )
    return replace(outcome, status="waiting")


def _send_to_node(
    images: list[ResolvedImage],
    instance: Mapping[str, Any],
    event: Ec2StateChangeEvent,
    settings: LaunchSettings,
    *,
    delivery: Delivery,
    lambda_context: LambdaContext | None,
    now: datetime,
) -> LaunchOutcome:
    """The images to the node, at most once per launch, in as few commands as the document allows."""
    instance_id = event.detail.instance_id
    batches = image_batches(images)
    command_ids: list[str] = []
    sent_any = False
    for number, batch in enumerate(batches, start=1):
        key = _launch_key(instance_id, instance)
        if len(batches) > 1:
            # More repositories than one command takes: each batch is its own at-most-once send.
            key["batch"] = f"{number}/{len(batches)}"
        try:
            command_id, sent_now = send_once(
                send_command_request(
                    batch, settings, instance_ids=[instance_id], new_node=True, launched=instance["LaunchTime"]
                ),
                key=key,
                settings=settings,
                lambda_context=lambda_context,
                log_fields={"instance_id": instance_id, "images": [image.reference for image in batch]},
            )
        except IdempotencyAlreadyInProgressError:
            # Another delivery of the same launch is sending right now; look again later.
            return _not_ready("a duplicate delivery is sending the command", event, delivery, settings, now)
        except SendOutcomeUnknownError:
            # The next delivery looks for the command before sending: soon, not after the queue's visibility timeout.
            return _not_ready("SendCommand outcome unknown", event, delivery, settings, now)
        except aws.InstanceNotAcceptedError:
            # Online in DescribeInstanceInformation moments before SendCommand accepts the node: a short race.
            return _not_ready("SSM does not accept the instance yet", event, delivery, settings, now)
        command_ids.append(command_id)
        sent_any = sent_any or sent_now
    return LaunchOutcome(
        status="sent" if sent_any else "duplicate",
        instance_id=instance_id,
        images=tuple(image.reference for image in images),
        command_ids=tuple(command_ids),
    )
