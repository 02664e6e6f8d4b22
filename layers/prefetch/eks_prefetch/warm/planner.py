"""When to build a warm boot volume, and with what: the planner behind WarmPlannerFunction (docs/warm-volumes.md).

Triggers:
- a push of a watched repository only marks a build *wanted* (``warm_state``);
- the tick (every 15 minutes) starts a build when one is wanted and the last build started at least
  ``warm_build_debounce_minutes`` ago, so a burst of pushes lands in one build and at most one build starts per
  window; or when the node AMI differs from the published snapshot's (a new AMI, or no snapshot yet);
- the daily check plans whatever was or was not wanted: a missed push event, a changed tag filter;
- the end of a build that failed, timed out or was stopped terminates its builder if it is still up (a runtime
  error no Catch catches ends an execution without its own cleanup).

Whatever the trigger, no build starts while one runs, nor when the plan (AMI and image digests) is what the
published snapshot already holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field

from eks_prefetch import aws
from eks_prefetch.events import EcrImageActionEvent
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import MAX_IMAGES_PER_COMMAND
from eks_prefetch.prefetch.commands import document_parameters
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import PlannerSettings
from eks_prefetch.warm import cleanup as warm_cleanup
from eks_prefetch.warm import state as warm_state

logger = Logger(child=True)

# EC2's architecture names -> the OCI platform's.
OCI_ARCHITECTURES = {"x86_64": "amd64", "arm64": "arm64", "i386": "386"}
INDEX_MEDIA_TYPES = frozenset(
    {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
)


class PlannerSchedule(BaseModel):
    """The planner's schedules' input (template.yaml: WarmPlannerFunction's Tick and Daily)."""

    model_config = ConfigDict(extra="forbid")

    trigger: Literal["tick", "daily"]


class BuildEndedDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    state_machine_arn: str = Field(alias="stateMachineArn", min_length=20, max_length=256)
    # The execution's name: the builder's eks-image-prefetch:build tag.
    name: str = Field(min_length=1, max_length=80)
    status: str = Field(min_length=1, max_length=32)


class BuildEndedEvent(EventBridgeModel):
    """Step Functions' event when an execution of the builder ends (template.yaml: the planner's BuildEnded rule)."""

    source: Literal["aws.states"]
    detail_type: Literal["Step Functions Execution Status Change"] = Field(alias="detail-type")
    detail: BuildEndedDetail


PlannerEvent = EcrImageActionEvent | BuildEndedEvent | PlannerSchedule


class WarmPlanError(RuntimeError):
    """The build cannot be planned (the AMI cannot be resolved): fails the invocation, so that it is retried."""


@dataclass(frozen=True)
class Ami:
    id: str
    architecture: str


@dataclass(frozen=True)
class Plan:
    """One build: the AMI, and the newest image of each watched repository for its architecture."""

    ami: Ami
    images: tuple[ResolvedImage, ...]
    # When the repositories were listed: pushes before it are in this plan.
    resolved_at: datetime
    # Repositories whose newest image has no manifest for the AMI's architecture.
    skipped: tuple[str, ...] = ()

    def execution_input(self, settings: PlannerSettings) -> dict[str, Any]:
        """The state machine's input (docs/warm-volumes.md, "Input")."""
        return {
            # The reference is what the pull is sent: the builder claims an image only if the pull reports it held.
            "images": [
                {"repository": image.repository, "digest": image.digest, "reference": image.reference}
                for image in self.images
            ],
            "documentParameters": document_parameters(self.images, settings),
        }

    def same_as(self, published: Mapping[str, Any]) -> bool:
        """Whether the published snapshot already holds this plan: the same AMI and the same image digests."""
        images = published.get("images")
        if published.get("amiId") != self.ami.id or not isinstance(images, list):
            return False
        held = {(image.get("repository"), image.get("digest")) for image in images if isinstance(image, dict)}
        return held == {(image.repository, image.digest) for image in self.images}


@dataclass(frozen=True)
class PlannerOutcome:
    result: str  # started | unchanged | waiting | running | lost-race | push-noted | ignored
    reason: str = ""
    execution: str = ""
    images: int = 0
    skipped: tuple[str, ...] = ()
    builders_terminated: tuple[str, ...] = ()
    snapshots_deleted: tuple[str, ...] = ()
    launch_template_versions_deleted: tuple[int, ...] = ()
    fast_snapshot_restores_disabled: tuple[str, ...] = ()
    # The published snapshot, measured on the tick (WarmSnapshotAgeSeconds, WarmSnapshotImages); None without one.
    snapshot: SnapshotMeasures | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The decision and what it did (the snapshot's measures are metrics only)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
            if value and key != "snapshot"
        }


@dataclass(frozen=True)
class SnapshotMeasures:
    age_seconds: float
    images: int


# --- pure decisions -----------------------------------------------------------------------------------------------


def build_reason(
    trigger: str,
    state: warm_state.WarmState,
    published: Mapping[str, Any],
    ami: Ami,
    now: datetime,
    settings: PlannerSettings,
) -> str | None:
    """Why a build should start now (ami, first, template, daily, push), or None. Called with no build running."""
    window = timedelta(minutes=settings.warm_build_debounce_minutes)
    started_recently = state.last_started_at is not None and now - state.last_started_at < window
    # A build of this AMI started within the window either runs or failed: a failure is retried after the window, not
    # every tick.
    if published.get("amiId") != ami.id and not (started_recently and state.last_ami == ami.id):
        return "first" if not published.get("snapshotId") else "ami"
    # A stack update wrote a new version of the launch template (a new warm boot part): the published version does not
    # carry it until a build bases one on it. Once per window if the build fails.
    stack_version = published.get("stackTemplateVersion")
    if (
        isinstance(stack_version, str)
        and stack_version != settings.warm_launch_template_version
        and not started_recently
    ):
        return "template"
    if trigger == "daily":
        return "daily"
    if state.wanted and not started_recently:
        return "push"
    return None


def platforms(manifest: Mapping[str, Any]) -> set[str] | None:
    """The architectures (linux) an index has a manifest for; None for a single manifest, whose architecture is only
    in its config blob (not read: one more request per image; such an image is assumed to fit)."""
    media_type = manifest.get("mediaType")
    if media_type not in INDEX_MEDIA_TYPES and "manifests" not in manifest:
        return None
    return {
        str(entry["platform"].get("architecture"))
        for entry in manifest.get("manifests", [])
        if isinstance(entry, dict)
        and isinstance(entry.get("platform"), dict)
        and entry["platform"].get("os", "linux") == "linux"
    }


def snapshot_measures(published: Mapping[str, Any], now: datetime) -> SnapshotMeasures | None:
    """The published snapshot's age (from the builder's ``builtAt``) and its number of images; None before the first
    build or when the parameter does not say when it was built."""
    if not published.get("snapshotId"):
        return None
    try:
        built_at = datetime.fromisoformat(str(published.get("builtAt", "")).replace("Z", "+00:00"))
    except ValueError:
        return None
    if built_at.tzinfo is None:
        return None
    images = published.get("images")
    return SnapshotMeasures(
        age_seconds=max(0.0, (now - built_at).total_seconds()), images=len(images) if isinstance(images, list) else 0
    )


def execution_name(reason: str, now: datetime) -> str:
    """Unique per second (Step Functions names: 80 characters of [A-Za-z0-9_-])."""
    return f"{reason}-{now:%Y%m%dT%H%M%SZ}"


# --- AWS reads ----------------------------------------------------------------------------------------------------


def resolve_ami(settings: PlannerSettings) -> Ami:
    """The nodes' AMI now (the id, or what the SSM parameter holds), with its architecture."""
    source = settings.warm_node_ami
    ami_id = source if source.startswith("ami-") else aws.ssm.get_parameter_value(source)
    if not ami_id:
        raise WarmPlanError(f"the AMI parameter {source} does not exist or is empty")
    image = aws.ec2.describe_image(ami_id)
    if image is None or not image.get("Architecture"):
        raise WarmPlanError(f"EC2 does not know the AMI {ami_id} (from {source})")
    return Ami(id=ami_id, architecture=str(image["Architecture"]))


def published_snapshot(parameter: str) -> dict[str, Any]:
    """What the builder last published in ``parameter`` ({} before the first build, or if unreadable: then a build
    is planned)."""
    value = aws.ssm.get_parameter_value(parameter)
    try:
        published = json.loads(value or "{}")
    except ValueError:
        logger.warning("the warm snapshot parameter is not JSON", extra={"parameter": parameter})
        return {}
    return published if isinstance(published, dict) else {}


def plan_build(settings: PlannerSettings, ami: Ami, now: datetime) -> Plan:
    """The newest image of every watched repository (resolution.NewestImages, as every path resolves it) that has a
    manifest for the AMI's architecture, at most the document's limit per command."""
    images = NewestImages(settings).every_repository()
    wanted_architecture = OCI_ARCHITECTURES.get(ami.architecture, ami.architecture)
    fitting: list[ResolvedImage] = []
    skipped: list[str] = []
    for image in images:
        try:
            manifest = aws.ecr.image_manifests(image.repository, [image.digest]).get(image.digest)
        except aws.RepositoryNotFoundError:
            continue
        architectures = platforms(manifest) if manifest is not None else None
        if architectures is not None and wanted_architecture not in architectures:
            skipped.append(image.repository)
            logger.info(
                "newest image has no manifest for the AMI's architecture",
                extra={"image": image.reference, "architecture": wanted_architecture},
            )
            continue
        fitting.append(image)
    if len(fitting) > MAX_IMAGES_PER_COMMAND:
        # The builder pulls with one command; the document takes at most this many images.
        logger.warning(
            "more images than one prefetch command takes: the first in RepositoryNames order are built",
            extra={"left_out": [image.repository for image in fitting[MAX_IMAGES_PER_COMMAND:]]},
        )
        fitting = fitting[:MAX_IMAGES_PER_COMMAND]
    kept = fitting_the_parameter(tuple(fitting))
    if len(kept) < len(fitting):
        logger.warning(
            "more images than the snapshot parameter can list: the first in RepositoryNames order are built",
            extra={"left_out": [image.repository for image in fitting[len(kept) :]]},
        )
    return Plan(ami=ami, images=kept, resolved_at=now, skipped=tuple(skipped))


# What the builder publishes in WarmSnapshotParameter (an advanced parameter: at most 8 KB): a few fields of bounded
# size (ids, versions, a time, the execution's name of at most 80 characters) and one entry per image.
PARAMETER_MAX_BYTES = 8192
PARAMETER_FIXED_BYTES = 600


def fitting_the_parameter(images: tuple[ResolvedImage, ...]) -> tuple[ResolvedImage, ...]:
    """The first images whose entries fit the published parameter beside its other fields."""
    room = PARAMETER_MAX_BYTES - PARAMETER_FIXED_BYTES
    kept = []
    for image in images:
        room -= len(json.dumps({"repository": image.repository, "digest": image.digest}).encode()) + 1
        if room < 0:
            break
        kept.append(image)
    return tuple(kept)


# --- entry points -------------------------------------------------------------------------------------------------


def note_push(event: EcrImageActionEvent, settings: PlannerSettings, now: datetime) -> PlannerOutcome:
    """A successful push of a watched repository makes a build wanted. Whether the image is the newest, tagged or
    matching the filter is not decided here: the plan resolves every repository, and an unchanged plan builds
    nothing."""
    detail = event.detail
    if detail.action_type != "PUSH" or detail.result != "SUCCESS":
        return PlannerOutcome(result="ignored", reason="not a successful push")
    if detail.repository_name not in settings.repository_names:
        return PlannerOutcome(result="ignored", reason="repository not watched")
    warm_state.record_push(settings, now)
    logger.info("warm build wanted", extra={"repository": detail.repository_name, "digest": detail.image_digest})
    return PlannerOutcome(result="push-noted")


def end_build(event: BuildEndedEvent, settings: PlannerSettings) -> PlannerOutcome:
    """A build ended (failed, timed out, stopped): its builder, if still up, is terminated now rather than by the
    sweep 12 hours later."""
    detail = event.detail
    if detail.state_machine_arn != settings.warm_state_machine_arn:
        return PlannerOutcome(result="ignored", reason="another state machine's execution")
    terminated = warm_cleanup.end_builders_of(settings, detail.name)
    return PlannerOutcome(
        result="build-ended", reason=detail.status, execution=detail.name, builders_terminated=tuple(terminated)
    )


def run_schedule(trigger: str, settings: PlannerSettings, now: datetime) -> PlannerOutcome:
    """A scheduled run: start a build if one is due; on the tick, also sweep the builders left behind and, while no
    build runs, apply the snapshot retention."""
    running = aws.sfn.running_executions(settings.warm_state_machine_arn)
    # The sweep first: a plan that fails (an AMI that cannot be resolved) must not keep builders running.
    terminated = warm_cleanup.sweep_builders(settings, running, now) if trigger == "tick" else []
    # Read during a build too, on the tick: the snapshot's age and images are measured every tick.
    published = published_snapshot(settings.warm_snapshot_parameter) if trigger == "tick" or not running else {}
    outcome = plan_and_start(trigger, settings, now, running, published)
    if trigger != "tick":
        return outcome
    kept = warm_cleanup.RetentionOutcome()
    if not running and outcome.result != "started":
        kept = warm_cleanup.keep_newest_snapshots(settings, published.get("snapshotId"))
    return replace(
        outcome,
        builders_terminated=tuple(terminated),
        snapshots_deleted=kept.deleted,
        launch_template_versions_deleted=kept.launch_template_versions_deleted,
        fast_snapshot_restores_disabled=kept.fast_snapshot_restores_disabled,
        snapshot=snapshot_measures(published, now),
    )


def plan_and_start(
    trigger: str,
    settings: PlannerSettings,
    now: datetime,
    running: Sequence[Mapping[str, Any]],
    published: Mapping[str, Any],
) -> PlannerOutcome:
    """Start a build if one is due (see the module's docstring). ``running``: the builder's running executions;
    ``published``: what the last build published."""
    if running:
        return PlannerOutcome(result="running", execution=str(running[0].get("name", "")))
    state = warm_state.read_state(settings)
    ami = resolve_ami(settings)
    reason = build_reason(trigger, state, published, ami, now, settings)
    if reason is None:
        return PlannerOutcome(result="waiting" if state.wanted else "unchanged", details={"ami": ami.id})

    plan = plan_build(settings, ami, now)
    # After a stack update the images may be the same: the build is for the launch template's new version.
    if plan.same_as(published) and reason != "template":
        # Pushes before this listing are in the published snapshot already: not wanted any more.
        warm_state.record_resolved(settings, plan.resolved_at)
        return PlannerOutcome(result="unchanged", reason=reason, images=len(plan.images), skipped=plan.skipped)
    if not plan.images:
        # No watched repository has an image (for this architecture): a volume without images warms nothing, and the
        # published snapshot, if any, stays rather than an empty one replacing it.
        warm_state.record_resolved(settings, plan.resolved_at)
        return PlannerOutcome(result="unchanged", reason=reason, skipped=plan.skipped, details={"noImages": True})

    name = execution_name(reason, now)
    if not warm_state.claim_build(settings, state, at=now, resolved_at=plan.resolved_at, execution=name, ami=ami.id):
        return PlannerOutcome(result="lost-race", reason=reason)
    try:
        arn = aws.sfn.start_execution(settings.warm_state_machine_arn, name, plan.execution_input(settings))
    except Exception:
        warm_state.release_claim(settings, state, name)
        raise
    if arn is None:
        return PlannerOutcome(result="lost-race", reason=reason, execution=name)
    logger.info(
        "warm build started",
        extra={"reason": reason, "execution": name, "ami": ami.id, "images": [i.reference for i in plan.images]},
    )
    return PlannerOutcome(
        result="started", reason=reason, execution=name, images=len(plan.images), skipped=plan.skipped
    )
