"""harness.agent.Rollout: SSM's MaxConcurrency/MaxErrors pacing, pure (the agent and bench/coverage.py use it)."""

from __future__ import annotations

from harness.agent import Rollout


def test_a_sliding_window_starts_a_target_as_one_finishes() -> None:
    rollout = Rollout(["a", "b", "c", "d"], max_concurrency=2, max_errors=0)
    assert rollout.step().started == ("a", "b")
    assert rollout.step().started == ()
    rollout.finished("b", error=False)
    assert rollout.step().started == ("c",)
    rollout.finished("a", error=False)
    rollout.finished("c", error=False)
    assert rollout.step().started == ("d",)
    rollout.finished("d", error=False)
    assert rollout.done and rollout.errors == 0


def test_errors_beyond_max_errors_cancel_the_targets_not_started() -> None:
    rollout = Rollout(["a", "b", "c", "d", "e"], max_concurrency=2, max_errors=1)
    rollout.step()
    rollout.finished("a", error=True)  # one error: within MaxErrors, the rollout goes on
    assert rollout.step().started == ("c",)
    rollout.finished("b", error=True)  # two: beyond it
    step = rollout.step()
    assert step.started == () and step.cancelled == ("d", "e")
    assert not rollout.done  # c still runs, and finishes
    rollout.finished("c", error=False)
    assert rollout.done and rollout.errors == 2


def test_stopping_cancels_what_has_not_started() -> None:
    rollout = Rollout(["a", "b", "c"], max_concurrency=1, max_errors=0)
    rollout.step()
    assert rollout.cancel_pending() == ["b", "c"]
    rollout.finished("a", error=False)
    assert rollout.done
