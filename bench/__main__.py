"""`python -m bench`: measure every section and write BENCHMARKS.md (repo root).

    python -m bench                  every section, full length (what `make bench` runs)
    python -m bench --quick          fewer rounds and sizes, for development
    python -m bench --only KEY ...   some sections, printed; BENCHMARKS.md is written only for a full run

A section that fails is reported as not measured, with its error: the file never silently leaves a figure out.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from bench import (
    api_calls,
    cold_start,
    coverage,
    end_to_end,
    new_node_delay,
    node_overhead,
    node_pull,
    status_throughput,
    warm_boot,
)
from bench.report import Section, SectionSpec, not_measured, render

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "BENCHMARKS.md"

# In the order of issue 11. Add a section: a module with measure(section, quick), and a line here.
SECTIONS = [
    SectionSpec(1, "Time to full coverage", "coverage", coverage.measure),
    SectionSpec(2, "New-node delay", "new-node-delay", new_node_delay.measure),
    SectionSpec(3, "AWS API calls", "api-calls", api_calls.measure),
    SectionSpec(4, "Node overhead", "node-overhead", node_overhead.measure),
    SectionSpec(5, "Cold start and package size", "cold-start", cold_start.measure),
    SectionSpec(6, "Status throughput", "status", status_throughput.measure),
    SectionSpec(7, "End-to-end overhead", "end-to-end", end_to_end.measure),
    SectionSpec(8, "Warm boot volumes", "warm-boot", warm_boot.measure),
    SectionSpec(9, "Node pull against kubelet's", "node-pull", node_pull.measure),
]

RUN_FIRST = {"node-overhead"}


def run(spec: SectionSpec, quick: bool) -> Section:
    section = Section(spec.number, spec.title)
    print(f"[{spec.number}] {spec.title} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        spec.measure(section, quick)
    except Exception as error:  # any failure becomes a row that says so, not a missing section
        traceback.print_exc()
        not_measured(section, [f"{spec.title} (section failed)"], f"{type(error).__name__}: {error}"[:300])
    section.seconds = time.monotonic() - started
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes (development)")
    parser.add_argument("--only", nargs="+", choices=[spec.key for spec in SECTIONS], help="only these sections")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the report")
    args = parser.parse_args(argv)

    chosen = [spec for spec in SECTIONS if not args.only or spec.key in args.only]
    # Section 1 draws its pull times from section 4's results: that one is measured first.
    order = sorted(chosen, key=lambda spec: spec.key not in RUN_FIRST)
    measured = {spec.number: run(spec, args.quick) for spec in order}
    sections = [measured[spec.number] for spec in chosen]
    command = (
        "python -m bench" + (" --quick" if args.quick else "") + (" --only " + " ".join(args.only) if args.only else "")
    )
    text = render(sections, command, args.quick)
    if args.only:
        print(text)
        return 0
    args.output.write_text(text)
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
