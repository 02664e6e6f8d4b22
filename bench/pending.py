"""Sections other engineers add: listed with why they are not measured yet, so that nothing is silently absent.

Replace a section's entry in bench/__main__.py with its module when it lands.
"""

from __future__ import annotations

from bench.report import Section, not_measured


def end_to_end(section: Section, quick: bool) -> None:
    not_measured(
        section, ["end-to-end overhead (push to image on the node)"], "needs the local harness; not merged yet"
    )
