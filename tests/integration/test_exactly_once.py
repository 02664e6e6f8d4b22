"""Each (command, node) invocation counted exactly once, whatever the network, a crash or the node's output does.

Faults are injected at botocore's level (``tests/faults.py``: a request carried out whose reply is lost, a process
that dies mid-call), and hostile output through the ``FakeInvocations`` double of moto's SSM gaps (every command
``Success`` with no output; no ListCommandInvocations). Metrics are read from the EMF the function prints.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
import time_machine

from eks_prefetch import aws, settings
from eks_prefetch.status import metrics as status_metrics
from eks_prefetch.status import table as status_table
from eks_prefetch.status.claims import CLAIM_STALE_SECONDS
from harness.template import resource
from testing.deployment import load_handler
from testing.ecr import at, push_image
from testing.environment import DOCUMENT
from testing.events import scheduled_event, status_event
from testing.output import emf_documents, emitted, image_line, summary_line, total, values
from testing.ssm import Answer
from tests.faults import lose_replies
from tests.integration.conftest import INFERENCE, TRAINER
from tests.integration.test_status import (
    ENDED,
    C,
    claim,
    good_output,
    invoke,
    ref,
    row,
    run_node,
    send,
    send_to_new_node,
)


@pytest.fixture(autouse=True)
def _without_repair(status_env, monkeypatch):
    # Counting only; self-repair sends commands after each sweep and has its own tests.
    monkeypatch.setenv("REPAIR_ENABLED", "false")
    settings.load.cache_clear()


@pytest.fixture
def handler():
    return load_handler("status")


def strict_json_documents(stdout: str) -> list[dict[str, Any]]:
    """Every EMF document, parsed as strict JSON (Infinity and NaN are not JSON: CloudWatch drops the document)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} printed into the EMF")

    documents = [json.loads(line, parse_constant=refuse) for line in stdout.splitlines() if '"_aws"' in line]
    assert len(documents) == len(emf_documents(stdout))
    return documents


def pulled(repository: str, digest: str) -> str:
    return good_output([(ref(repository, digest), "pulled", digest)])


# --- lost replies and crashes ---------------------------------------------------------------------------------------


def test_a_claim_whose_reply_is_lost_is_still_counted_once(fake, images, handler, lambda_context, capsys):
    """The claim's conditional write is carried out, its reply lost; botocore's retry finds the claim: its own."""
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    fake.set(command_id, node, Answer("Success", "Success", pulled(TRAINER, digest), ENDED))
    lost = lose_replies(aws.client("dynamodb"), "PutItem", 1)
    capsys.readouterr()

    result = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))
    again = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT, event_id="e-2"))

    assert len(lost) >= 2  # the write, then botocore's retry of it
    assert (result["result"], again["result"]) == ("counted", "duplicate")
    printed = capsys.readouterr().out
    assert total(printed, "Invocations", **C) == 1
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    assert claim(command_id, node)["state"] == "counted"


def test_a_node_row_whose_reply_is_lost_still_measures_its_latencies(fake, images, handler, lambda_context, capsys):
    """The node row's update is carried out, its reply lost: the retry must still see that this report brought the
    digest (PushToCachedSeconds) and was the launch's first (LaunchToCachedSeconds)."""
    node = run_node(launched=at(4))
    digest = images[TRAINER]
    command_id = send_to_new_node(node, [ref(TRAINER, digest)])
    fake.set(command_id, node, Answer("Success", "Success", pulled(TRAINER, digest), ENDED))
    lose_replies(aws.client("dynamodb"), "UpdateItem", 2)  # the node row, then the launch's first report
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    assert values(printed, "PushToCachedSeconds", **C, Repository=TRAINER) == [300.0]
    assert values(printed, "LaunchToCachedSeconds", **C) == [60.0]


class Killed(BaseException):
    """The function's process dies (a timeout kill, an out-of-memory): nothing after it runs."""


def kill_first(client: Any, operation: str) -> list[str]:
    """The first call of ``operation`` never leaves: the process dies as it is about to send it."""
    killed: list[str] = []
    event = f"before-send.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def die(request: Any, **_: Any) -> None:
        if not killed:
            killed.append(request.url)
            raise Killed

    client.meta.events.register_first(event, die)
    return killed


