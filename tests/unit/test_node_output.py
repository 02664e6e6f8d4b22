"""The one parser of the node script's output: the contract, and every kind of bad output, classified not raised."""

from __future__ import annotations

import json
import random

import pytest

from eks_prefetch.node_output import OutputProblem, parse_node_output, repository_of

DIGEST = "sha256:" + "ab" * 32
REF = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/ml/trainer@{DIGEST}"


def line(**fields) -> str:
    return json.dumps(fields)


SUMMARY = line(
    summary=True, images=2, pulled=1, cached=0, skipped=0, failed=1, unpinned=1, disk_used_percent=62, seconds=41.3
)
GOOD = "\n".join(
    [
        line(image=REF, status="pulled", digest=DIGEST, seconds=41.2, bytes=3758096384, pinned=True),
        line(image="127.0.0.1:5000/demo/app:v1", status="failed", seconds=0.5, error="not found"),
        SUMMARY,
    ]
)


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        (REF, "ml/trainer"),
        ("127.0.0.1:5000/demo/app:v1", "demo/app"),
        ("public.ecr.aws/docker/library/busybox:1.36", "docker/library/busybox"),
        ("registry:5000/app@sha256:00", "app"),
        ("no-slash", ""),
    ],
)
def test_repository_is_the_path_between_the_first_slash_and_the_digest_or_tag(reference, repository):
    assert repository_of(reference) == repository


def test_well_formed_output():
    output = parse_node_output(GOOD)

    assert output.problem is None
    assert output.problems == frozenset()
    pulled, failed = output.records
    assert (pulled.repository, pulled.status, pulled.digest, pulled.seconds, pulled.pinned) == (
        "ml/trainer",
        "pulled",
        DIGEST,
        41.2,
        True,
    )
    assert (failed.repository, failed.digest, failed.detail) == ("demo/app", None, "not found")
    assert output.summary is not None
    assert (output.summary.images, output.summary.failed, output.summary.omitted) == (2, 1, 0)
    assert output.by_status("pulled") == [pulled]


def test_omitted_records_are_read_from_the_summary():
    text = line(summary=True, images=300, pulled=300, omitted=120, seconds=1)

    assert parse_node_output(text).summary.omitted == 120


def test_run_level_failure_is_a_summary_with_an_error():
    output = parse_node_output(line(summary=True, images=0, failed=0, error="ctr not found on PATH", seconds=0.01))

    assert output.problem is None
    assert output.run_error == "ctr not found on PATH"
    assert output.records == ()


def test_a_node_that_cannot_be_served_says_so_in_its_summary_and_it_is_no_problem():
    unsupported = "no containerd socket at /run/containerd/containerd.sock"
    summary = line(summary=True, images=0, failed=0, omitted=0, unsupported=unsupported, seconds=0.01)

    output = parse_node_output(summary)

    assert output.problem is None
    assert output.run_error is None
    assert output.unsupported == unsupported
    # A run that reports on an image reached containerd: such a summary beside records is not the script's.
    record = line(image="127.0.0.1:5000/a@sha256:" + "ab" * 32, status="pulled", seconds=1)
    assert parse_node_output(f"{record}\n{summary}").problem is OutputProblem.SUMMARY_MISMATCH


@pytest.mark.parametrize("text", [None, "", "\n\n", "   \n"])
def test_empty_output(text):
    output = parse_node_output(text)

    assert output.problem is OutputProblem.EMPTY
    assert output.summary is None


def test_truncated_output_has_no_summary_and_a_cut_line():
    # SSM keeps the first 24,000 characters: the last record is cut mid-line, the summary is gone.
    text = GOOD[: GOOD.index(SUMMARY) - 20]

    output = parse_node_output(text)

    assert output.problem is OutputProblem.NO_SUMMARY
    assert output.problems == {OutputProblem.NO_SUMMARY, OutputProblem.NOT_JSON}
    assert [record.status for record in output.records] == ["pulled"]


def test_killed_run_has_whole_records_and_no_summary():
    output = parse_node_output(GOOD.rsplit("\n", 1)[0])

    assert output.problems == {OutputProblem.NO_SUMMARY}
    assert len(output.records) == 2


