"""The warm boot loop of issue 19 on real containerd (harness/warm.py): a builder pulls the newest images through the
stack's prefetch document and seals through WarmSealDocument; a copy of its sealed volume is the "snapshot",
registered in moto's EC2 and published in the stack's parameter; a new node boots on a copy of it through
document/warm_boot.sh, then registers, and the node-launch path sends it its prefetch.

Doubles, named: ``FakeImds`` (harness.warm, EC2's instance metadata service: the AMI the scripts compare), loop
devices for EBS volumes, a file copy for the snapshot (no lazy loading). Asserted on containerd's state through the
CRI (as kubelet asks), on the prefetch's own JSON output, on the registry's access log, and on moto's EC2 and SSM."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import boto3
import pytest

from harness.cluster import Node
from harness.cri import Cri
from harness.node import PIN_LABEL, Containerd, default_release, release_available
from harness.stack import REGION
from harness.warm import BUILDER_TAG, DIGEST_TAG_PREFIX, SNAPSHOT_TAG, Snapshot, WarmLoop, measure_one_push_behind
from harness.world import World
from tests.conftest import LOOP_DEVICES

pytestmark = [pytest.mark.node, LOOP_DEVICES]

REPOSITORIES = ("ml/trainer", "ml/tools")


def _tags(described: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}


def _launch_command(world: World, instance_id: str) -> dict[str, Any]:
    """The node-launch path's command to this node (the only one sent to it alone)."""
    (command,) = [c for c in world.commands() if c["InstanceIds"] == [instance_id]]
    return command