def test_a_crash_between_the_node_row_and_the_claim_is_finished_by_the_retry(
    fake, images, handler, lambda_context, capsys
):
    node = run_node(launched=at(4))
    digest = images[TRAINER]
    command_id = send_to_new_node(node, [ref(TRAINER, digest)])
    fake.set(command_id, node, Answer("Success", "Success", pulled(TRAINER, digest), ENDED))
    killed = kill_first(aws.client("dynamodb"), "PutItem")  # the claim
    capsys.readouterr()

    with pytest.raises(Killed):
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))
    assert killed and claim(command_id, node) is None
    assert row(node, TRAINER)["digest"] == digest
    retried = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert retried["result"] == "counted"
    printed = capsys.readouterr().out
    assert total(printed, "Invocations", **C) == 1
    assert values(printed, "PushToCachedSeconds", **C, Repository=TRAINER) == [300.0]
    assert values(printed, "LaunchToCachedSeconds", **C) == [60.0]


def test_a_claim_left_unfinished_is_taken_over_by_the_sweep_once_stale(
    fake, fleet, images, handler, lambda_context, capsys, monkeypatch
):
    """A recording that dies after its claim, before its metrics: a second delivery leaves it (it may be at work),
    the sweep keeps its watermark on it, and takes it over once no function could still be running it."""
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    fake.set(command_id, node, Answer("Success", "Success", pulled(TRAINER, digest), ENDED))
    real_emit = status_metrics.emit_all

    def die(_documents):
        raise Killed

    monkeypatch.setattr(status_metrics, "emit_all", die)
    with pytest.raises(Killed):
        invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))
    monkeypatch.setattr(status_metrics, "emit_all", real_emit)
    assert claim(command_id, node)["state"] == "claimed"
    capsys.readouterr()

    second = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT, event_id="e-2"))
    early = invoke(handler, lambda_context, scheduled_event())
    assert second["result"] == "in_progress"
    assert early["counted"] == 0
    assert early["next_watermark"] <= status_table.timestamp(at(0) + timedelta(days=3650))
    assert total(capsys.readouterr().out, "Invocations", **C) == 0

    with time_machine.travel(status_table.parse_time(claim(command_id, node)["counted_at"]), tick=False) as clock:
        clock.shift(timedelta(seconds=CLAIM_STALE_SECONDS + 60))
        late = invoke(handler, lambda_context, scheduled_event())

    assert late["counted"] == 1
    printed = capsys.readouterr().out
    assert total(printed, "Invocations", **C) == 1
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    assert claim(command_id, node)["state"] == "counted"


def test_a_claim_goes_stale_only_after_the_status_function_can_no_longer_be_running():
    timeout = resource("StatusFunction")["Properties"]["Timeout"]
    assert 2 * int(timeout) <= CLAIM_STALE_SECONDS


# --- what a node prints ---------------------------------------------------------------------------------------------


def test_a_huge_count_in_the_summary_never_raises_and_is_counted_once(fake, images, handler, lambda_context, capsys):
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    stdout = image_line(ref(TRAINER, digest), "pulled", digest) + "\n" + summary_line(pulled=1, omitted=10**400)
    fake.set(command_id, node, Answer("Success", "Success", stdout, ENDED))
    capsys.readouterr()

    first = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))
    again = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT, event_id="e-2"))

    assert (first["result"], again["result"]) == ("counted", "duplicate")
    printed = capsys.readouterr().out
    strict_json_documents(printed)
    assert total(printed, "Invocations", **C) == 1
    assert total(printed, "InvocationsFailed", **C) == 1  # the output is not the script's: bad output


@pytest.mark.parametrize("seconds", ["1e400", "-1e400", "NaN"])
def test_no_seconds_value_prints_a_non_json_number_into_the_emf(fake, images, handler, lambda_context, capsys, seconds):
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    record = f'{{"image": "{ref(TRAINER, digest)}", "status": "pulled", "digest": "{digest}", "seconds": {seconds}}}'
    fake.set(command_id, node, Answer("Success", "Success", record + "\n" + summary_line(pulled=1), ENDED))
    capsys.readouterr()

    result = invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert result["result"] == "counted"
    printed = capsys.readouterr().out
    strict_json_documents(printed)
    assert total(printed, "Invocations", **C) == 1
    assert values(printed, "PullSeconds", **C, Repository=TRAINER) == []


