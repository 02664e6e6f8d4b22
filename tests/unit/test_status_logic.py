"""Pure parts of the status logic: the status an invocation is counted under, and coverage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eks_prefetch.images import ResolvedImage
from eks_prefetch.status.coverage import coverage_of, reported_unsupported
from eks_prefetch.status.invocations import final_status
from eks_prefetch.status.table import NodeState, parse_time, timestamp

NEWEST = ResolvedImage("r", "ml/trainer", "sha256:" + "a" * 64, "v2", datetime(2026, 11, 1, tzinfo=UTC))
OLD = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("status", "details", "counted_as"),
    [
        ("Success", "Success", "Success"),
        ("Failed", "Failed", "Failed"),
        ("Failed", "Undeliverable", "Undeliverable"),
        ("Failed", "Terminated", "Terminated"),
        ("Failed", "InvalidPlatform", "InvalidPlatform"),
        ("Failed", "AccessDenied", "AccessDenied"),
        ("TimedOut", "DeliveryTimedOut", "DeliveryTimedOut"),
        ("TimedOut", "ExecutionTimedOut", "ExecutionTimedOut"),
        ("TimedOut", None, "TimedOut"),
        ("Cancelled", "Cancelled", "Cancelled"),
        ("SomethingNew", "AlsoNew", "SomethingNew"),
        ("weird status!", None, "Unknown"),
        ("", None, "Unknown"),
    ],
)
def test_final_status_prefers_the_finer_details(status, details, counted_as):
    assert final_status(status, details) == counted_as


def test_coverage_counts_online_nodes_holding_the_newest_digest():
    states = {
        ("i-1", "ml/trainer"): NodeState("i-1", "ml/trainer", digest=NEWEST.digest),
        ("i-2", "ml/trainer"): NodeState("i-2", "ml/trainer", digest=OLD, last_error="403", last_error_at="t"),
        ("i-9", "ml/trainer"): NodeState("i-9", "ml/trainer", digest=NEWEST.digest),  # offline: not counted
    }

    coverage = coverage_of("ml/trainer", NEWEST, ["i-1", "i-2", "i-3"], states)

    assert coverage.percent == pytest.approx(100 / 3)
    assert [(state.instance_id, state.last_error) for state in coverage.missing] == [("i-2", "403"), ("i-3", "")]


def test_coverage_without_nodes_or_without_an_image_is_full():
    assert coverage_of("ml/trainer", NEWEST, [], {}).percent == 100.0
    assert coverage_of("ml/trainer", None, ["i-1"], {}).percent == 100.0
    assert coverage_of("ml/trainer", None, ["i-1"], {}).missing == ()


def test_times_round_trip_and_compare_as_strings():
    early, late = datetime(2026, 11, 1, 12, 0, 0, 5, tzinfo=UTC), datetime(2026, 11, 1, 12, 0, 1, tzinfo=UTC)

    assert parse_time(timestamp(early)) == early
    assert timestamp(early) < timestamp(late)
    assert parse_time("2026-11-01T12:00:00") == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert parse_time("garbage") is None
    assert parse_time(None) is None


NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
WEEK = 7 * 86_400


def _when(minutes: int) -> str:
    return timestamp(NOW + timedelta(minutes=minutes))


def test_a_report_of_no_socket_stands_until_a_later_report_of_the_nodes_images():
    marked = NodeState("i-1", "a", unsupported_reason="no containerd socket at /s", unsupported_at=_when(-30))
    older_image = NodeState("i-1", "b", digest="sha256:x", cached_at=_when(-60))

    assert reported_unsupported([marked, older_image], NOW, WEEK) == {
        "i-1": f"no containerd socket at /s (reported {_when(-30)})"
    }
    # Held on any of its rows since: containerd works there now.
    assert (
        reported_unsupported([marked, NodeState("i-1", "b", digest="sha256:x", cached_at=_when(-10))], NOW, WEEK) == {}
    )


@pytest.mark.parametrize(("kind", "cleared"), [("failed", True), ("skipped", True), ("Undeliverable", False)])
def test_only_the_scripts_own_failure_records_supersede_the_mark(kind, cleared):
    """The script's record of a failed or skipped image means it reached containerd; SSM's status of a run that said
    nothing about the image does not."""
    marked = NodeState("i-1", "a", unsupported_reason="no containerd socket", unsupported_at=_when(-30))
    failure = NodeState("i-1", "b", last_error="x", last_error_at=_when(-10), last_error_kind=kind)

    assert (reported_unsupported([marked, failure], NOW, WEEK) == {}) is cleared


def test_the_mark_lapses_a_lifetime_after_the_report_and_the_newest_report_wins():
    older = NodeState("i-1", "a", unsupported_reason="old", unsupported_at=_when(-WEEK // 60 - 10))
    newer = NodeState("i-1", "b", unsupported_reason="new", unsupported_at=_when(-WEEK // 60 + 10))

    assert reported_unsupported([older], NOW, WEEK) == {}
    assert reported_unsupported([older, newer], NOW, WEEK) == {"i-1": f"new (reported {_when(-WEEK // 60 + 10)})"}
    assert reported_unsupported([NodeState("i-2", "a", digest="sha256:x", cached_at=_when(-1))], NOW, WEEK) == {}
