"""The benchmark's report: nothing left out silently (figures measured in bench/, not here: no timings in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import coverage
from bench.__main__ import SECTIONS, main, run
from bench.report import Row, Section, SectionSpec, percentile, ratio, render


def test_a_section_that_fails_still_reports_a_row_saying_why() -> None:
    def broken(section: Section, quick: bool) -> None:
        raise RuntimeError("containerd vanished")

    section = run(SectionSpec(9, "Broken", "broken", broken), quick=True)

    (row,) = section.rows
    assert row.verdict.startswith("not measured:")
    assert "RuntimeError: containerd vanished" in row.verdict


def test_every_section_is_listed_in_order() -> None:
    """Issue 11's seven, then the warm boot row (issue 19), then the node pull against kubelet's (issue 28)."""
    assert [spec.number for spec in SECTIONS] == list(range(1, 10))
    assert [spec.key for spec in SECTIONS[-2:]] == ["warm-boot", "node-pull"]
    assert len({spec.key for spec in SECTIONS}) == len(SECTIONS)


def test_every_section_is_measured_by_its_own_module_and_a_partial_run_only_prints(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert all(spec.measure.__module__ != "bench.pending" for spec in SECTIONS)
    output = tmp_path / "BENCHMARKS.md"

    assert main(["--only", "coverage", "--quick", "--output", str(output)]) == 0

    printed = capsys.readouterr().out
    assert "## 1. Time to full coverage" in printed
    assert not output.exists()  # a partial run prints; only a full run writes the file


def test_the_coverage_simulation_paces_by_max_concurrency_and_shares_the_cap() -> None:
    """Deterministic: 100 equal pulls of 100 s. The agent's Rollout starts a node as one finishes; above the cap,
    every running pull slows in proportion."""
    pulls = [100.0] * 100
    assert coverage.simulate(pulls, "50").last_warm == pytest.approx(200.0)
    assert coverage.simulate(pulls, "10%").last_warm == pytest.approx(1000.0)
    alone = coverage.IMAGE_BYTES / 100.0  # bytes/s of one pull at full speed
    fleet = coverage.simulate(pulls, "100%")
    assert fleet.peak_running == 100 and fleet.peak_demand == pytest.approx(100 * alone)
    # 100 pulls ask for more than the cap: they all end when the cap has carried every byte.
    expected = max(100.0, 100 * coverage.IMAGE_BYTES / coverage.CAP_BYTES)
    assert fleet.last_warm == pytest.approx(expected)


def test_render_counts_verdicts_and_shows_every_column() -> None:
    section = Section(2, "Demo")
    section.rows += [
        Row("a", "1 s", "2 s", ratio(1, 2), "≤ 1 s", "met"),
        Row("b", "3 s", "2 s", ratio(3, 2), "≤ 1 s", "missed: by 2 s: why"),
        Row("c", "—", verdict="not measured: no root"),
    ]

    text = render([section], "python -m bench", quick=False)

    assert "| 2 | Demo | 3 | 1 | 1 | 1 |" in text
    assert "| a | 1 s | 2 s | 0.50x | ≤ 1 s | met |" in text
    assert "| c | — | — | — | — | not measured: no root |" in text


def test_ratio_and_percentile() -> None:
    assert ratio(2, 20_000) == "0.0001x"
    assert ratio(3, 2) == "1.50x"
    assert ratio(1, 0) == "—"
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([5.0], 0.95) == 5.0
