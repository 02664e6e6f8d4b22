"""The harness's stand-in for the Run Command agent runs each node's script while other threads start processes:
no run may fail for how it is started (`_script.sh: Text file busy` failed `make bench` on a busy machine)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.node import Containerd, run_document

THREADS = 16
RUNS_PER_THREAD = 12


def test_many_scripts_started_at_once_all_run(tmp_path: Path) -> None:
    """The real script with no images (it reaches no containerd) on 16 threads at once, each writing its script
    while the others fork: an executed file still open for writing in a forked child fails with ETXTBSY."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ctr").write_text("#!/bin/sh\nexit 1\n")  # the script checks ctr is there; no image calls it
    (bin_dir / "ctr").chmod(0o755)
    containerd = Containerd(tmp_path / "containerd")

    def node(index: int) -> list[tuple[int, str]]:
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PREFETCH_LOCK_FILE": str(tmp_path / f"lock-{index}"),
            # No containerd runs here: no wait for its socket (the run reports the node unsupported at once).
            "PREFETCH_SOCKET_WAIT_SECONDS": "0",
        }
        outcomes = []
        for run in range(RUNS_PER_THREAD):
            result = run_document(tmp_path / f"node-{index}" / str(run), containerd, {"images": ""}, extra_env=env)
            outcomes.append((result.returncode, result.stderr))
        return outcomes

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = [outcome for outcomes in pool.map(node, range(THREADS)) for outcome in outcomes]

    failures = [stderr for returncode, stderr in outcomes if returncode != 0]
    assert failures == [], f"{len(failures)} of {len(outcomes)} runs failed, e.g. {failures[0]}"
