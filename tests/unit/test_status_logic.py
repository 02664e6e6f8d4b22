"""Pure parts of the status logic: the status an invocation is counted under, and coverage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from eks_prefetch.coverage import coverage_of
from eks_prefetch.images import ResolvedImage
from eks_prefetch.invocations import final_status
from eks_prefetch.status_table import NodeState, parse_time, timestamp

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
