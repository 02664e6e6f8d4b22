"""`make invoke` at its edges: one-line errors (exit 2) for a missing file, bad JSON, an event of another function,
a bad parameter; the sample stack's parameters printed first; a readable result line last; the sweep sample finds
something; parameter overrides from make reach the stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import invoke

ROOT = Path(__file__).resolve().parents[2]
PUSH = str(ROOT / "events/ecr_push/push-tagged.json")
SWEEP = str(ROOT / "events/status/scheduled-sweep.json")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = invoke.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["EcrPushFunction", "events/nope.json"], "make invoke: no event file events/nope.json"),
        (["EcrPushFunction", "BAD"], "make invoke: BAD is not JSON: Expecting value at line 1, column 7"),
        (
            ["EcrPushFunction", SWEEP],
            f'make invoke: {SWEEP} is an aws.events "Scheduled Event" event: it is for StatusFunction, not '
            "EcrPushFunction",
        ),
        (
            ["NodeLaunchFunction", PUSH],
            f'make invoke: {PUSH} is an aws.ecr "ECR Image Action" event: it is for EcrPushFunction, not '
            "NodeLaunchFunction",
        ),
        (
            ["Nope", PUSH],
            "make invoke: no function Nope in template.yaml; functions: ConfigCheckFunction, EcrPushFunction, ",
        ),
        (
            ["EcrPushFunction", PUSH, "--parameter-overrides", "MaxErrors"],
            "make invoke: parameter override 'MaxErrors'",
        ),
        (["EcrPushFunction", PUSH, "--parameter-overrides", "Bogus=1"], "make invoke: unknown parameters: ['Bogus']"),
    ],
)
def test_a_bad_invocation_is_one_line_and_exits_two(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").write_text('{"a": ,}')

    code, out, err = run(capsys, *argv)

    assert (code, out) == (2, "")
    assert len(err) == 1
    assert err[0].startswith(message)


def test_prints_the_parameters_first_and_a_readable_result_last(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "EcrPushFunction", PUSH)

    assert code == 0
    assert err[0].startswith(
        "stack eks-image-prefetch (emulated) with ClusterName=ml-prod RepositoryNames=ml/trainer,ml/inference; "
    )
    result = json.loads(out)
    assert result["status"] == "sent"
    assert err[-1].startswith("result: EcrPushFunction: status=sent ")
    assert f"command_id={result['command_id']}" in err[-1]


def test_overrides_reach_the_stack(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "EcrPushFunction", PUSH, "--parameter-overrides", "TagFilter=^release-")

    assert code == 0
    assert "TagFilter=^release-" in err[0]
    assert json.loads(out) == {"status": "ignored", "reason": "tag does not match the filter"}


def test_the_sweep_sample_finds_a_node_holding_the_image_and_one_lacking_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "StatusFunction", SWEEP)

    assert code == 0
    result = json.loads(out)
    assert (result["result"], result["counted"], result["errors"]) == ("swept", 1, 0)
    assert result["coverage"] == {"ml/trainer": 50.0}
    assert any(line.startswith("seeded: no status event for the command on ") for line in err)
    assert err[-1].startswith("result: StatusFunction: result=swept ")
