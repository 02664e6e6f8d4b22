"""The harness's stand-in for the Run Command agent runs each node's script while other threads start processes:
no run may fail for how it is started (`_script.sh: Text file busy` failed `make bench` on a busy machine)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from eks_prefetch import node_contract
from harness.node import Containerd, run_document

THREADS = 16
RUNS_PER_THREAD = 12


def test_many_scripts_started_at_once_all_run(tmp_path: Path) -> None:
    """The real script with no images (it reaches no containerd) on 16 threads at once, each writing its script
    while the others fork: an executed file still open for writing in a forked child fails with ETXTBSY. Each runs in
    its node's mount namespace, as every harness run does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ctr").write_text("#!/bin/sh\nexit 1\n")  # the script checks ctr is there; no image calls it
    (bin_dir / "ctr").chmod(0o755)
    containerd = Containerd(tmp_path / "containerd")

    def node(index: int) -> list[tuple[int, str]]:
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PREFETCH_LOCK_FILE": str(tmp_path / f"lock-{index}"),
            # No containerd runs here: no wait for it (the run reports at once that containerd is not up).
            "PREFETCH_SOCKET_WAIT_SECONDS": "0",
        }
        outcomes = []
        for run in range(RUNS_PER_THREAD):
            result = run_document(tmp_path / f"node-{index}" / str(run), containerd, {"images": ""}, extra_env=env)
            outcomes.append((result.returncode, result.stdout, result.stderr))
        return outcomes

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = [outcome for outcomes in pool.map(node, range(THREADS)) for outcome in outcomes]

    # Each run reached its own end: its summary says containerd is not up (exit 2), nothing about how it started.
    failures = [
        stdout + stderr
        for returncode, stdout, stderr in outcomes
        if (returncode, stderr) != (2, "") or f'"error":"{node_contract.CONTAINERD_NOT_UP}: ' not in stdout
    ]
    assert failures == [], f"{len(failures)} of {len(outcomes)} runs failed, e.g. {failures[0]}"