def test_a_repeated_record_counts_once_and_is_bad_output(fake, images, handler, lambda_context, capsys):
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    line = image_line(ref(TRAINER, digest), "pulled", digest)
    fake.set(command_id, node, Answer("Success", "Success", "\n".join([line] * 200 + [summary_line(pulled=1)])))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    assert total(printed, "ImagesPulled", **C, Repository=TRAINER) == 1
    assert total(printed, "BadOutput", **C, Reason="DuplicateRecord") == 1


def test_records_of_repositories_not_watched_make_no_rows_and_no_dimensions(
    fake, images, handler, lambda_context, capsys
):
    node = run_node()
    digest = images[TRAINER]
    command_id = send([node], [ref(TRAINER, digest)])
    strangers = [image_line(ref(f"evil/repo-{index}", digest), "pulled", digest) for index in range(20)]
    stdout = "\n".join([image_line(ref(TRAINER, digest), "pulled", digest), *strangers, summary_line(pulled=21)])
    fake.set(command_id, node, Answer("Success", "Success", stdout, ENDED))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    printed = capsys.readouterr().out
    repositories = {dict(dimensions).get("Repository") for _name, dimensions, _value in emitted(printed)}
    assert repositories - {None} == {TRAINER}
    assert row(node, "evil/repo-0") is None
    assert row(node, TRAINER)["digest"] == digest
    assert total(printed, "BadOutput", **C, Reason="UnwatchedRepository") == 1


def test_an_omitted_count_that_does_not_add_up_marks_nothing_held(fake, images, handler, lambda_context, capsys):
    """Two images requested, no record, and a summary saying one was omitted: not "both held"."""
    node = run_node()
    trainer, inference = images[TRAINER], images[INFERENCE]
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference)])
    fake.set(command_id, node, Answer("Success", "Success", summary_line(pulled=2, omitted=1), ENDED))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert "digest" not in (row(node, TRAINER) or {})
    assert "digest" not in (row(node, INFERENCE) or {})
    assert total(capsys.readouterr().out, "BadOutput", **C, Reason="SummaryMismatch") == 1


def not_held_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage().startswith("omitted images not counted as held")]


def test_omitted_images_are_not_held_beyond_what_the_summary_accounts_for(
    fake, images, handler, lambda_context, caplog
):
    """Two images requested, no record, and a summary that adds up on its own terms (1 image, 1 pulled, 1 omitted):
    it accounts for one image, not two, and which one is unknown: neither row is held, and the function says why."""
    node = run_node()
    trainer, inference = images[TRAINER], images[INFERENCE]
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference)])
    fake.set(command_id, node, Answer("Success", "Success", summary_line(pulled=1, omitted=1), ENDED))

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert "digest" not in (row(node, TRAINER) or {})
    assert "digest" not in (row(node, INFERENCE) or {})
    (line,) = not_held_lines(caplog)
    assert line.levelno == logging.WARNING
    assert (line.command_id, line.instance_id, line.omitted, line.unreported) == (command_id, node, 1, 2)
    assert "which ones is ambiguous; they count as missing until the node reports them" in line.getMessage()


def test_omitted_images_are_held_when_the_summary_says_exactly_which(fake, images, handler, lambda_context, caplog):
    """Three requested, one reported, two omitted of three: the two unreported are the omitted ones."""
    node = run_node()
    trainer, inference = images[TRAINER], images[INFERENCE]
    older = push_image(TRAINER, "trainer-v0", tag="v0", pushed_at=at(-60))
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference), ref(TRAINER, older)])
    stdout = image_line(ref(TRAINER, older), "cached", older) + "\n" + summary_line(pulled=2, cached=1, omitted=2)
    fake.set(command_id, node, Answer("Success", "Success", stdout, ENDED))

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert (row(node, TRAINER)["digest"], row(node, TRAINER)["image_status"]) == (trainer, "held")
    assert (row(node, INFERENCE)["digest"], row(node, INFERENCE)["image_status"]) == (inference, "held")
    assert not_held_lines(caplog) == []


