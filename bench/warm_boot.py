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
from harness.warm import VolumeUsage, WarmLoop, measure_boot, measure_one_push_behind, missing_block_tools
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
    "warm node, snapshot one push behind: bytes pulled / bytes of the changed layers",
    "snapshot data / the images' unpacked size",
    "snapshot data / the unpacked size, worst case: one image of one big incompressible layer",
    "the same, the volume's dirty pages written back during the pull (a pull bigger than the page cache)",
]
# The push after the snapshot's: the same layers and one more.
BEHIND_LAYER_MB = {True: 8.0, False: 20.0}
# The worst case for the snapshot's size: one layer, whose compressed blob is as big as its unpacked files.
WORST_LAYER_MB = {True: 16.0, False: 80.0}
# ... measured twice: with this machine's writeback (its page cache keeps a small build's short-lived files in memory),
# and with the volume's dirty pages written back this often during the pull, as a builder's pull of images bigger
# than its page cache has them written (harness.warm._Writeback).
WRITEBACK_SECONDS = 0.05


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
        # One push behind: v2 is v1's layers and one more; a node booted from v1's snapshot gets v2 first.
        newer = world.push(REPOSITORY, "v2", [BEHIND_LAYER_MB[quick]], based_on="v1")
        world.settle(60)
        behind = measure_one_push_behind(world, loop, snapshot, newer)
        usage = loop.usage(snapshot)
        if behind["missing"]:
            raise RuntimeError(f"{behind['node']} did not get {newer.repository}:v2: {behind['missing']}")
    worst: dict[float | None, VolumeUsage] = {}
    for writeback in (None, WRITEBACK_SECONDS):
        with World(dict(PARAMETERS), real_nodes=True) as world:
            world.push(REPOSITORY, "v1", [WORST_LAYER_MB[quick]])
            world.settle(60)
            loop = WarmLoop(world, writeback_seconds=writeback)
            worst[writeback] = loop.usage(loop.build())

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
        Row(
            FIGURES[3],
            f"{behind['pulled_per_changed_byte']:.3f}x ({behind['bytes_pulled'] / 1e6:.2f} MB pulled, "
            f"{behind['changed_layer_bytes'] / 1e6:.2f} MB of changed layers; layers it had, downloaded again: "
            f"{behind['unchanged_layers_downloaded']})",
            f"{(size + BEHIND_LAYER_MB[quick]) / 1.0:.0f} MB (a cold node pulls the whole of v2)",
            ratio(behind["bytes_pulled"], (size + BEHIND_LAYER_MB[quick]) * 1e6),
            "≤ 1.05x",
            verdict(
                behind["pulled_per_changed_byte"] <= 1.05 and behind["unchanged_layers_downloaded"] == 0,
                f"{behind['pulled_per_changed_byte']:.3f}x",
            ),
        ),
        Row(
            FIGURES[4],
            _size_measured(usage),
            f"{usage.unpacked_bytes / 1e6:.1f} MB (the images' unpacked layers)",
            "",
            "≤ 1.05x",
            verdict(usage.per_unpacked_byte is not None and usage.per_unpacked_byte <= 1.05, "see the note"),
        ),
        _size_row(FIGURES[5], worst[None], f"a fresh build of one {WORST_LAYER_MB[quick]:.0f} MB layer"),
        _size_row(
            FIGURES[6],
            worst[WRITEBACK_SECONDS],
            f"the same, written back every {WRITEBACK_SECONDS * 1000:.0f} ms during the pull",
        ),
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
    section.notes.append(
        f"One push behind: after the rounds, v2 is pushed (v1's layers and one new {BEHIND_LAYER_MB[quick]:.0f} MB "
        "layer) and a node boots from v1's snapshot; the node-launch path sends it v2. Bytes: what its route to the "
        "registry carried (the new layer, v2's manifest and config, HTTP headers) against the compressed size of the "
        "layers v2 has and v1 has not (from the manifests); layers downloaded again: GETs of v1's layer blobs in the "
        "registry's access log during that boot."
    )
    section.notes.append(
        "Snapshot data: the sealed volume's blocks written (its file's allocated blocks, zeros aside) less those of "
        "the same volume freshly formatted, against the size on disk of containerd's overlayfs snapshotter "
        "directory (the images' unpacked layers); the filesystem's used blocks (statvfs) likewise, in parentheses. "
        "Written blocks are what a first EBS snapshot stores: EBS has no TRIM, so a compressed layer blob written "
        "to the volume and deleted after its unpacking (discard_unpacked_layers) is stored all the same. The builder "
        "keeps containerd's content store on its root disk during the build and copies back only the blobs left "
        "(manifests, configs), so no layer blob is written to the volume (before: 2.03x in both rows); what is left "
        "is XFS's journal and metadata (about 2.3 MB a build). Worst case: a fresh build of one image of one "
        f"incompressible layer ({WORST_LAYER_MB[quick]:.0f} MB), its own World; then the same with the volume's "
        f"dirty pages written back every {WRITEBACK_SECONDS * 1000:.0f} ms during the pull (harness.warm._Writeback), "
        "as on a builder whose pull outgrows its page cache: the prefetch script's byte-range parts, files under "
        "containerd's root (on the volume) until streamed into the content store, then reach the volume "
        "(docs/warm-volumes.md, 'Snapshot size')."
    )


def _size_measured(usage: VolumeUsage) -> str:
    return (
        f"{usage.per_unpacked_byte:.2f}x ({usage.data_bytes / 1e6:.1f} MB of blocks written beyond an empty "
        f"volume, for {usage.unpacked_bytes / 1e6:.1f} MB of unpacked layers; the filesystem's own count: "
        f"{usage.used_per_unpacked_byte:.2f}x, content store {usage.content_bytes / 1e6:.1f} MB)"
    )


def _size_row(figure: str, usage: VolumeUsage, what: str) -> Row:
    return Row(
        figure,
        _size_measured(usage),
        f"{usage.unpacked_bytes / 1e6:.1f} MB ({what}, unpacked)",
        "",
        "≤ 1.05x",
        verdict(usage.per_unpacked_byte is not None and usage.per_unpacked_byte <= 1.05, "see the note"),
    )
