"""The operator's commands at their edges: make status, make preflight and make unpin say "no region" and "no
credentials" in those words, before any AWS call, and exit 2; make status names what it cannot read."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from eks_prefetch import aws
from prefetchctl import preflight
from prefetchctl import status as report
from prefetchctl import unpin as make_unpin
from testing.cloudformation import DeployedStacks
from testing.environment import REGION

COMMANDS: dict[str, Callable[..., int]] = {
    "status": report.main,
    "preflight": preflight.main,
    "unpin": make_unpin.main,
}


def run(command: str, argv: Sequence[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = COMMANDS[command](list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def bare_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell with no AWS configuration at all, and no instance metadata to fall back on."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws.reset_clients()
    yield
    aws.reset_clients()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_region_says_set_region(bare_shell: None, command: str) -> None:
    assert run(command, ["--stack", "prefetch-prod"]) == (2, "", "no region (set REGION=<the stack's region>)\n")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_credentials_says_so(bare_shell: None, command: str) -> None:
    code, out, err = run(command, ["--stack", "prefetch-prod", "--region", REGION])

    assert (code, out) == (2, "")
    assert err == "no AWS credentials: configure them (aws configure, AWS_PROFILE=<profile>, or aws sso login)\n"


def test_status_of_an_unknown_stack_exits_two(aws_mock: None) -> None:
    DeployedStacks().missing("nope")

    code, out, err = run("status", ["--stack", "nope"])

    assert (code, out) == (2, "")
    assert err.splitlines()[0].startswith("cannot read the stack nope: ")


def test_status_of_another_stack_says_what_is_missing_without_internal_wording(aws_mock: None) -> None:
    DeployedStacks().exists("other", {"SomethingElse": "x"})

    code, _out, err = run("status", ["--stack", "other"])

    assert code == 2
    assert err == (
        "cannot read the stack other: stack other has no StatusFunctionName output: is it an EKS Image Prefetch "
        "stack of this version? (sam deploy it again)\n"
    )
    assert "issue" not in err


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "operator.sh"


def test_the_script_keeps_each_commands_exit_status_for_callers() -> None:
    """make turns any failure into 2; scripts/operator.sh passes the command's own status (and its message) on."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHON": sys.executable,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for command in ("status", "preflight", "unpin"):
        result = subprocess.run(
            [str(SCRIPT), command, "--stack", "prefetch-prod"], env=env, capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stderr) == (2, "no region (set REGION=<the stack's region>)\n"), command
    usage = subprocess.run([str(SCRIPT), "stats"], env=env, capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: python -m prefetchctl {status|preflight|unpin}")
