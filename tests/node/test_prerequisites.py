"""The node tests never pass by skipping silently: missing prerequisites fail the run, unless SKIP_NODE_TESTS=1
says so, and then the run ends with a loud notice of what did not run.

Runs pytest in a subprocess whose PATH holds none of the node's binaries (so this needs neither root nor them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
A_NODE_TEST = "tests/node/test_document.py::test_pin_false_leaves_no_labels"


def run_pytest_without_node_binaries(
    tmp_path: Path, *pytest_args: str, **extra_env: str
) -> subprocess.CompletedProcess:
    empty_path = tmp_path / "empty-path"
    empty_path.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "SKIP_NODE_TESTS"}
    # One release: the node test runs once.
    env.update(PATH=str(empty_path), NODE_TEST_CONTAINERD="2.x", **extra_env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'inner'}",
            *pytest_args,
            A_NODE_TEST,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_prerequisites_fail_the_run(tmp_path: Path) -> None:
    result = run_pytest_without_node_binaries(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "node tests need " in result.stdout
    assert "set SKIP_NODE_TESTS=1" in result.stdout


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one process", "xdist"])
def test_opting_out_passes_with_a_loud_notice(tmp_path: Path, workers: tuple[str, ...]) -> None:
    """Under xdist too (`make check`, `make test`), where the workers collect and skip and the controller reports."""
    result = run_pytest_without_node_binaries(tmp_path, *workers, SKIP_NODE_TESTS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    notice = result.stdout[result.stdout.index("1 NODE TESTS DID NOT RUN (SKIP_NODE_TESTS=1)") :]
    assert "Reason: node tests need " in notice
    assert f"not run: {A_NODE_TEST}[containerd-2.x]" in notice
