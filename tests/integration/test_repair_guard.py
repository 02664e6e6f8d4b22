"""Repair's "never an older image" guard against the whole repository, tagged or not, and what coverage and `make
status` make of a node that holds a newer image than the newest (issue 15, items 10 and 11).

moto gap, and its double: moto's DescribeImages ignores ``filter.tagStatus`` (it lists untagged images under
``TAGGED``), so the tagged listing knew every image and the guard looked right. ``ecr_filters_tag_status`` answers
DescribeImages as ECR does: ``TAGGED`` lists tagged images only. Every test here uses it.
Other doubles (testing/ssm.py): ``FakeInvocations``, ``Agents`` for moto's SSM gaps.
"""

from __future__ import annotations

import copy
import io
from datetime import timedelta
from typing import Any

import pytest
from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from eks_prefetch import aws, settings
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status.coverage import look_at_fleet
from prefetchctl import status as report
from testing.ecr import at, digest_of, push_image
from testing.environment import CLUSTER
from testing.output import values
from tests.integration.conftest import INFERENCE, TRAINER
from tests.integration.test_repair import GRACE, holds, node_ids, ref, run_sweep, targets


@pytest.fixture
def ecr_filters_tag_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """DescribeImages as ECR answers it: ``filter.tagStatus`` TAGGED lists tagged images only, UNTAGGED untagged
    ones (moto lists them all)."""

    def describe_images(self: ECRResponse) -> ActionResult:
        images = self.ecr_backend.describe_images(
            self._get_param("repositoryName"), self._get_param("registryId"), self._get_param("imageIds")
        )
        wanted = (self._get_param("filter") or {}).get("tagStatus", "ANY")
        details = []
        for image in images:
            if (wanted == "TAGGED" and not image.image_tags) or (wanted == "UNTAGGED" and image.image_tags):
                continue
            detail = copy.copy(image)
            if not detail.image_tags:
                del detail.image_tags  # as moto's own answer: ECR leaves out an empty imageTags
            details.append(detail)
        return ActionResult({"imageDetails": details})

    monkeypatch.setattr(ECRResponse, "describe_images", describe_images)


@pytest.fixture(autouse=True)
def env(status_env, ecr_filters_tag_status, monkeypatch):
    monkeypatch.setenv("REPAIR_ENABLED", "true")
    monkeypatch.setenv("REPAIR_GRACE_SECONDS", str(int(GRACE.total_seconds())))
    settings.load.cache_clear()


@pytest.fixture
def by_id(status_env) -> list[list[str]]:
    """The digests of every DescribeImages by image id the code asks (not the tagged listings)."""
    asked: list[list[str]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        if params.get("imageIds"):
            asked.append([image["imageDigest"] for image in params["imageIds"]])

    aws.client("ecr").meta.events.register("provide-client-params.ecr.DescribeImages", capture)
    return asked


def test_the_double_filters_as_ecr_does(images):
    untagged = push_image(TRAINER, "trainer-untagged", tag=None, pushed_at=at(30))

    listed = {detail["imageDigest"] for detail in aws.ecr.describe_tagged_images(TRAINER)}

    assert untagged not in listed
    assert images[TRAINER] in listed


def test_a_node_holding_the_newer_untagged_image_after_a_tag_moved_back_is_covered_and_left_alone(
    fake, fleet, images, sent, by_id, capsys
):
    """v3 was pushed at 12:20 and pulled by one node; its tag then moved back (v3 is untagged now, v2 the newest
    tagged image). The node holding v3 is not sent v2, and counts as covered; a node holding the older v1 and a node
    holding an image the repository no longer has are repaired."""
    newer = push_image(TRAINER, "trainer-v3-untagged-now", tag=None, pushed_at=at(20))
    older = digest_of("trainer-v1")
    ahead, current, behind, gone = node_ids(4)
    fleet.online = {ahead, current, behind, gone}
    holds(ahead, TRAINER, newer, at(21))
    holds(current, TRAINER, images[TRAINER], at(5))
    holds(behind, TRAINER, older, at(-50))
    holds(gone, TRAINER, digest_of("deleted-since"), at(-50))
    for node in fleet.online:
        holds(node, INFERENCE, images[INFERENCE], at(12))
    capsys.readouterr()

    result = run_sweep(at(20) + GRACE + timedelta(minutes=1))

    assert targets(sent) == {behind: [ref(TRAINER, images[TRAINER])], gone: [ref(TRAINER, images[TRAINER])]}
    assert result["coverage"][TRAINER] == 50.0  # ahead and current hold the newest, or newer
    printed = capsys.readouterr().out
    assert values(printed, "NodesMissingNewest", ClusterName=CLUSTER, Repository=TRAINER) == [2]
    # Asked by image id only for what the tagged listing does not show (v1 is tagged: known from the listing).
    assert {digest for call in by_id for digest in call} == {newer, digest_of("deleted-since")}
    assert len(by_id) == 3  # both in one request; ImageNotFoundException for the deleted one: halved


def test_make_status_counts_the_node_ahead_as_covered_and_never_calls_its_image_older(fake, fleet, images, by_id):
    newer = push_image(TRAINER, "trainer-v3-untagged-now", tag=None, pushed_at=at(20))
    ahead, current = node_ids(2)
    fleet.online = {ahead, current}
    holds(ahead, TRAINER, newer, at(21))
    holds(current, TRAINER, images[TRAINER], at(5))
    for node in fleet.online:
        holds(node, INFERENCE, images[INFERENCE], at(12))

    fleet_view = look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)))
    out = io.StringIO()
    report.render(fleet_view.coverages, CLUSTER, out)

    assert "coverage: 100.0% (2/2 nodes)" in out.getvalue()
    assert "older digest" not in out.getvalue()
    assert "missing" not in out.getvalue()


def test_a_node_on_an_older_untagged_image_is_missing_and_not_called_newer(fake, fleet, images, by_id):
    old_untagged = push_image(TRAINER, "trainer-v0-untagged", tag=None, pushed_at=at(-90))
    (node,) = node_ids(1)
    fleet.online = {node}
    holds(node, TRAINER, old_untagged, at(-80))
    holds(node, INFERENCE, images[INFERENCE], at(12))

    fleet_view = look_at_fleet(load(StatusSettings), NewestImages(load(StatusSettings)))
    out = io.StringIO()
    report.render(fleet_view.coverages, CLUSTER, out)

    assert f"missing:  {node}  holds digest {old_untagged}, not the newest" in out.getvalue()
    assert "coverage: 0.0% (0/1 nodes)" in out.getvalue()


def test_push_times_by_image_id_are_asked_100_at_most_and_a_missing_image_is_left_out(images, by_id):
    """DescribeImages takes 100 image ids at most, and fails the whole request with ImageNotFoundException for one it
    does not find (moto, like ECR): the adapter halves that request until the missing image is alone."""
    present = {push_image(TRAINER, f"many-{n}", tag=None, pushed_at=at(n % 50)): at(n % 50) for n in range(130)}
    missing = [digest_of("gone-1"), digest_of("gone-2")]

    found = aws.ecr.pushed_at(TRAINER, [*present, *missing])

    assert found == present
    assert all(len(call) <= 100 for call in by_id)
    assert len(by_id) <= 2 + 2 * 2 * 7  # two requests, and a halving (at most 7 deep) per missing image
