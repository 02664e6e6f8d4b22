"""The warm planner's pure decisions: why a build starts, which platforms an index has, what counts as unchanged,
and the events it accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.parser import parse
from pydantic import ValidationError

from eks_prefetch.events import EcrImageActionEvent
from eks_prefetch.images import ResolvedImage
from eks_prefetch.settings import PlannerSettings
from eks_prefetch.warm.planner import (
    Ami,
    Plan,
    PlannerEvent,
    PlannerSchedule,
    build_reason,
    fitting_the_parameter,
    platforms,
)
from eks_prefetch.warm.state import WarmState
from harness import template as cfn
from testing.environment import DEPLOYMENT_ENV

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
AMI = Ami(id="ami-0123456789abcdef0", architecture="x86_64")
PUBLISHED = {"snapshotId": "snap-1", "amiId": AMI.id, "images": [{"repository": "ml/trainer", "digest": "sha256:a"}]}
SETTINGS = PlannerSettings.from_env(
    {
        **DEPLOYMENT_ENV,
        "STATUS_TABLE": "eks-image-prefetch-status",
        "WARM_STACK_NAME": "eks-image-prefetch",
        "WARM_STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:warm-volume-builder",
        "WARM_NODE_AMI": "/platform/eks-node-ami",
        "WARM_SNAPSHOT_PARAMETER": "/eks-image-prefetch/eks-image-prefetch/warm-snapshot",
        "WARM_LAUNCH_TEMPLATE_ID": "lt-0123456789abcdef0",
        "WARM_BUILD_DEBOUNCE_MINUTES": "180",
        "WARM_LAUNCH_TEMPLATE_VERSION": "3",
    }
)
# Published after the stack's last update of the launch template (version 3): its builder based on it.
CURRENT = {**PUBLISHED, "stackTemplateVersion": "3"}


def _state(
    *, pushed: float | None = None, resolved: float | None = None, started: float | None = None, ami: str = ""
) -> WarmState:
    """Times in minutes before NOW."""

    def ago(minutes: float | None) -> datetime | None:
        return None if minutes is None else NOW - timedelta(minutes=minutes)

    return WarmState(
        last_push_at=ago(pushed), last_resolved_at=ago(resolved), last_started_at=ago(started), last_ami=ami
    )


@pytest.mark.parametrize(
    ("trigger", "state", "published", "reason"),
    [
        ("tick", _state(), {}, "first"),
        ("tick", _state(), PUBLISHED, None),
        ("tick", _state(pushed=10, resolved=60, started=60), PUBLISHED, None),  # wanted, inside the window
        ("tick", _state(pushed=10, resolved=180, started=180), PUBLISHED, "push"),  # wanted, the window has passed
        ("tick", _state(pushed=200, resolved=180, started=180), PUBLISHED, None),  # the push is in the last plan
        ("tick", _state(started=10, ami="ami-old"), {**PUBLISHED, "amiId": "ami-old"}, "ami"),  # debounce ignored
        ("tick", _state(started=10, ami=AMI.id), {**PUBLISHED, "amiId": "ami-old"}, None),  # this AMI's build: wait
        ("tick", _state(started=180, ami=AMI.id), {**PUBLISHED, "amiId": "ami-old"}, "ami"),  # it failed: retry
        ("daily", _state(started=10), PUBLISHED, "daily"),
        # A stack update wrote a new version of the launch template (a new warm boot part): rebuild, so that the
        # published version carries it; once per window if it fails.
        ("tick", _state(started=200), {**PUBLISHED, "stackTemplateVersion": "1"}, "template"),
        ("tick", _state(started=10), {**PUBLISHED, "stackTemplateVersion": "1"}, None),
        ("tick", _state(started=200), CURRENT, None),
        # Published before the parameter said which: no rebuild for it (the builder counts it as no update too).
        ("tick", _state(started=200), PUBLISHED, None),
    ],
)
def test_build_reason(trigger: str, state: WarmState, published: dict[str, object], reason: str | None) -> None:
    assert build_reason(trigger, state, published, AMI, NOW, SETTINGS) == reason


def test_platforms_of_an_index_and_of_a_single_manifest() -> None:
    index = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"platform": {"os": "linux", "architecture": "amd64"}},
            {"platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"platform": {"os": "unknown", "architecture": "unknown"}},  # an attestation
            {"platform": {"os": "windows", "architecture": "amd64"}},
        ],
    }
    assert platforms(index) == {"amd64", "arm64"}
    assert platforms({"mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}) is None


def _image(repository: str, digest: str) -> ResolvedImage:
    return ResolvedImage(registry="r", repository=repository, digest=digest, tag="v1", pushed_at=NOW)


def test_a_plan_is_the_same_only_with_the_same_ami_and_digests() -> None:
    plan = Plan(ami=AMI, images=(_image("ml/trainer", "sha256:a"),), resolved_at=NOW)

    assert plan.same_as(PUBLISHED)
    assert not plan.same_as({**PUBLISHED, "amiId": "ami-other"})
    assert not plan.same_as({**PUBLISHED, "images": [{"repository": "ml/trainer", "digest": "sha256:b"}]})
    assert not plan.same_as({})


def test_a_plan_is_cut_to_what_the_published_parameter_holds() -> None:
    """The parameter (an advanced one: 8 KB) lists every image the snapshot holds: a plan of 50 images with 200-
    character repository names would not fit, and every build would fail at publication."""
    images = tuple(_image(f"team-{n:02d}/" + "x" * 192, f"sha256:{n:064x}") for n in range(50))

    kept = fitting_the_parameter(images)

    assert 0 < len(kept) < len(images) and kept == images[: len(kept)]
    published = {
        "snapshotId": "snap-0123456789abcdef0",
        "amiId": AMI.id,
        "architecture": "x86_64",
        "containerdVersion": "2.1.9",
        "launchTemplateVersion": 1234,
        "stackTemplateVersion": "1234",
        "builtAt": "2026-11-02T12:00:00.000Z",
        "build": "b" * 80,
        "images": [{"repository": i.repository, "digest": i.digest} for i in kept],
    }
    assert len(json.dumps(published, separators=(",", ":")).encode()) <= 8192
    assert fitting_the_parameter(images[:3]) == images[:3]


def test_the_template_schedules_inputs_parse() -> None:
    events = cfn.resource("WarmPlannerFunction")["Properties"]["Events"]
    for name, trigger in (("Tick", "tick"), ("Daily", "daily")):
        event = json.loads(events[name]["Properties"]["Input"])
        assert parse(event=event, model=PlannerEvent) == PlannerSchedule(trigger=trigger)


def test_a_push_event_parses_as_a_push() -> None:
    event = json.loads((ROOT / "events" / "ecr_push" / "push-tagged.json").read_text())
    assert isinstance(parse(event=event, model=PlannerEvent), EcrImageActionEvent)


def test_an_unknown_trigger_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse(event={"trigger": "hourly"}, model=PlannerEvent)
