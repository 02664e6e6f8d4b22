"""`make demo` end to end, on containerd 1.7 (the other end-to-end tests run on 2.x, so both releases EKS AMIs ship
run the whole loop): the mixed cluster, the failure and its repair, coverage per repository, warm and cold boots, and
the CRI's view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.demo import SUMMARY_MARK
from tests.conftest import LOOP_DEVICES
from tests.e2e.conftest import require_real_nodes

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_SECONDS = 900
# Real containerd nodes (root). The demo's subprocess is bounded by its own timeout; the test's is a last resort.
# The demo boots warm nodes: loop devices, one user at a time (LOOP_DEVICES).
pytestmark = [pytest.mark.node, pytest.mark.timeout(DEMO_TIMEOUT_SECONDS + 60), LOOP_DEVICES]
# The GPU pool: two at the start, one scaled out through the node-launch path, one cold and one warm booted.
GPU = ["gpu-1", "gpu-2", "gpu-3", "scale-cold", "scale-warm"]


def test_make_demo_tells_the_whole_story_on_containerd_1_7() -> None:
    require_real_nodes()
    environment = {**os.environ, "HARNESS_CONTAINERD": "1.7"}
    run = subprocess.run(
        [sys.executable, "-m", "harness.demo"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith(SUMMARY_MARK)]
    summary = json.loads(line.removeprefix(SUMMARY_MARK))
    assert summary["dry_run"] is False

    # The failure, with its stable reason, and the sweep's repair of that node alone.
    assert summary["failed"] == [{"node": "gpu-2", "reason": "unreachable"}]
    assert (summary["repair"]["commands_sent"], summary["repair"]["nodes_repaired"]) == (1, 1)
    assert "repair command" in run.stdout and "gpu-2's row: repair attempt 1" in run.stdout

    # Each repository's own denominator: the trainer's selector picks the GPU pool; the arm64 node skipped the
    # amd64-only tools image (not applicable); the Windows node is outside every figure.
    assert summary["coverage"] == {"ml/trainer": 100.0, "ml/tools": 100.0}
    assert summary["coverage_detail"] == {
        "ml/trainer": {"percent": 100.0, "nodes": GPU, "missing": []},
        "ml/tools": {"percent": 100.0, "nodes": sorted(["cpu-1", *GPU]), "missing": []},
    }
    assert list(summary["unsupported"]) == ["win-1"]
    assert "ml/tools skipped (reason platform: no manifest for linux/arm64)" in run.stdout

    # What kubelet asks: the pushed tag is present and pinned, for linux/amd64, on the nodes it went to only.
    cri = summary["cri"]
    for node in GPU:
        assert cri[node]["containerd"].startswith("1.7.")
        assert cri[node]["ml/trainer"] == {"present": True, "pinned": True, "platform": "linux/amd64"}
        assert cri[node]["ml/tools"] == {"present": True, "pinned": True, "platform": "linux/amd64"}
        # In the CRI's snapshotter, and, as its discard_unpacked_layers leaves it, no compressed layer beside.
        assert cri[node]["node"]["snapshotter"] == "overlayfs"
        assert cri[node]["node"]["blobs"] < cri[node]["node"]["unpacked"] / 4
    assert cri["cpu-1"]["ml/trainer"] == {"present": False}
    assert cri["cpu-1"]["ml/tools"]["pinned"] is True
    assert cri["cpu-arm-1"] == {
        "containerd": cri["cpu-1"]["containerd"],
        "node": cri["cpu-arm-1"]["node"],
        "ml/trainer": {"present": False},
        "ml/tools": {"present": False},
    }
    assert cri["win-1"] == {"containerd": None}

    # Warm boot: the node booted on the snapshot's copy had its images before any command and pulled nothing; the
    # cold one pulled them.
    warm, cold = summary["warm_boot"], summary["cold_boot"]
    assert (warm["node"], warm["images_present_at_boot"], warm["bytes_pulled"]) == ("scale-warm", True, 0)
    assert warm["snapshot"].startswith("snap-")
    assert cold["node"] == "scale-cold" and cold["bytes_pulled"] > 0 and not cold["images_present_at_boot"]

    # Nothing lost, nothing sent where it does not belong, and the figures are the story's.
    assert set(summary["dead_letters"].values()) == {0}
    assert summary["non_nodes_sent_commands"] == []
    metrics = summary["metrics"]
    assert "BadOutput" not in metrics
    assert metrics["ImagesFailedByReason"]["sum"] == 1
    assert metrics["NodesRepaired"]["sum"] == 1
    # Only the nodes scaled out after the pushes got their first images through the new-node path: gpu-3, the cold
    # and the warm one.
    assert metrics["LaunchToCachedSeconds"]["points"] == 3
