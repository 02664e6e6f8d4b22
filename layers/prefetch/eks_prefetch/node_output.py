"""The node script's output: one parser, pure, shared by everything that reads what a node printed.

The document prints one JSON object per image, then LAST a summary object: document/output.schema.json is that
contract, and the models below hold its fields and bounds (a unit test compares them). What arrives here may be
anything else too: SSM keeps only the first 24,000 characters of stdout (the summary is then cut off), an
agent kill leaves a partial run, and a broken node prints nothing or text. Nothing in here raises on bad output:
it is classified, so that callers can count it under its own reason.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eks_prefetch.node_contract import DIGEST_PATTERN, FAILURE_REASONS

ImageStatus = Literal["pulled", "cached", "skipped", "failed"]
IMAGE_STATUSES: tuple[ImageStatus, ...] = ("pulled", "cached", "skipped", "failed")


class OutputProblem(StrEnum):
    """What is wrong with an output, most telling first (``NodeOutput.problem`` picks the first that applies)."""

    EMPTY = "EmptyOutput"
    NO_SUMMARY = "NoSummary"  # truncated by SSM, or the run was killed before its summary
    NOT_JSON = "NotJson"  # a line that is not a JSON object
    BAD_RECORD = "BadRecord"  # a JSON object that fits neither a per-image record nor the summary
    DUPLICATE_RECORD = "DuplicateRecord"  # the same image reported twice: counted once
    SUMMARY_MISMATCH = "SummaryMismatch"  # the records and the summary's counts disagree
    UNWATCHED_REPOSITORY = "UnwatchedRepository"  # a record of a repository this stack does not watch: ignored


# Iterating an Enum class is slow; the status function asks for every output's problem.
_BY_PRIORITY = tuple(OutputProblem)


def repository_of(reference: str) -> str:
    """``registry/repository@sha256:..`` or ``registry/repository:tag`` -> ``repository``; "" if it has no path."""
    _registry, slash, rest = reference.partition("/")
    if not slash:
        return ""
    return rest.split("@", 1)[0].split(":", 1)[0]


class _Lenient(BaseModel):
    # Fields may be added to the contract; unknown ones are kept out of the typed view, not fatal.
    model_config = ConfigDict(extra="ignore", frozen=True)


# Bounds of document/output.schema.json. Whatever a node prints, a value outside them is a bad record, never a
# number that breaks a reader later: 1e400 parses as inf (EMF would print Infinity), a 400-digit count overflows.
_MAX_TEXT = 1024
_MAX_COUNT = 10_000
_MAX_SECONDS = 1_000_000
_MAX_BYTES = 2**53 - 1  # what a JSON number (a double) holds exactly


def _seconds() -> Any:
    return Field(default=None, ge=0, le=_MAX_SECONDS, allow_inf_nan=False)


def _count() -> Any:
    return Field(default=0, ge=0, le=_MAX_COUNT)


def _text() -> Any:
    return Field(default=None, max_length=_MAX_TEXT)


class ImageRecord(_Lenient):
    image: str = Field(min_length=1, max_length=_MAX_TEXT)
    status: ImageStatus
    digest: str | None = Field(default=None, pattern=f"^{DIGEST_PATTERN}$")
    seconds: float | None = _seconds()
    bytes: int | None = Field(default=None, ge=0, le=_MAX_BYTES)
    pinned: bool | None = None
    error: str | None = _text()
    reason: str | None = _text()
    warning: str | None = _text()

    @property
    def repository(self) -> str:
        return repository_of(self.image)

    @property
    def failure_reason(self) -> str | None:
        """A failure's stable reason (node_contract.FAILURE_REASONS); "other" from a script that gives none or an
        unknown one; None unless failed."""
        if self.status != "failed":
            return None
        return self.reason if self.reason in FAILURE_REASONS else "other"

    @property
    def detail(self) -> str:
        """The record's explanation: the error of a failure, the reason of a skip, a warning of a pull."""
        return self.error or self.reason or self.warning or ""


class Summary(_Lenient):
    summary: Literal[True]
    images: int = _count()
    pulled: int = _count()
    cached: int = _count()
    skipped: int = _count()
    failed: int = _count()
    unpinned: int = _count()
    disk_used_percent: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    seconds: float | None = _seconds()
    # Per-image records left out to fit SSM's stdout limit; older scripts do not print it.
    omitted: int = _count()
    # A run-level failure (bad parameter, no ctr, lock not acquired): no image was touched.
    error: str | None = _text()
    # A node the document cannot serve (no containerd socket): no image was touched, and it is no failure.
    unsupported: str | None = _text()
    # A note on the run as a whole (the node's containerd config unread: the CRI's defaults assumed).
    warning: str | None = _text()


