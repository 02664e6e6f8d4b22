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


def end_builders_of(settings: PlannerSettings, build: str) -> list[str]:
    """Terminate the builders of a build that has ended (tagged with its execution's name); their ids."""
    instances = aws.ec2.tagged_instances(BUILDER_TAG, settings.warm_stack_name)
    left = [instance["InstanceId"] for instance in instances if _tags(instance).get(BUILD_TAG) == build]
    if left:
        logger.warning(
            "terminating the builder of a build that ended without it", extra={"build": build, "instances": left}
        )
        aws.ec2.terminate_instances(left)
    return left


# --- snapshot retention ---------------------------------------------------------------------------------------------

# A snapshot carrying this tag (any value) is never deleted: one an EC2NodeClass names before Karpenter has made a
# launch template from it, or any a user keeps on purpose.
KEEP_TAG = "eks-image-prefetch:keep"
# How the builder describes the versions it adds to WarmLaunchTemplate (its CreateLaunchTemplateVersion).
BUILDER_VERSION_PREFIX = "warm snapshot "


@dataclass(frozen=True)
class Retention:
    """Snapshots beyond the newest N: all lose fast snapshot restore; those no launch template version names and no
    keep tag protects are deleted."""

    old: tuple[str, ...]
    deletable: tuple[str, ...]


def retention(snapshots: Iterable[Mapping[str, Any]], keep: int, published: str | None, in_use: set[str]) -> Retention:
    """The newest ``keep`` completed snapshots stay, and the published one whatever its age; a pending snapshot (a
    build's, not published yet) is never touched; one tagged to keep, or in use, is never deleted."""
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
    tagged = {snapshot["SnapshotId"] for snapshot in snapshots if KEEP_TAG in _tags(snapshot)}
    return Retention(old=old, deletable=tuple(s for s in old if s not in in_use and s not in tagged))


def prunable_versions(versions: Iterable[Mapping[str, Any]], old: set[str], launched: set[str]) -> list[int]:
    """WarmLaunchTemplate's versions that can go: made by the builder, naming only old snapshots, neither the default
    nor the latest, and launched by number by no Auto Scaling group."""
    versions = list(versions)
    latest = max((int(version["VersionNumber"]) for version in versions), default=0)
    return sorted(
        int(version["VersionNumber"])
        for version in versions
        if str(version.get("VersionDescription") or "").startswith(BUILDER_VERSION_PREFIX)
        and not version.get("DefaultVersion")
        and int(version["VersionNumber"]) != latest
        and str(version["VersionNumber"]) not in launched
        and (named := aws.ec2.snapshot_ids(version))
        and named <= old
    )


@dataclass(frozen=True)
class RetentionOutcome:
    fast_snapshot_restores_disabled: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    kept_in_use: tuple[str, ...] = ()
    launch_template_versions_deleted: tuple[int, ...] = ()


def keep_newest_snapshots(settings: PlannerSettings, published: str | None) -> RetentionOutcome:
    """Apply ``retention`` to this stack's warm snapshots, after pruning the versions of WarmLaunchTemplate that only
    kept old ones. Run only while no build runs (its snapshot is not yet in the launch template)."""
    template = settings.warm_launch_template_id
    snapshots = aws.ec2.tagged_snapshots(SNAPSHOT_TAG, settings.warm_stack_name)
    old = set(retention(snapshots, settings.warm_snapshots_to_keep, published, set()).old)
    disabled = []
    for snapshot_id, zones in sorted(aws.ec2.fast_snapshot_restore_zones(sorted(old)).items()):
        aws.ec2.disable_fast_snapshot_restores(snapshot_id, zones)
        disabled.append(snapshot_id)
    pruned: list[int] = []
    if old:
        launched = aws.autoscaling.launch_template_versions_launched(template)
        prunable = prunable_versions(aws.ec2.launch_template_versions(template), old, launched)
        pruned = aws.ec2.delete_launch_template_versions(template, prunable) if prunable else []
    # Read after the snapshots: a version added in between names a snapshot listed, never an unlisted one.
    in_use = aws.ec2.snapshots_named_by_launch_templates() if old else set()
    plan = retention(snapshots, settings.warm_snapshots_to_keep, published, in_use)
    deleted = [snapshot_id for snapshot_id in plan.deletable if aws.ec2.delete_snapshot(snapshot_id)]
    kept = tuple(snapshot for snapshot in plan.old if snapshot not in plan.deletable)
    if disabled or deleted or pruned:
        logger.info(
            "warm snapshot retention",
            extra={
                "fastSnapshotRestoreDisabled": disabled,
                "launchTemplateVersionsDeleted": pruned,
                "deleted": deleted,
                "keptInUse": list(kept),
            },
        )
    return RetentionOutcome(
        fast_snapshot_restores_disabled=tuple(disabled),
        deleted=tuple(deleted),
        kept_in_use=kept,
        launch_template_versions_deleted=tuple(pruned),
    )
