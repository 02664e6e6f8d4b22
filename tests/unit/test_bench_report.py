"""The benchmark's report: nothing left out silently (figures measured in bench/, not here: no timings in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import SECTIONS, main, run
from bench.report import Row, Section, SectionSpec, percentile, ratio, render


def test_a_section_that_fails_still_reports_a_row_saying_why() -> None:
    def broken(section: Section, quick: bool) -> None:
        raise RuntimeError("containerd vanished")

    section = run(SectionSpec(9, "Broken", "broken", broken), quick=True)

    (row,) = section.rows
    assert row.verdict.startswith("not measured:")
    assert "RuntimeError: containerd vanished" in row.verdict


def test_every_section_of_issue_11_is_listed_in_order() -> None:
    assert [spec.number for spec in SECTIONS] == list(range(1, 8))
    assert len({spec.key for spec in SECTIONS}) == len(SECTIONS)


@pytest.mark.parametrize("key", ["coverage", "status", "end-to-end"])
def test_sections_not_built_yet_say_so(key: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"

    assert main(["--only", key, "--output", str(output)]) == 0

    printed = capsys.readouterr().out
    assert "not measured: needs the" in printed
    assert not output.exists()  # a partial run prints; only a full run writes the file


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
