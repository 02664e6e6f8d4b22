"""What the warm planner's tick cleans up: builders left behind, and warm snapshots beyond the newest N.

The builder terminates its instance on every path and deletes a snapshot it did not publish; these are the safety
nets for what a failed termination or deletion leaves, and the retention of published snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from eks_prefetch import aws
from eks_prefetch.settings import PlannerSettings

logger = Logger(child=True)

# The tags the builder (statemachines/warm_volume_builder.asl.json) puts on what it creates.
BUILDER_TAG = "eks-image-prefetch:warm-builder"
SNAPSHOT_TAG = "eks-image-prefetch:warm-snapshot"
# The execution that launched a builder (or built a snapshot).
BUILD_TAG = "eks-image-prefetch:build"


def _tags(resource: Mapping[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- builders left behind -------------------------------------------------------------------------------------------


def builders_left_behind(
    instances: Iterable[Mapping[str, Any]], running_builds: set[str], now: datetime, max_build: timedelta
) -> list[str]:
    """Builders older than the longest possible build whose build is not running: no execution will end them."""
    return [
        instance["InstanceId"]
        for instance in instances
        if now - _utc(instance["LaunchTime"]) > max_build and _tags(instance).get(BUILD_TAG) not in running_builds
    ]


def sweep_builders(settings: PlannerSettings, running: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    """Terminate the builders left behind; their ids."""
    instances = aws.ec2.tagged_instances(BUILDER_TAG, settings.warm_stack_name)
    left = builders_left_behind(
        instances,
        {str(execution.get("name")) for execution in running},
        now,
        timedelta(seconds=settings.warm_build_max_seconds),
    )
    if left:
        logger.warning("terminating warm builders left behind", extra={"instances": left})
        aws.ec2.terminate_instances(left)
    return left


# --- snapshot retention ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """Snapshots beyond the newest N: all lose fast snapshot restore; those no launch template version names are
    deleted."""

    old: tuple[str, ...]
    deletable: tuple[str, ...]


def retention(snapshots: Iterable[Mapping[str, Any]], keep: int, published: str | None, in_use: set[str]) -> Retention:
    """The newest ``keep`` completed snapshots stay, and the published one whatever its age; a pending snapshot (a
    build's, not published yet) is never touched."""
    snapshots = list(snapshots)
    completed = sorted(
        (snapshot for snapshot in snapshots if snapshot.get("State") == "completed"),
        key=lambda snapshot: (_utc(snapshot["StartTime"]), snapshot["SnapshotId"]),
        reverse=True,
    )
    kept = {snapshot["SnapshotId"] for snapshot in completed[:keep]} | ({published} if published else set())
    old = tuple(
        sorted(
            snapshot["SnapshotId"]
            for snapshot in snapshots
            if snapshot["SnapshotId"] not in kept and snapshot.get("State") != "pending"
        )
    )
    return Retention(old=old, deletable=tuple(snapshot for snapshot in old if snapshot not in in_use))


@dataclass(frozen=True)
class RetentionOutcome:
    fast_snapshot_restores_disabled: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    kept_in_use: tuple[str, ...] = ()


def keep_newest_snapshots(settings: PlannerSettings, published: str | None) -> RetentionOutcome:
    """Apply ``retention`` to this stack's warm snapshots. Run only while no build runs (its snapshot is not yet in
    the launch template)."""
    snapshots = aws.ec2.tagged_snapshots(SNAPSHOT_TAG, settings.warm_stack_name)
    # Read after the snapshots: a version added in between names a snapshot listed, never an unlisted one.
    in_use = aws.ec2.launch_template_snapshot_ids(settings.warm_launch_template_id)
    plan = retention(snapshots, settings.warm_snapshots_to_keep, published, in_use)
    disabled = []
    for snapshot_id, zones in sorted(aws.ec2.fast_snapshot_restore_zones(list(plan.old)).items()):
        aws.ec2.disable_fast_snapshot_restores(snapshot_id, zones)
        disabled.append(snapshot_id)
    deleted = [snapshot_id for snapshot_id in plan.deletable if aws.ec2.delete_snapshot(snapshot_id)]
    kept = tuple(snapshot for snapshot in plan.old if snapshot not in plan.deletable)
    if disabled or deleted:
        logger.info(
            "warm snapshot retention",
            extra={"fastSnapshotRestoreDisabled": disabled, "deleted": deleted, "keptInUse": list(kept)},
        )
    return RetentionOutcome(fast_snapshot_restores_disabled=tuple(disabled), deleted=tuple(deleted), kept_in_use=kept)