@dataclass(frozen=True)
class NodeOutput:
    records: tuple[ImageRecord, ...] = ()
    summary: Summary | None = None
    problems: frozenset[OutputProblem] = field(default_factory=frozenset)
    bad_lines: int = 0

    @property
    def problem(self) -> OutputProblem | None:
        """The one reason to count this output under, or None when it is well formed."""
        if not self.problems:
            return None
        if OutputProblem.NOT_JSON in self.problems and not self.records and self.summary is None:
            # Nothing readable at all: text, not a truncated run of the script.
            return OutputProblem.NOT_JSON
        return next((problem for problem in _BY_PRIORITY if problem in self.problems), None)

    @property
    def run_error(self) -> str | None:
        return self.summary.error if self.summary else None

    @property
    def unsupported(self) -> str | None:
        """Why the node cannot be served, when its run said so (and touched nothing)."""
        return self.summary.unsupported if self.summary else None

    @property
    def omitted_all_held(self) -> bool:
        """Records were left out to fit SSM's limit, and the summary's counts, consistent with the records, show that
        every one of them was pulled or cached (all failures and skips are among the records printed)."""
        summary = self.summary
        return (
            summary is not None
            and summary.omitted > 0
            and not summary.error
            and OutputProblem.SUMMARY_MISMATCH not in self.problems
            and summary.failed == len(self.by_status("failed"))
            and summary.skipped == len(self.by_status("skipped"))
        )

    def by_status(self, status: ImageStatus) -> list[ImageRecord]:
        return [record for record in self.records if record.status == status]


def _as_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's stack
        return None
    return value if isinstance(value, dict) else None


def _not_an_object(error: ValidationError) -> bool:
    """The line is not JSON, or JSON but not an object: not a record that fails the contract."""
    return any(item["type"] in {"json_invalid", "model_type"} and not item["loc"] for item in error.errors())


# The models' validators, called straight: the status function parses one output per invocation, and the classmethod
# around each call is a measurable share of a 20-image output (bench section 6).
_validate_record_json = ImageRecord.__pydantic_validator__.validate_json
_validate_summary_json = Summary.__pydantic_validator__.validate_json


def _read_summary_line(line: str) -> ImageRecord | Summary | OutputProblem:
    """A line that names "summary": the summary, or else a record, or why it is neither."""
    try:
        return _validate_summary_json(line)
    except ValidationError:
        pass  # told apart below, as a line of any other kind
    value = _as_object(line)
    if value is None:
        return OutputProblem.NOT_JSON
    try:
        return Summary.model_validate(value) if value.get("summary") is True else ImageRecord.model_validate(value)
    except ValidationError:
        return OutputProblem.BAD_RECORD


def parse_node_output(text: str | None, watched: Collection[str] | None = None) -> NodeOutput:
    """Typed records and summary of a node's stdout, and what is wrong with it. Never raises.

    The records are cross-checked with the summary (each image once, counts that add up), and, with ``watched``,
    records of other repositories are left out: a node's output never reaches beyond what this stack asked for.
    One pass: each record is de-duplicated and counted by status as it is read, so that the cross-checks walk the
    records no second time (the status function parses one output per invocation: bench section 6).
    """
    records: list[ImageRecord] = []
    seen: set[str] = set()
    counted = dict.fromkeys(IMAGE_STATUSES, 0)
    summary: Summary | None = None
    problems: set[OutputProblem] = set()
    bad_lines = 0
    read = False
    for line in (text or "").splitlines():
        if not line or line.isspace():
            continue
        read = True
        if summary is not None:
            # The summary is printed last; one followed by anything is not this script's output.
            summary = None
            problems.add(OutputProblem.BAD_RECORD)
            bad_lines += 1
        if '"summary"' in line:
            parsed = _read_summary_line(line)
            # By exact type: isinstance would go through pydantic's metaclass hook, line after line.
            if type(parsed) is Summary:
                summary = parsed
                continue
        else:
            # A per-image record, the bulk of every output: parsed and validated in one pass by pydantic-core,
            # without a Python dict in between (twice the throughput of json.loads then model_validate).
            try:
                parsed = _validate_record_json(line)
            except ValidationError as error:
                parsed = OutputProblem.NOT_JSON if _not_an_object(error) else OutputProblem.BAD_RECORD
        if type(parsed) is not ImageRecord:
            problems.add(parsed)
            bad_lines += 1
            continue
        record = parsed
        if record.image in seen:
            # The script reports each image once: a repeated record is counted once (the first), and marked.
            problems.add(OutputProblem.DUPLICATE_RECORD)
            continue
        seen.add(record.image)
        counted[record.status] += 1
        records.append(record)
    if not read:
        return NodeOutput(problems=frozenset({OutputProblem.EMPTY}))
    return _cross_checked(records, counted, summary, problems, watched, bad_lines)


def _cross_checked(
    records: list[ImageRecord],
    counted: dict[ImageStatus, int],
    summary: Summary | None,
    problems: set[OutputProblem],
    watched: Collection[str] | None,
    bad_lines: int,
) -> NodeOutput:
    if summary is None:
        problems.add(OutputProblem.NO_SUMMARY)
    elif not summary.error and not _adds_up(counted, len(records), summary):
        problems.add(OutputProblem.SUMMARY_MISMATCH)
    if watched is not None:
        kept = [record for record in records if record.repository in watched]
        if len(kept) < len(records):
            problems.add(OutputProblem.UNWATCHED_REPOSITORY)
            records = kept
    return NodeOutput(records=tuple(records), summary=summary, problems=frozenset(problems), bad_lines=bad_lines)


def _adds_up(by_status: dict[ImageStatus, int], records: int, summary: Summary) -> bool:
    """The summary counts every image once by status, including the records omitted to fit SSM's limit; a node that
    cannot be served reports on no image. ``by_status``: the records read (each image once), by status."""
    if summary.unsupported:
        return not records
    images = summary.pulled + summary.cached + summary.skipped + summary.failed
    return (
        images == summary.images
        and records + summary.omitted == summary.images
        and by_status["pulled"] <= summary.pulled
        and by_status["cached"] <= summary.cached
        and by_status["skipped"] <= summary.skipped
        and by_status["failed"] <= summary.failed
    )