def test_omitted_images_of_a_summary_about_other_images_are_not_held(fake, images, handler, lambda_context, caplog):
    """Three requested, one reported, one omitted, but the summary counts two images: which unreported image it
    omitted is ambiguous, so none is held."""
    node = run_node()
    trainer, inference = images[TRAINER], images[INFERENCE]
    older = push_image(TRAINER, "trainer-v0", tag="v0", pushed_at=at(-60))
    command_id = send([node], [ref(TRAINER, trainer), ref(INFERENCE, inference), ref(TRAINER, older)])
    stdout = image_line(ref(TRAINER, older), "cached", older) + "\n" + summary_line(pulled=1, cached=1, omitted=1)
    fake.set(command_id, node, Answer("Success", "Success", stdout, ENDED))

    invoke(handler, lambda_context, status_event(command_id, node, "Success", DOCUMENT))

    assert row(node, TRAINER)["digest"] == older  # what it did report
    assert "digest" not in (row(node, INFERENCE) or {})
    (line,) = not_held_lines(caplog)
    assert (line.omitted, line.unreported, line.summary_images, line.requested) == (1, 2, 2, 3)


# --- order ----------------------------------------------------------------------------------------------------------


def test_a_later_report_of_an_older_digest_never_moves_the_row_back(
    fake, fleet, images, handler, lambda_context, capsys
):
    """Push order, not report order: a node that reported the newest digest keeps it when an older command's
    report (a node-launch command sent before the push, finishing later) arrives after it."""
    node = run_node()
    fleet.online.add(node)
    old = push_image(TRAINER, "trainer-v1-again", tag="v1b", pushed_at=at(-30))
    newest = images[TRAINER]
    new_command = send([node], [ref(TRAINER, newest)])
    fake.set(new_command, node, Answer("Success", "Success", pulled(TRAINER, newest), at(5)))
    old_command = send([node], [ref(TRAINER, old)])
    fake.set(old_command, node, Answer("Success", "Success", pulled(TRAINER, old), at(7)))
    capsys.readouterr()

    invoke(handler, lambda_context, status_event(new_command, node, "Success", DOCUMENT))
    invoke(handler, lambda_context, status_event(old_command, node, "Success", DOCUMENT, event_id="e-2"))
    again = send([node], [ref(TRAINER, newest)])
    fake.set(again, node, Answer("Success", "Success", good_output([(ref(TRAINER, newest), "cached", newest)]), at(9)))
    invoke(handler, lambda_context, status_event(again, node, "Success", DOCUMENT, event_id="e-3"))
    swept = invoke(handler, lambda_context, scheduled_event())

    assert row(node, TRAINER)["digest"] == newest
    assert swept["coverage"][TRAINER] == 100.0
    assert values(capsys.readouterr().out, "PushToCachedSeconds", **C, Repository=TRAINER) == [300.0]


def test_an_older_failure_never_overwrites_a_newer_one(fake, images, handler, lambda_context):
    node = run_node()
    digest = images[TRAINER]
    failing = '"status": "failed", "error": '
    newer = send([node], [ref(TRAINER, digest)])
    newer_output = good_output([(ref(TRAINER, digest), "failed", None)]).replace(
        '"status": "failed"', failing + '"disk full"'
    )
    fake.set(newer, node, Answer("Failed", "Failed", newer_output, at(9)))
    older = send([node], [ref(TRAINER, digest)])
    older_output = good_output([(ref(TRAINER, digest), "failed", None)]).replace(
        '"status": "failed"', failing + '"403"'
    )
    fake.set(older, node, Answer("Failed", "Failed", older_output, at(6)))

    invoke(handler, lambda_context, status_event(newer, node, "Failed", DOCUMENT))
    invoke(handler, lambda_context, status_event(older, node, "Failed", DOCUMENT, event_id="e-2"))

    state = row(node, TRAINER)
    assert (state["last_error"], state["last_error_at"]) == ("disk full", status_table.timestamp(at(9)))