def test_text_that_is_not_json():
    output = parse_node_output("bash: ctr: command not found\nSegmentation fault")

    assert output.problems == {OutputProblem.NOT_JSON, OutputProblem.NO_SUMMARY}
    # Nothing readable: counted as not JSON, not as a truncated run.
    assert output.problem is OutputProblem.NOT_JSON
    assert output.bad_lines == 2


def test_not_json_line_among_good_ones():
    text = GOOD.replace(SUMMARY, "warning: something\n" + SUMMARY)

    output = parse_node_output(text)

    assert output.problem is OutputProblem.NOT_JSON
    assert output.summary is not None
    assert len(output.records) == 2


@pytest.mark.parametrize(
    "bad",
    [
        line(image=REF, status="exploded"),
        line(status="pulled"),
        line(image=REF, status="pulled", seconds=-1),
        "[1, 2]",
        '"a string"',
    ],
)
def test_objects_outside_the_contract_are_bad_records_or_not_json(bad):
    output = parse_node_output(bad + "\n" + SUMMARY)

    assert output.problem in {OutputProblem.BAD_RECORD, OutputProblem.NOT_JSON}
    assert output.summary is not None
    assert output.records == ()


def test_summary_not_last_is_not_trusted():
    output = parse_node_output(SUMMARY + "\n" + line(image=REF, status="cached", digest=DIGEST))

    assert output.summary is None
    assert output.problems == {OutputProblem.BAD_RECORD, OutputProblem.NO_SUMMARY}


def test_unknown_fields_are_tolerated():
    summary = line(summary=True, images=1, cached=1, seconds=0.2, checked_by="a newer script")
    output = parse_node_output(line(image=REF, status="cached", digest=DIGEST, layers=7) + "\n" + summary)

    assert output.problem is None
    assert output.records[0].status == "cached"


def test_omitted_records_are_all_held_only_when_every_failure_and_skip_was_printed():
    failed = line(image=REF, status="failed", error="x")
    all_held = parse_node_output(failed + "\n" + line(summary=True, images=40, pulled=39, failed=1, omitted=39))
    some_failed = parse_node_output(failed + "\n" + line(summary=True, images=40, pulled=37, failed=3, omitted=39))
    nothing_omitted = parse_node_output(failed + "\n" + line(summary=True, images=1, failed=1))

    assert all_held.omitted_all_held
    assert not some_failed.omitted_all_held
    assert not nothing_omitted.omitted_all_held


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1]", OutputProblem.NOT_JSON),
        ("42", OutputProblem.NOT_JSON),
        ('"text"', OutputProblem.NOT_JSON),
        ("{not json", OutputProblem.NOT_JSON),
        ('{"image": "registry/repo:tag"}', OutputProblem.BAD_RECORD),
        ('{"image": "registry/repo:tag", "status": "pulled", "seconds": NaN}', OutputProblem.BAD_RECORD),
    ],
)
def test_a_record_line_is_classified_as_before_the_one_pass_parse(line: str, problem: OutputProblem) -> None:
    output = parse_node_output(line + '\n{"summary": true}')
    assert problem in output.problems and output.bad_lines == 1 and not output.records


# --- The bounds of document/output.schema.json: whatever a node prints, out of bounds is a problem, never raised ---

HUGE = "x" * 100_000
DEEP = "[" * 100_000 + "]" * 100_000


def _record(**fields) -> str:
    return line(**{"image": REF, "status": "pulled", "digest": DIGEST, "seconds": 1.5, **fields})


