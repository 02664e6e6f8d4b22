"""Warm boot volumes (issue 19): image-ready time of a node booted on a warm volume against one booted cold.

The local harness on real containerd (harness.warm.WarmLoop in a harness.world.World): a builder pulls the image
through the stack's prefetch document and seals through WarmSealDocument; a copy of its sealed XFS volume stands in
for the EBS snapshot. Per round, one node boots cold and one on a copy of the snapshot (document/warm_boot.sh mounts
it before containerd starts); both then register and get the node-launch path's prefetch. Clock: from the node's
boot (its user data starts, before containerd) to the moment its CRI answers ImageStatus for every image by the pod's
tag (as kubelet asks).
Bytes: what the node's own route to the registry carried (a proxy per node).
"""

from __future__ import annotations

from bench.report import Row, Section, median, not_measured, ratio, verdict
from harness.node import missing_prerequisites
from harness.warm import WarmLoop, measure_boot, missing_block_tools
from harness.world import World

REPOSITORY = "ml/trainer"
PARAMETERS = {
    "ClusterName": "bench",
    "RepositoryNames": REPOSITORY,
    "NodeTagGraceSeconds": "0",
    "NodeLaunchRetryBaseSeconds": "1",
    "NodeLaunchRetryMaxSeconds": "1",
    # The stack's own builder (a state machine moto runs) makes the snapshot.
    "WarmVolumes": "true",
}
FIGURES = [
    "boot → images present, warm-booted node",
    "bytes pulled from the registry, warm-booted node",
    "build: builder pull, seal, snapshot copy",
]


def measure(section: Section, quick: bool) -> None:
    reason = missing_prerequisites() or missing_block_tools()
    if reason:
        not_measured(section, FIGURES, f"needs real nodes and loop devices: {reason} (root, make system-deps)")
        return
    layers_mb = [8.0, 8.0] if quick else [40.0, 40.0]
    rounds = 1 if quick else 3
    warm: list[dict] = []
    cold: list[dict] = []
    with World(dict(PARAMETERS), real_nodes=True) as world:
        world.push(REPOSITORY, "v1", layers_mb)
        world.settle(60)
        loop = WarmLoop(world)
        snapshot = loop.build()
        for index in range(rounds):
            boot = loop.boot_cold(f"cold-{index + 1}", proxy=True)
            cold.append(measure_boot(world, loop, boot, snapshot))
            boot = loop.boot_warm(f"warm-{index + 1}", proxy=True)
            warm.append(measure_boot(world, loop, boot, snapshot))
            if not warm[-1]["images_present_at_boot"]:
                raise RuntimeError(f"{boot.name} did not boot warm: {boot.line}")

    warm_seconds = median([result["seconds_to_images"] for result in warm])
    cold_seconds = median([result["seconds_to_images"] for result in cold])
    warm_bytes = max(result["bytes_pulled"] for result in warm)
    cold_bytes = median([result["bytes_pulled"] for result in cold])
    size = sum(layers_mb)
    section.rows += [
        Row(
            FIGURES[0],
            f"{warm_seconds:.2f} s (median of {rounds}; images present at boot, before the first prefetch)",
            f"{cold_seconds:.2f} s (cold node: node-launch path's prefetch pulls {size:.0f} MB)",
            ratio(warm_seconds, cold_seconds),
            "present at boot",
            verdict(all(result["images_present_at_boot"] for result in warm), "not present at boot"),
        ),
        Row(
            FIGURES[1],
            f"{warm_bytes / 1e6:.2f} MB",
            f"{cold_bytes / 1e6:.2f} MB (cold node)",
            ratio(warm_bytes, cold_bytes),
            "0 (every image cached)",
            verdict(warm_bytes == 0, f"{warm_bytes} bytes"),
        ),
        Row(FIGURES[2], f"{snapshot.build_seconds:.2f} s", verdict="(reported)"),
    ]
    section.notes.append(
        f"Method: `harness.warm.WarmLoop` (root, real containerd, loop devices), a {size:.0f} MB image of random "
        f"layers, {rounds} round{'s' if rounds > 1 else ''} of one cold and one warm node, one after the other. "
        "Clock: from the node's boot (its user data starts) to its CRI answering ImageStatus for the image by "
        "the pod's tag. The warm node's time is `warm_boot.sh` (stamp check, mount, `xfs_growfs`) and containerd's "
        "start; the cold node's adds the node-launch path (queue, handler, SendCommand) and the pull "
        "from the registry on 127.0.0.1. Not emulated: EBS's lazy loading of a volume made from a snapshot "
        "(a local file copy stands in: on AWS the first reads of each block come from S3 unless "
        "`VolumeInitializationRate` or Fast Snapshot Restore is set, see docs/warm-volumes.md), ECR's bandwidth, "
        "and instance boot before user data runs."
    )