def _records(world: World, command_id: str, instance_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    text = world.invocation(command_id, instance_id)["StandardOutputContent"]
    lines = [json.loads(line) for line in text.splitlines()]
    (summary,) = [line for line in lines if line.get("summary")]
    return [line for line in lines if not line.get("summary")], summary


def _blob_gets(world: World) -> int:
    assert world.registry is not None
    return sum(world.registry.blob_gets(repository) for repository in REPOSITORIES)


def _mounted(path: str) -> bool:
    found = subprocess.run(["findmnt", "-rn", "--mountpoint", path], check=False, capture_output=True, text=True)
    return bool(found.stdout.strip())


def _requests(world: World, execution_arn: str) -> dict[str, dict[str, Any]]:
    """aws-sdk action -> the parameters of the execution's last call of it."""
    sfn = boto3.client("stepfunctions", region_name=REGION)
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return {
        event["taskScheduledEventDetails"]["resource"]: json.loads(event["taskScheduledEventDetails"]["parameters"])
        for event in events
        if event["type"] == "TaskScheduled"
    }


def _assert_built_and_published(world: World, loop: WarmLoop, snapshot: Snapshot, digests: dict[str, str]) -> None:
    # The builder: launched, tagged as the state machine tags it, given its copy of the stack's document
    # (WarmPullDocument) with the planner's parameters (the newest image of each repository, by the pod's tag and the
    # digest), then terminated. Never the cluster's PrefetchDocument: the status function never counts the builder.
    (prefetch,) = [
        c
        for c in world.commands()
        if c["DocumentName"] == world.stack.physical["WarmPullDocument"] and c["InstanceIds"] == [snapshot.builder]
    ]
    assert not [
        c
        for c in world.commands()
        if c["DocumentName"] == world.stack.document_name and snapshot.builder in c["InstanceIds"]
    ]
    assert prefetch["Parameters"]["images"] == [",".join(image.reference for image in snapshot.images)]
    assert {i.repository: i.digest for i in snapshot.images} == digests
    (reservation,) = world.ec2.describe_instances(InstanceIds=[snapshot.builder])["Reservations"]
    builder = reservation["Instances"][0]
    assert _tags(builder)[BUILDER_TAG] == world.stack.name
    assert builder["State"]["Name"] == "terminated"
    assert world.tags(snapshot.builder).get(world.node_tag[0]) is None  # never a cluster node

    # The seal: the stamp WarmSealDocument printed is this containerd's and this AMI's.
    node_release = Containerd(world.base / "unused")
    assert snapshot.stamp["containerd"].startswith(node_release.version)
    assert snapshot.stamp["ami"] == world.node_image()["ImageId"] == snapshot.ami

    # The snapshot in moto: of a volume tagged as the builder's, tagged with the AMI, architecture and
    # containerd; published in the stack's parameter and in a launch template version.
    (described,) = world.ec2.describe_snapshots(SnapshotIds=[snapshot.snapshot_id])["Snapshots"]
    tags = _tags(described)
    assert tags[SNAPSHOT_TAG] == world.stack.name
    assert tags["eks-image-prefetch:ami"] == snapshot.ami
    assert tags["eks-image-prefetch:architecture"] == world.node_image()["Architecture"]
    assert tags["eks-image-prefetch:containerd-version"] == snapshot.stamp["containerd"]
    # What it holds is in the parameter (below), not in tags: EC2 allows 50 per resource, keys of 128 characters.
    assert not [key for key in tags if key.startswith(DIGEST_TAG_PREFIX)]
    # Of the builder's data volume, launched tagged as the builder's and deleted with it (DeleteOnTermination).
    requests = _requests(world, loop.executions[0]["executionArn"])
    assert requests["createSnapshot"]["VolumeId"] == described["VolumeId"]
    (volume_tags,) = [
        spec["Tags"] for spec in requests["runInstances"]["TagSpecifications"] if spec["ResourceType"] == "volume"
    ]
    assert {tag["Key"]: tag["Value"] for tag in volume_tags}[BUILDER_TAG] == world.stack.name
    volume_filter = [{"Name": "volume-id", "Values": [described["VolumeId"]]}]
    assert world.ec2.describe_volumes(Filters=volume_filter)["Volumes"] == []
    published = loop.published()
    assert published["snapshotId"] == snapshot.snapshot_id
    assert (published["amiId"], published["containerdVersion"]) == (snapshot.ami, snapshot.stamp["containerd"])
    assert published["images"] == [{"repository": i.repository, "digest": i.digest} for i in snapshot.images]
    (version,) = world.ec2.describe_launch_template_versions(
        LaunchTemplateId=loop.launch_template_id, Versions=[str(published["launchTemplateVersion"])]
    )["LaunchTemplateVersions"]
    (mapping,) = version["LaunchTemplateData"]["BlockDeviceMappings"]
    assert mapping["Ebs"]["SnapshotId"] == snapshot.snapshot_id
    assert version["DefaultVersion"]

    # All of it by the stack's WarmVolumeBuilder, executed in moto: its execution succeeded, and the builder's three
    # steps, the snapshot, the launch template version and the parameter are its own calls.
    (execution,) = loop.executions
    assert execution["status"] == "SUCCEEDED"
    assert execution["name"] == snapshot.build == published["build"] == _tags(described)["eks-image-prefetch:build"]
    assert _tags(builder)["eks-image-prefetch:build"] == execution["name"]
    assert [
        c["DocumentName"]
        for c in sorted(world.commands(), key=lambda c: c["RequestedDateTime"])
        if c["InstanceIds"] == [snapshot.builder]
    ] == [
        world.stack.physical["WarmPrepareDocument"],
        world.stack.physical["WarmPullDocument"],
        world.stack.physical["WarmSealDocument"],
    ]
    requests = _requests(world, execution["executionArn"])
    assert (
        requests["createLaunchTemplateVersion"]["LaunchTemplateData"]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        == snapshot.snapshot_id
    )
    assert json.loads(requests["putParameter"]["Value"]) == published


def test_a_node_booted_from_the_sealed_copy_has_every_image_and_its_first_prefetch_finds_them_cached(
    make_world,
) -> None:
    world = make_world(RepositoryNames=",".join(REPOSITORIES), WarmVolumes="true")
    trainer = world.push("ml/trainer", "v1", [1.5, 1.5])
    tools = world.push("ml/tools", "1.0", [1.0])
    world.settle(60)
    loop = WarmLoop(world)

    snapshot = loop.build()

    _assert_built_and_published(world, loop, snapshot, {"ml/trainer": trainer.digest, "ml/tools": tools.digest})

    blobs_before = _blob_gets(world)
    boot = loop.boot_warm("warm-1", proxy=True)

    assert boot.warm, boot.line
    assert f"sealed by containerd {snapshot.stamp['containerd']} on {snapshot.ami}" in boot.line
    node = world.instances[boot.instance_id].node
    assert isinstance(node, Node)
    # Before its first prefetch (nothing sent to it yet), kubelet finds every image, by the pod's tag and by digest,
    # pinned against its image GC.
    assert not any(boot.instance_id in command.invocations for command in world.agent.commands.values())
    with Cri(node.containerd.address) as cri:
        for image in snapshot.images:
            for reference in (image.by_tag, image.by_digest):
                status = cri.image_status(reference)
                assert status is not None, reference
                assert image.by_digest in status.repo_digests
                assert status.pinned is True
    labels = {name: found["labels"].get(PIN_LABEL) for name, found in node.images().items()}
    assert {labels[image.by_tag] for image in snapshot.images} == {"pinned"}

    world.settle(120)

    command = _launch_command(world, boot.instance_id)
    assert command["Status"] == "Success"
    records, summary = _records(world, command["CommandId"], boot.instance_id)
    assert {(r["digest"], r["status"]) for r in records} == {(i.digest, "cached") for i in snapshot.images}
    assert (summary["cached"], summary["pulled"], summary["failed"]) == (2, 0, 0)
    assert summary["seconds"] < 1  # the script's own measure of its run
    assert _blob_gets(world) == blobs_before  # not one layer or config blob fetched
    assert world.instances[boot.instance_id].proxy.bytes_down == 0


def test_the_snapshot_stores_the_unpacked_layer_and_not_its_compressed_blob(make_world) -> None:
    """The worst case for the snapshot's size: one image of one big incompressible layer, whose compressed blob is
    as big as its unpacked files. EBS has no TRIM: a blob written to the data volume and deleted once unpacked
    (discard_unpacked_layers) is stored by the snapshot all the same, so the blocks written to the volume (the sealed
    file's allocated blocks, as a first snapshot stores them) must be the unpacked layer's and little more. And what
    the volume's containerd lists, a node booted from it can read: no blob it names is missing."""
    world = make_world(RepositoryNames="ml/trainer", WarmVolumes="true")
    image = world.push("ml/trainer", "v1", [24.0])
    world.settle(60)
    loop = WarmLoop(world)

    snapshot = loop.build()

    usage = loop.usage(snapshot)
    layer = max(json.loads(image.manifest)["layers"], key=lambda found: found["size"])
    assert 24_000_000 <= usage.unpacked_bytes <= 26_000_000
    # Written: the unpacked layer, and what XFS writes whatever the images (its journal: about 2.3 MB here), not any
    # part of the layer's blob again (the bench's 80 MB layer: 1.03x).
    assert usage.data_bytes - usage.unpacked_bytes < 4_000_000 < layer["size"], usage
    boot = loop.boot_warm("warm-worst", proxy=True)
    assert boot.warm, boot.line
    node = world.instances[boot.instance_id].node
    assert isinstance(node, Node)
    listed = node.containerd.content()
    layers = {found["digest"] for found in json.loads(image.manifest)["layers"]}
    assert image.digest in listed and not layers & set(listed)  # the CRI's state: layer blobs discarded
    for digest in listed:
        assert node.containerd.ctr("content", "get", digest, check=False).returncode == 0, digest
    with Cri(node.containerd.address) as cri:
        assert cri.image_status(snapshot.images[0].by_tag) is not None


def test_a_snapshot_sealed_by_another_containerd_is_not_mounted_and_the_node_pulls(make_world) -> None:
    nodes = default_release()
    other = "1.7" if nodes != "1.7" else "2.x"
    if not release_available(other):
        pytest.fail(f"containerd {other} is not fetched (scripts/containerd-releases.sh)", pytrace=False)
    world = make_world(RepositoryNames="ml/trainer", WarmVolumes="true")
    image = world.push("ml/trainer", "v1", [1.5])
    world.settle(60)
    loop = WarmLoop(world)

    snapshot = loop.build(release=other)
    boot = loop.boot_warm("warm-other", proxy=True)

    sealed_by = snapshot.stamp["containerd"]
    runs = Containerd(world.base / "unused").version
    assert boot.line.startswith("eks-image-prefetch: cold boot: "), boot.line
    assert f"sealed by containerd {sealed_by}, this node runs {runs}" in boot.line
    node = world.instances[boot.instance_id].node
    assert isinstance(node, Node)
    assert not _mounted(str(node.containerd.root))
    with Cri(node.containerd.address) as cri:
        assert cri.image_status(f"{snapshot.images[0].by_tag}") is None

    blobs_before = _blob_gets(world)
    world.settle(120)

    command = _launch_command(world, boot.instance_id)
    records, summary = _records(world, command["CommandId"], boot.instance_id)
    assert [(r["digest"], r["status"]) for r in records] == [(image.digest, "pulled")]
    assert summary["pulled"] == 1
    assert _blob_gets(world) > blobs_before
    assert world.instances[boot.instance_id].proxy.bytes_down >= image.size
    with Cri(node.containerd.address) as cri:
        status = cri.image_status(snapshot.images[0].by_tag)
    assert status is not None and status.pinned is True


def test_a_node_booted_from_a_snapshot_one_push_behind_downloads_only_the_changed_layers(make_world) -> None:
    """The snapshot holds v1; v2 (v1's layers and one more) is the newest when the node boots: its first prefetch
    pulls v2, and only v2's new layer crosses its route (plus the manifest and config): a snapshot one push behind
    is still worth booting. The bench reports the ratio (BENCHMARKS.md, warm boot volumes)."""
    world = make_world(RepositoryNames="ml/trainer", WarmVolumes="true")
    world.push("ml/trainer", "v1", [1.5, 1.5])
    world.settle(60)
    loop = WarmLoop(world)
    snapshot = loop.build()
    newer = world.push("ml/trainer", "v2", [1.0], based_on="v1")
    world.settle(60)

    result = measure_one_push_behind(world, loop, snapshot, newer)

    assert result["boot"].startswith("eks-image-prefetch: warm boot: "), result["boot"]
    assert result["missing"] == []  # v2 present by the pod's tag once its prefetch ran
    assert result["unchanged_layers_downloaded"] == 0
    assert 1_000_000 <= result["changed_layer_bytes"] <= 1_100_000
    assert result["changed_layer_bytes"] <= result["bytes_pulled"] <= 1.05 * result["changed_layer_bytes"]