@pytest.mark.parametrize(
    "bad",
    [
        _record(seconds=-1),
        _record().replace('"seconds": 1.5', '"seconds": 1e400'),  # json reads inf; EMF would print Infinity
        _record().replace('"seconds": 1.5', '"seconds": -1e400'),
        _record().replace('"seconds": 1.5', '"seconds": NaN'),
        _record().replace('"seconds": 1.5', '"seconds": Infinity'),
        _record().replace('"seconds": 1.5', '"seconds": 0.-498'),  # what the wall clock stepping back printed
        _record(seconds=10**400),
        _record(seconds=2_000_000),
        _record(bytes=10**400),
        _record(bytes=-5),
        _record(bytes=2**53),
        _record(digest="sha256:short"),
        _record(image=HUGE),
        _record(image=""),
        _record(status="failed", error=HUGE),
        _record(status="skipped", reason=HUGE),
        _record(warning=HUGE),
        '{"image": ' + DEEP + "}",
        '{"image": "' + "9" * 5000 + '"' + ', "status": "pulled", "bytes": ' + "9" * 5000 + "}",
    ],
    ids=lambda text: text[:60],
)
def test_out_of_bounds_records_are_bad_records_not_exceptions(bad: str) -> None:
    output = parse_node_output(bad + "\n" + SUMMARY)

    assert output.records == ()
    assert output.problem in {OutputProblem.BAD_RECORD, OutputProblem.NOT_JSON}
    assert output.bad_lines == 1
    assert output.summary is not None


def _summary(**fields) -> str:
    return line(**{"summary": True, "images": 1, "pulled": 1, "failed": 0, "omitted": 0, "seconds": 2.0, **fields})


@pytest.mark.parametrize(
    "bad",
    [
        _summary(omitted=int("9" * 400)),  # a 400-digit count: rejected here, no OverflowError later
        _summary(images=10_001),
        _summary(failed=-1),
        _summary(seconds=-1),
        _summary().replace('"seconds": 2.0', '"seconds": 1e400'),
        _summary().replace('"seconds": 2.0', '"seconds": NaN'),
        _summary().replace('"seconds": 2.0', '"seconds": -Infinity'),
        _summary(disk_used_percent=101),
        _summary().replace('"omitted": 0', '"omitted": ' + "9" * 5000),  # beyond what json converts to int
        _summary(error=HUGE),
        '{"summary": true, "images": ' + DEEP + "}",
    ],
    ids=lambda text: text[:60],
)
def test_out_of_bounds_summaries_are_bad_records_not_exceptions(bad: str) -> None:
    output = parse_node_output(line(image=REF, status="cached", digest=DIGEST, seconds=0.1) + "\n" + bad)

    assert output.summary is None
    assert OutputProblem.NO_SUMMARY in output.problems
    assert output.problems & {OutputProblem.BAD_RECORD, OutputProblem.NOT_JSON}
    assert len(output.records) == 1


def test_values_at_the_bounds_are_accepted():
    record = _record(seconds=1_000_000, bytes=2**53 - 1, image="r/" + "x" * 1022, warning="w" * 1024)
    summary = _summary(images=10_000, pulled=10_000, omitted=9_999, disk_used_percent=100, seconds=0)
    all_omitted = _summary(images=10_000, pulled=10_000, omitted=10_000, disk_used_percent=100, seconds=0)

    output = parse_node_output(record + "\n" + summary)

    assert output.problem is None
    assert output.records[0].bytes == 2**53 - 1
    assert parse_node_output(all_omitted).summary.omitted == 10_000
    assert parse_node_output(all_omitted).problem is None


def test_nothing_a_node_prints_raises():
    """Random lines, and valid lines cut or spliced at random places: every output is classified."""
    rng = random.Random(15)  # noqa: S311 - a reproducible fuzz, not a secret
    pieces = [GOOD, SUMMARY, _record(), DEEP[:3000], '"summary"', "1e400", "NaN", "\x00", "\ud800", "é", "{", "}"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces)[: rng.randrange(1, 300)] for _ in range(rng.randrange(1, 6)))
        if rng.random() < 0.3:
            text = "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 200)))
        output = parse_node_output(text)
        assert output.problem is not None or output.summary is not None


def test_blank_lines_padding_and_crlf_read_as_the_lines_they_hold() -> None:
    """SSM's output may carry CRLF line ends, blank lines or padded lines: read as the lines they hold."""
    padded = "\r\n".join(["", "  " + GOOD.splitlines()[0] + "  ", "\t", GOOD.splitlines()[1], "  " + SUMMARY, " "])

    output = parse_node_output(padded)

    assert output.problem is None and output.bad_lines == 0
    assert [record.status for record in output.records] == ["pulled", "failed"]
    assert output.summary is not None and output.summary.images == 2


def test_only_blank_lines_is_empty_output() -> None:
    assert parse_node_output(" \n\t\r\n").problem is OutputProblem.EMPTY
