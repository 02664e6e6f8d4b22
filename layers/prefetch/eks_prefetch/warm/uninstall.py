"""Stack deletion with WarmVolumes (the WarmUninstall custom resource): nothing the stack leaves behind keeps billing.

CloudFormation deletes the planner first (it depends on the custom resource: no build starts after this), then this
resource, then the builder state machine (this resource names it). On Delete: every running build is stopped, every
builder of the stack terminated (a stopped build does not terminate its own), and Fast Snapshot Restore disabled on
every warm snapshot of the stack. The snapshots stay on purpose: a node group, an Auto Scaling group or an
EC2NodeClass that still names one keeps launching (docs/warm-volumes.md, "Deleting the stack").

Each step runs whatever the others did; what failed is the answer's reason, never a failure: stack deletion is never
blocked by it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from eks_prefetch import aws
from eks_prefetch.settings import EnvironmentSettings
from eks_prefetch.warm.cleanup import BUILDER_TAG, SNAPSHOT_TAG

STOP_CAUSE = "eks-image-prefetch: the stack is being deleted"


class WarmUninstallSettings(EnvironmentSettings):
    """The warm uninstall function's: whose builds, builders and snapshots."""

    warm_stack_name: str = Field(alias="WARM_STACK_NAME", min_length=1)
    warm_state_machine_arn: str = Field(alias="WARM_STATE_MACHINE_ARN", min_length=20)


@dataclass(frozen=True)
class WarmUninstallOutcome:
    """Always SUCCESS: stack deletion is never blocked by it."""

    physical_resource_id: str
    reason: str
    executions_stopped: tuple[str, ...] = ()
    builders_terminated: tuple[str, ...] = ()
    fast_snapshot_restores_disabled: tuple[str, ...] = ()
    status: Literal["SUCCESS"] = "SUCCESS"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "executions_stopped": list(self.executions_stopped),
            "builders_terminated": list(self.builders_terminated),
            "fast_snapshot_restores_disabled": list(self.fast_snapshot_restores_disabled),
        }

    @property
    def data(self) -> dict[str, str]:
        return {
            "ExecutionsStopped": str(len(self.executions_stopped)),
            "BuildersTerminated": str(len(self.builders_terminated)),
            "FastSnapshotRestoresDisabled": str(len(self.fast_snapshot_restores_disabled)),
        }


def on_custom_resource(
    request_type: str, resource_id: str, settings: Callable[[], WarmUninstallSettings]
) -> WarmUninstallOutcome:
    """Create and Update: nothing. Delete: stop the builds, terminate the builders, disable FSR. ``resource_id``: the
    physical id CloudFormation knows it by (stable across updates)."""
    if request_type != "Delete":
        return WarmUninstallOutcome(resource_id, f"{request_type}: nothing to do until the stack is deleted")
    try:
        loaded = settings()
    except Exception as error:  # best effort: the deletion goes on
        return WarmUninstallOutcome(resource_id, f"nothing done: {type(error).__name__}: {str(error)[:300]}")
    failures: list[str] = []
    stopped = _step(failures, "stopping the builds", lambda: stop_builds(loaded))
    terminated = _step(failures, "terminating the builders", lambda: terminate_builders(loaded))
    disabled = _step(failures, "disabling fast snapshot restore", lambda: disable_fast_snapshot_restores(loaded))
    done = f"{len(stopped)} build(s) stopped, {len(terminated)} builder(s) terminated, FSR disabled on {len(disabled)}"
    reason = done + (f"; failed: {'; '.join(failures)}" if failures else "") + "; warm snapshots kept"
    return WarmUninstallOutcome(resource_id, reason[:1000], tuple(stopped), tuple(terminated), tuple(disabled))


def _step(failures: list[str], what: str, step: Callable[[], list[str]]) -> list[str]:
    try:
        return step()
    except Exception as error:  # best effort: the next step runs all the same
        failures.append(f"{what}: {type(error).__name__}: {str(error)[:200]}")
        return []


def stop_builds(settings: WarmUninstallSettings) -> list[str]:
    """Stop the builder's running executions; their names."""
    running = aws.sfn.running_executions(settings.warm_state_machine_arn)
    for execution in running:
        aws.sfn.stop_execution(str(execution["executionArn"]), STOP_CAUSE)
    return [str(execution["name"]) for execution in running]


def terminate_builders(settings: WarmUninstallSettings) -> list[str]:
    """Terminate every builder instance of the stack (any age, any build); their ids."""
    builders = [instance["InstanceId"] for instance in aws.ec2.tagged_instances(BUILDER_TAG, settings.warm_stack_name)]
    aws.ec2.terminate_instances(builders)
    return builders


def disable_fast_snapshot_restores(settings: WarmUninstallSettings) -> list[str]:
    """Disable FSR on every warm snapshot of the stack, in every zone where it is on; those snapshots."""
    snapshots = [s["SnapshotId"] for s in aws.ec2.tagged_snapshots(SNAPSHOT_TAG, settings.warm_stack_name)]
    zones = aws.ec2.fast_snapshot_restore_zones(snapshots)
    for snapshot_id, snapshot_zones in sorted(zones.items()):
        aws.ec2.disable_fast_snapshot_restores(snapshot_id, snapshot_zones)
    return sorted(zones)
