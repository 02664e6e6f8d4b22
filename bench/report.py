"""The shape every section reports in, and BENCHMARKS.md rendered from it.

A row is one figure: what was measured, the baseline measured next to it in the same run, their ratio, the target,
and a verdict that says met, missed (by how much, and why), or not measured (and why). Nothing is left out silently:
a section that cannot run, or fails, still reports its rows as not measured, with the reason.
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class Row:
    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "met", "missed by ...: why", "not measured: why", or "(reported)" for context figures


@dataclass
class Section:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # markdown paragraphs under the table: method, detail, caveats
    seconds: float = 0.0


@dataclass(frozen=True)
class SectionSpec:
    """A section of BENCHMARKS.md: ``measure`` fills it; ``quick`` asks for a shorter run (fewer rounds/sizes)."""

    number: int
    title: str
    key: str
    measure: Callable[[Section, bool], None]


def not_measured(section: Section, figures: Sequence[str], why: str) -> None:
    for figure in figures:
        section.rows.append(Row(figure, "—", verdict=f"not measured: {why}"))


def verdict(met: bool, miss: str = "") -> str:
    return "met" if met else f"missed: {miss}"


def ratio(value: float, baseline: float) -> str:
    if baseline == 0:
        return "—"
    quotient = value / baseline
    # Two significant digits for small ratios (0.001x, not 0.00x).
    return f"{quotient:.2g}x" if 0 < quotient < 0.1 else f"{quotient:.2f}x"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured, no interpolation."""
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 1000) * len(ordered) // 1000))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(sections: Sequence[Section], command: str, quick: bool) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"({platform.system()} {platform.machine()}, Python {platform.python_version()}, "
        f"{_cpus()} CPUs{', quick run' if quick else ''}). Do not edit by hand: run `make bench` again.",
        "",
        "Every figure stands next to its baseline, measured in the same run, and their ratio. **Verdict** says whether",
        "the target is met; if not, by how much and why; figures that cannot be measured here say why.",
        "",
        "## Summary",
        "",
        "| # | Section | Figures | Met | Missed | Not measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for section in sections:
        verdicts = [row.verdict for row in section.rows]
        lines.append(
            f"| {section.number} | {section.title} | {len(verdicts)} | "
            f"{sum(v.startswith('met') for v in verdicts)} | {sum(v.startswith('missed') for v in verdicts)} | "
            f"{sum(v.startswith('not measured') for v in verdicts)} |"
        )
    for section in sections:
        lines += [
            "",
            f"## {section.number}. {section.title}",
            "",
            "| Figure | Measured | Baseline (same run) | Ratio | Target | Verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in section.rows:
            cells = (row.figure, row.value, row.baseline, row.ratio, row.target, row.verdict)
            lines.append("| " + " | ".join(_cell(cell) or "—" for cell in cells) + " |")
        for note in section.notes:
            lines += ["", note]
        if section.seconds:
            lines += ["", f"<sub>Section measured in {section.seconds:.0f} s.</sub>"]
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    import os  # noqa: PLC0415

    return os.cpu_count() or 0
