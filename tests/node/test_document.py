"""The SSM document's node script, run as the SSM agent runs it, against a real containerd and real registries.

Assertions read containerd's own state (`ctr -n k8s.io images ls` and labels), not only the script's report.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from eks_prefetch import node_contract
from harness.node import OUR_LABEL, PIN_LABEL, Run, basic_auth, free_port, run_document
from harness.template import document_content
from tests.node.conftest import AUTH, Node

pytestmark = pytest.mark.node

HEX = "0123456789abcdef" * 4
# The written contract of every line the script prints.
OUTPUT_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((Path(__file__).resolve().parents[2] / "document" / "output.schema.json").read_text())
)


def run(node: Node, workdir: Path, images: list[str] | str, text: bool = False, env=None, **params: str) -> Run:
    values = {"images": images if isinstance(images, str) else ",".join(images), **params}
    result = run_document(workdir, node.containerd, values, text_interpolation=text, extra_env=env)
    assert_well_formed(result)
    return result


def assert_well_formed(result: Run) -> None:
    """Every stdout line is a JSON object of document/output.schema.json, within what SSM keeps; the last one is the
    summary and agrees with the per-image records, counting the ones left out for space ("omitted") too."""
    assert len(result.stdout) < 24000
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    for line in lines:
        assert not [error.message for error in OUTPUT_SCHEMA.iter_errors(json.loads(line))], line
    summary = json.loads(lines[-1])
    assert summary["summary"] is True
    assert summary["omitted"] >= 0
    if "unsupported" in summary:
        # A node that cannot be served: no image touched, no failure.
        assert (result.images, summary["images"], summary["failed"], result.returncode) == ([], 0, 0, 0)
    elif "error" not in summary:
        statuses = [record["status"] for record in result.images]
        assert summary["images"] == len(statuses) + summary["omitted"]
        counts = {status: summary[status] for status in ("pulled", "cached", "skipped", "failed")}
        assert sum(counts.values()) == summary["images"]
        for status, count in counts.items():
            assert statuses.count(status) <= count
        if summary["omitted"] == 0:
            assert all(statuses.count(status) == count for status, count in counts.items())
        assert (result.returncode == 0) == (summary["failed"] == 0), result.stdout


def pinned_by_us(labels: dict[str, str]) -> bool:
    return labels.get(PIN_LABEL) == "pinned" and labels.get(OUR_LABEL, "").isdigit()


@pytest.mark.parametrize("text", [False, True], ids=["env-vars", "text-interpolation"])
def test_first_pull_by_digest_then_cached(node: Node, workdir: Path, lock_env: dict, text: bool) -> None:
    image = node.images["app-v1"]
    first = run(node, workdir, [image.by_digest], text=text, env=lock_env)
    assert first.returncode == 0, first.stdout + first.stderr
    (record,) = first.images
    assert record["status"] == "pulled"
    assert record["digest"] == image.digest
    assert record["bytes"] > 0
    assert record["pinned"] is True
    state = node.containerd.images()
    assert state[image.by_digest]["digest"] == image.digest
    assert pinned_by_us(state[image.by_digest]["labels"])

    again = run(node, workdir, [image.by_digest], text=text, env=lock_env)
    assert again.returncode == 0
    (record,) = again.images
    assert record["status"] == "cached"
    assert record["digest"] == image.digest
    assert record["seconds"] < 0.5
    assert set(node.containerd.images()) == {image.by_digest}


def test_tag_reference_is_resolved_every_time(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["tool"]
    first = run(node, workdir, [image.by_tag], env=lock_env)
    assert [(r["status"], r["digest"]) for r in first.images] == [("pulled", image.digest)]
    assert node.containerd.images()[image.by_tag]["digest"] == image.digest

    again = run(node, workdir, [image.by_tag], env=lock_env)
    assert [(r["status"], r["digest"]) for r in again.images] == [("cached", image.digest)]

    # The tag moves: the next run pulls the new digest under the same name.
    moved = node.push_new("tool-moved", "tools/tool", "1.0")
    try:
        third = run(node, workdir, [image.by_tag], env=lock_env)
        assert [(r["status"], r["digest"]) for r in third.images] == [("pulled", moved.digest)]
        assert node.containerd.images()[image.by_tag]["digest"] == moved.digest
    finally:
        node.registry.push(node.layout, "tool", "tools/tool", "1.0")
        node.images["tool"] = image


def test_pin_false_leaves_no_labels(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["app-v1"]
    result = run(node, workdir, [image.by_digest], env=lock_env, pin="false")
    assert result.images[0]["pinned"] is False
    assert node.containerd.images()[image.by_digest]["labels"] == {}


def test_unpins_beyond_retention_but_never_foreign_pins(node: Node, workdir: Path, lock_env: dict) -> None:
    v0, v1, v2, v3 = (node.images[f"app-v{n}"] for n in range(4))
    # Someone else pulled and pinned v0 of the same repository.
    node.containerd.ctr("images", "pull", "--plain-http", v0.by_digest)
    node.containerd.ctr("images", "label", v0.by_digest, f"{PIN_LABEL}=pinned")
    for image in (v1, v2):
        assert run(node, workdir, [image.by_digest], env=lock_env, keepPinned="2").returncode == 0
    state = node.containerd.images()
    assert all(pinned_by_us(state[i.by_digest]["labels"]) for i in (v1, v2))

    third = run(node, workdir, [v3.by_digest], env=lock_env, keepPinned="2")
    assert third.summary["unpinned"] == 1
    state = node.containerd.images()
    assert pinned_by_us(state[v2.by_digest]["labels"])
    assert pinned_by_us(state[v3.by_digest]["labels"])
    assert state[v1.by_digest]["labels"] == {}, "the oldest of our pins is released to kubelet GC"
    assert state[v0.by_digest]["labels"] == {PIN_LABEL: "pinned"}, "a foreign pin is never touched"

    # A later request for v1 does not make it one of the newest versions (without push times, the images' build
    # times order them): it stays unpinned, and v2 and v3 keep theirs.
    again = run(node, workdir, [v1.by_digest], env=lock_env, keepPinned="2")
    assert again.images[0]["pinned"] is False
    assert "newer versions are pinned" in again.images[0]["warning"]
    state = node.containerd.images()
    assert state[v1.by_digest]["labels"] == {}
    assert pinned_by_us(state[v2.by_digest]["labels"])
    assert pinned_by_us(state[v3.by_digest]["labels"])
    assert state[v0.by_digest]["labels"] == {PIN_LABEL: "pinned"}


@pytest.mark.parametrize("keep", [1, 2])
def test_pins_are_kept_for_the_newest_pushes_not_the_last_requested(
    node: Node, workdir: Path, lock_env: dict, keep: int
) -> None:
    """Commands reach a node out of order: the newest pushes keep their pins whatever was requested last. Here the
    newest push arrives first and the older ones late, each with its push time (pushedAt, from the functions)."""
    versions = [node.images[f"app-v{n}"] for n in range(3)]
    pushed = {image.digest: str(1700000000000 + 1000 * n) for n, image in enumerate(versions)}
    for image in reversed(versions):
        result = run(
            node, workdir, [image.by_digest], env=lock_env, keepPinned=str(keep), pushedAt=pushed[image.digest]
        )
        assert result.images[0]["status"] == "pulled"
    state = node.containerd.images()
    newest = versions[-keep:]
    for image in versions:
        assert pinned_by_us(state[image.by_digest]["labels"]) is (image in newest), image.tag
    # The late ones said so.
    late = run(
        node, workdir, [versions[0].by_digest], env=lock_env, keepPinned=str(keep), pushedAt=pushed[versions[0].digest]
    )
    assert late.images[0]["pinned"] is False
    assert all(pinned_by_us(node.containerd.images()[image.by_digest]["labels"]) for image in newest)


def test_cached_image_pinned_by_someone_else_stays_theirs(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["app-v2"]
    node.containerd.ctr("images", "pull", "--plain-http", image.by_digest)
    node.containerd.ctr("images", "label", image.by_digest, f"{PIN_LABEL}=pinned")
    result = run(node, workdir, [image.by_digest], env=lock_env, keepPinned="1")
    assert result.images[0]["status"] == "cached"
    assert result.images[0]["pinned"] is True
    assert node.containerd.images()[image.by_digest]["labels"] == {PIN_LABEL: "pinned"}


def test_mixed_batch_with_a_missing_image(node: Node, workdir: Path, lock_env: dict) -> None:
    one, tool = node.images["app-v1"], node.images["tool"]
    missing = f"{node.registry.host}/team/app@sha256:{HEX}"
    result = run(node, workdir, [one.by_digest, missing, tool.by_tag], env=lock_env)
    assert result.returncode != 0
    by_image = result.by_image()
    assert by_image[one.by_digest]["status"] == "pulled"
    assert by_image[tool.by_tag]["status"] == "pulled"
    assert by_image[missing]["status"] == "failed"
    assert by_image[missing]["reason"] == "not_found"
    assert set(node.containerd.images()) == {one.by_digest, tool.by_tag}


def test_registry_down(node: Node, workdir: Path, lock_env: dict) -> None:
    ref = f"127.0.0.1:{free_port()}/team/app:v1"
    result = run(node, workdir, [ref, node.images["app-v1"].by_digest], env=lock_env)
    assert result.returncode != 0
    record = result.by_image()[ref]
    assert record["status"] == "failed"
    assert record["reason"] == "unreachable"
    assert result.seconds < 10
    assert result.summary["pulled"] == 1


@pytest.fixture
def hung_registry() -> Iterator[str]:
    """Accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_hung_registry_is_bounded_by_the_pull_timeout(
    node: Node, workdir: Path, lock_env: dict, hung_registry: str
) -> None:
    ref = f"{hung_registry}/team/app@sha256:{HEX}"
    result = run(node, workdir, [ref, node.images["app-v1"].by_digest], env=lock_env, pullTimeoutSeconds="10")
    assert result.seconds < 30
    record = result.by_image()[ref]
    assert record["status"] == "failed"
    assert record["reason"] == "timeout"
    assert "timed out after 10s" in record["error"]
    assert result.summary["pulled"] == 1


def test_whole_run_deadline_stops_pulls_before_the_execution_timeout(
    node: Node, workdir: Path, lock_env: dict, hung_registry: str
) -> None:
    """executionTimeout 20 leaves a 15 s run; the hung registry uses 12 of them, so the next image, though it is on
    a working registry, is not pulled: it fails with the deadline, and the run ends before the agent would kill it."""
    hung = f"{hung_registry}/team/app:v1"
    good = node.images["app-v1"].by_digest
    result = run_document(
        workdir,
        node.containerd,
        {"images": f"{hung},{good}", "pullTimeoutSeconds": "12", "executionTimeout": "20"},
        extra_env=lock_env,
        timeout=60,
    )
    assert_well_formed(result)
    by_image = result.by_image()
    assert by_image[hung]["error"].startswith("timed out after "), by_image[hung]  # 12s, or less on a slow start
    assert by_image[good]["status"] == "failed"
    assert by_image[good]["error"] == "execution deadline reached before the pull"
    assert result.summary["failed"] == 2
    assert result.seconds < 20
    assert node.containerd.images() == {}


def test_runs_on_one_node_take_turns(node: Node, workdir: Path, lock_env: dict) -> None:
    """While another run holds the node's lock, a run waits for it until its deadline (executionTimeout 12 leaves
    7 s), then stops with a run-level error, having touched no image. Once the lock is free, the same run pulls.
    (Not 10, leaving 5 s: the script counts whole seconds, so a tick before its first image left 4, less than the
    5 s a pull needs, and the free run failed now and then.)"""
    image = node.images["app-v1"]
    values = {"images": image.by_digest, "executionTimeout": "12"}
    with Path(lock_env["PREFETCH_LOCK_FILE"]).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        blocked = run_document(workdir, node.containerd, values, extra_env=lock_env, timeout=60)
    assert_well_formed(blocked)
    assert blocked.returncode == 2
    assert blocked.summary["error"] == "another prefetch run held the lock until the deadline"
    assert node.containerd.images() == {}

    free = run_document(workdir, node.containerd, values, extra_env=lock_env, timeout=60)
    assert [record["status"] for record in free.images] == ["pulled"]
    assert image.by_digest in node.containerd.images()


def test_unauthorized_registry(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["secret"]
    result = run(node, workdir, [image.by_digest], env=lock_env)
    assert result.returncode != 0
    assert result.images[0]["status"] == "failed"
    # 1.6 and 1.7 say "401 Unauthorized", 2.x "authorization failed: no basic auth credentials": one reason.
    assert result.images[0]["reason"] == "unauthorized"
    assert node.containerd.images() == {}


def test_hosts_dir_authorization_header_authenticates(node: Node, tmp_path: Path) -> None:
    """The mechanism the script uses for ECR: a Basic Authorization header in a hosts.toml read with --hosts-dir,
    so the password never sits in ctr's argv."""
    image = node.images["secret"]
    host = node.auth_registry.host
    (tmp_path / host).mkdir()
    (tmp_path / host / "hosts.toml").write_text(
        f'server = "http://{host}"\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
        f'  [host."http://{host}".header]\n    Authorization = ["Basic {basic_auth(*AUTH)}"]\n'
    )
    node.containerd.ctr("images", "pull", "--hosts-dir", str(tmp_path), image.by_digest)
    assert node.containerd.images()[image.by_digest]["digest"] == image.digest


def test_disk_guard_skips_without_failing(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["app-v1"]
    result = run(node, workdir, [image.by_digest], env=lock_env, maxDiskUsagePercent="10")
    assert result.returncode == 0
    (record,) = result.images
    assert record["status"] == "skipped"
    assert "disk" in record["reason"]
    assert "maxDiskUsagePercent 10" in record["reason"]
    assert node.containerd.images() == {}


SMALL_FILESYSTEM_KIB = 64 * 1024
SMALL_FILESYSTEM_USED_KIB = 4 * 1024


@pytest.fixture
def small_filesystem(tmp_path: Path, node: Node) -> dict[str, str]:
    """A `df` double first on PATH: whatever it is asked about, a 64 MiB filesystem with 4 MiB used (it is a double:
    the numbers do not change when images land). The environment for a run that uses it."""
    avail = SMALL_FILESYSTEM_KIB - SMALL_FILESYSTEM_USED_KIB
    return command_double(
        tmp_path,
        "df",
        "#!/bin/sh\n"
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo 'df-double {SMALL_FILESYSTEM_KIB} {SMALL_FILESYSTEM_USED_KIB} {avail} 7% /small'\n",
        node,
    )


def command_double(tmp_path: Path, command: str, script: str, node: Node) -> dict[str, str]:
    """``command`` replaced by ``script``, first on the node's PATH (its containerd release next): the environment of
    a run that uses it."""
    bin_dir = tmp_path / f"{command}-double"
    bin_dir.mkdir()
    (bin_dir / command).write_text(script)
    (bin_dir / command).chmod(0o755)
    return {"PATH": f"{bin_dir}:{node.containerd.env().get('PATH', os.environ['PATH'])}"}


def estimated_usage(node: Node, compressed: int) -> str:
    """The usage the disk guard predicts on the `df` double's filesystem after a pull of ``compressed`` bytes: 3x
    them where the compressed blobs stay beside the unpacked snapshot (twice their size), 2x where the CRI discards
    them (the harness's nodes do, as EKS's)."""
    factor = 2 if node.containerd.discard_unpacked_layers else 3
    needed_kib = -(-compressed * factor // 1024)
    return f"{-(-(SMALL_FILESYSTEM_USED_KIB + needed_kib) * 100 // SMALL_FILESYSTEM_KIB)}% used"


def test_disk_guard_counts_the_estimated_size(
    node: Node, workdir: Path, lock_env: dict, small_filesystem: dict
) -> None:
    """8 MiB compressed, estimated at 2x with discard: 16 MiB more on the `df` double's 64 MiB filesystem with 4 MiB
    used is 32% (44% at 3x, without discard)."""
    big = node.images.get("big") or node.push_new("big", "team/big", "v1", layers_mb=[8])
    env = {**lock_env, **small_filesystem}
    skipped = run(node, workdir, [big.by_digest], env=env, maxDiskUsagePercent="30")
    assert skipped.images[0]["status"] == "skipped", skipped.stdout
    assert skipped.images[0]["bytes"] > 8 << 20
    assert estimated_usage(node, skipped.images[0]["bytes"]) == "32% used"
    assert "32% used" in skipped.images[0]["reason"]
    assert node.containerd.images() == {}
    pulled = run(node, workdir, [big.by_digest], env=env, maxDiskUsagePercent="50")
    assert pulled.images[0]["status"] == "pulled", pulled.stdout
    assert big.by_digest in node.containerd.images()


NODE_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
OTHER_ARCH = "arm64" if NODE_ARCH == "amd64" else "amd64"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def registry_request(host: str, path: str, method: str = "GET", body: bytes | None = None, media_type: str = ""):
    headers = {"Accept": OCI_MANIFEST} if method == "GET" else {"Content-Type": media_type}
    request = urllib.request.Request(f"http://{host}/v2/{path}", data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the test registry on 127.0.0.1
        return response.read(), response.headers


def push_index(node: Node, repo: str, tag: str, children: list[tuple[str, str]]) -> str:
    """An OCI index at repo:tag over (image name in node.images, architecture) children, in that order."""
    manifests = []
    for name, architecture in children:
        digest = node.images[name].digest
        body, _ = registry_request(node.registry.host, f"{repo}/manifests/{digest}")
        manifests.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"architecture": architecture, "os": "linux"},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, indent=2).encode()
    _, headers = registry_request(node.registry.host, f"{repo}/manifests/{tag}", "PUT", index, OCI_INDEX)
    return headers["Docker-Content-Digest"]


def test_multi_arch_index_is_estimated_from_this_nodes_platform(
    node: Node, workdir: Path, lock_env: dict, small_filesystem: dict
) -> None:
    """An index whose first entry is another platform's tiny image and whose entry for this node's platform is 8 MiB:
    the estimate (bytes) is the sum of this platform's manifest, and the disk guard counts it."""
    native = node.push_new("multi-native", "team/multi", "native", layers_mb=[8])
    node.push_new("multi-other", "team/multi", "other")
    index_digest = push_index(node, "team/multi", "v1", [("multi-other", OTHER_ARCH), ("multi-native", NODE_ARCH)])
    manifest = json.loads(registry_request(node.registry.host, f"team/multi/manifests/{native.digest}")[0])
    native_bytes = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    ref = f"{node.registry.host}/team/multi:v1"
    env = {**lock_env, **small_filesystem}

    skipped = run(node, workdir, [ref], env=env, maxDiskUsagePercent="30")
    (record,) = skipped.images
    assert (record["status"], record["bytes"]) == ("skipped", native_bytes), record
    assert estimated_usage(node, native_bytes) in record["reason"]
    assert node.containerd.images() == {}

    pulled = run(node, workdir, [ref], env=env, maxDiskUsagePercent="50")
    (record,) = pulled.images
    assert (record["status"], record["bytes"], record["digest"]) == ("pulled", native_bytes, index_digest), record
    assert node.containerd.images()[ref]["digest"] == index_digest


INJECTIONS = [
    "{host}/team/app@sha256:{hex};touch {marker}-semicolon",
    "$(touch {marker}-dollar)",
    "`touch {marker}-backtick`",
    "{host}/team/app:v1|touch {marker}-pipe",
    "{host}/team/app:v1&&touch {marker}-and",
    '{host}/team/app:v1\' "$(touch {marker}-quote)"',
    "{host}/team/app:v1 SSM_PARAM_END",
]


@pytest.mark.parametrize("text", [False, True], ids=["env-vars", "text-interpolation"])
def test_injection_attempts_execute_nothing(node: Node, workdir: Path, lock_env: dict, text: bool) -> None:
    marker = workdir / "pwned"
    attempts = [p.format(host=node.registry.host, hex=HEX, marker=marker) for p in INJECTIONS]
    good = node.images["app-v1"].by_digest
    result = run(node, workdir, ",".join([*attempts, good]), text=text, env=lock_env)
    assert not list(workdir.glob("pwned*")), "an injected command ran"
    assert result.returncode != 0
    statuses = [(r["status"], r.get("error")) for r in result.images]
    assert statuses[-1] == ("pulled", None)
    # Each attempt may split at its commas; every piece is rejected before any command sees it.
    assert all(status == ("failed", "invalid image reference") for status in statuses[:-1])
    assert set(node.containerd.images()) == {good}


def test_allowed_pattern_rejects_injections_and_newlines() -> None:
    """SendCommand enforces allowedPattern; it is what keeps a newline (the one way out of the here-document) out
    of text interpolation on old agents."""
    pattern = re.compile(document_content()["parameters"]["images"]["allowedPattern"])
    host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert pattern.fullmatch(f"{host}/team/app@sha256:{HEX},{host}/team/app:v1.2")
    for attempt in INJECTIONS:
        assert not pattern.fullmatch(attempt.format(host=host, hex=HEX, marker="/nonexistent/x"))
    assert not pattern.fullmatch(f"{host}/team/app:v1\nSSM_PARAM_END\ntouch /nonexistent/x")


def test_odd_characters_stay_parseable(node: Node, workdir: Path, lock_env: dict) -> None:
    odd = ['a"b\\c', "tab\there", "é-ünïcode", "ctl\x01\x1f", "x" * 5000]
    result = run(node, workdir, ",".join(odd), env=lock_env)
    assert [r["status"] for r in result.images] == ["failed"] * len(odd)
    assert all(len(r["image"]) < 500 for r in result.images)


def test_invalid_parameters_stop_the_run(node: Node, workdir: Path, lock_env: dict) -> None:
    result = run(node, workdir, [node.images["app-v1"].by_digest], env=lock_env, pin="yes")
    assert result.returncode != 0
    assert result.summary["error"] == "invalid parameter pin"
    assert node.containerd.images() == {}


# --- nodes the document cannot serve -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "not-a-socket", "not-answering"])
def test_containerd_installed_but_not_up_is_a_failure_to_retry(
    node: Node, workdir: Path, lock_env: dict, tmp_path: Path, kind: str
) -> None:
    """containerd is installed here, but nothing answers at CONTAINERD_ADDRESS within the wait
    (PREFETCH_SOCKET_WAIT_SECONDS of it): a new node's command before nodeadm has started containerd, or a restart.
    That is no platform this application cannot serve: the run fails (exit 2) with a stable reason, which repair
    retries, and touches nothing."""
    address = tmp_path / "containerd.sock"
    held = None
    if kind == "not-a-socket":
        address.write_text("")
    elif kind == "not-answering":
        held = socket.socket(socket.AF_UNIX)  # a socket file left by a containerd that is gone: nothing accepts
        held.bind(str(address))
    env = {**lock_env, "CONTAINERD_ADDRESS": str(address), "PREFETCH_SOCKET_WAIT_SECONDS": "1"}
    try:
        result = run(node, workdir, [node.images["app-v1"].by_digest], env=env)
    finally:
        if held is not None:
            held.close()

    assert result.returncode == 2, result.stdout + result.stderr
    assert "unsupported" not in result.summary
    assert result.summary["error"].startswith(node_contract.CONTAINERD_NOT_UP), result.summary
    assert str(address) in result.summary["error"]
    assert node.containerd.images() == {}


def bin_without_containerd(tmp_path: Path) -> str:
    """A PATH with only what the script runs before it looks for containerd: no containerd, no ctr (Bottlerocket's
    control container, where the SSM agent runs commands, has neither, nor the host's containerd socket)."""
    bin_dir = tmp_path / "bin-without-containerd"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "date", "sleep"):
        found = shutil.which(tool)
        assert found, f"{tool} is not on PATH"
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_a_host_without_containerd_at_the_default_socket_is_unsupported(
    node: Node, workdir: Path, lock_env: dict, tmp_path: Path
) -> None:
    """The script's own default address, as on Bottlerocket (a Linux node the precondition lets through): no socket
    at /run/containerd/containerd.sock, nor containerd to await. Unsupported, not "ctr not found": not a failure."""
    default = Path("/run/containerd/containerd.sock")
    if default.exists():
        pytest.fail(f"{default} exists on this machine: the test needs a host without containerd at the default")
    # An empty CONTAINERD_ADDRESS is unset to the script: its default, not the test node's socket.
    env = {**lock_env, "CONTAINERD_ADDRESS": "", "PATH": bin_without_containerd(tmp_path)}

    result = run(node, workdir, [node.images["app-v1"].by_digest], env=env)

    assert result.returncode == 0, result.stderr
    assert result.summary["unsupported"] == f"{node_contract.NO_CONTAINERD_SOCKET} at {default}"


def test_a_socket_that_appears_while_awaited_lets_the_run_go_on(
    node: Node, workdir: Path, lock_env: dict, tmp_path: Path
) -> None:
    """A new node's command can arrive before containerd has created its socket: it is awaited, then used."""
    address = tmp_path / "late" / "containerd.sock"
    address.parent.mkdir()
    env = {**lock_env, "CONTAINERD_ADDRESS": str(address), "PREFETCH_SOCKET_WAIT_SECONDS": "120"}
    image = node.images["app-v1"]
    appear = threading.Timer(1.0, lambda: address.symlink_to(node.containerd.address))

    def start(_proc: subprocess.Popen) -> None:
        appear.start()

    try:
        result = run_document(workdir, node.containerd, {"images": image.by_digest}, extra_env=env, on_start=start)
    finally:
        appear.cancel()
    assert_well_formed(result)

    assert result.returncode == 0, result.stderr
    assert [record["status"] for record in result.images] == ["pulled"]
    assert image.digest in {info["digest"] for info in node.containerd.images().values()}


def test_twenty_images_stay_far_below_the_output_limit(node: Node, workdir: Path, lock_env: dict) -> None:
    host = node.registry.host
    refs = [image.by_digest for name, image in node.images.items() if name.startswith("app-")]
    refs += [f"{host}/team/some-long-repository-name-{n}/component@sha256:{HEX}" for n in range(20 - len(refs))]
    result = run(node, workdir, refs, env=lock_env)
    assert len(result.images) == 20
    assert result.summary["pulled"] == 4
    assert result.summary["failed"] == 16
    assert len(result.stdout) < 12000
    assert len(result.stderr) < 1000


ECR_HOSTS = {
    "123456789012.dkr.ecr.us-east-1.amazonaws.com": "us-east-1",
    "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn": "cn-north-1",
    "123456789012.dkr-ecr.eu-west-2.on.aws": "eu-west-2",
}
FAKE_TOKEN = "eyJwYXlsb2FkIjoiRkFLRS1UT0tFTi0xMjM0NSJ9"  # noqa: S105 - a fake


@pytest.fixture
def fake_tools(tmp_path: Path) -> Path:
    """A fake `aws` (records its argv, prints a token) and a `ctr` wrapper that records every argv and a copy of
    the --hosts-dir it is given, then runs the real ctr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_ctr = subprocess.run(["bash", "-c", "command -v ctr"], capture_output=True, text=True, check=True)
    (bin_dir / "aws").write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> "{tmp_path}/aws.log"\necho {FAKE_TOKEN}\n')
    (bin_dir / "ctr").write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$*" >> "{tmp_path}/ctr.log"\n'
        'prev=""; for a in "$@"; do\n'
        f'  if [ "$prev" = --hosts-dir ]; then echo "$a" >> "{tmp_path}/hostsdirs.log"; '
        f'cp -r "$a/." "{tmp_path}/hosts-copy"; fi; prev=$a\n'
        "done\n"
        f'exec {real_ctr.stdout.strip()} "$@"\n'
    )
    for tool in ("aws", "ctr"):
        (bin_dir / tool).chmod(0o755)
    return tmp_path


def test_ecr_login_per_registry_region_and_the_token_stays_secret(
    node: Node, workdir: Path, lock_env: dict, fake_tools: Path
) -> None:
    refs = [f"{host}/team/app@sha256:{HEX}" for host in ECR_HOSTS]
    refs.append(refs[0].replace("team/app", "team/other"))  # same registry: no second login
    refs.append(node.images["app-v1"].by_digest)  # loopback: no login at all
    env = {
        **lock_env,
        "PATH": f"{fake_tools / 'bin'}:{os.environ['PATH']}",
        # Nothing may leave 127.0.0.1: the proxy is a closed local port, so the ECR pulls fail at once.
        "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    result = run(node, workdir, refs, env=env, pullTimeoutSeconds="20")
    aws_calls = (fake_tools / "aws.log").read_text().splitlines()
    assert aws_calls == [f"ecr get-login-password --region {region}" for region in ECR_HOSTS.values()]
    by_image = result.by_image()
    assert [by_image[ref]["status"] for ref in refs] == ["failed"] * 4 + ["pulled"]
    assert "ECR login" not in by_image[refs[0]]["error"]  # login worked; the (unreachable) registry failed

    secret_b64 = basic_auth("AWS", FAKE_TOKEN)
    ctr_argv = (fake_tools / "ctr.log").read_text()
    for text in (result.stdout, result.stderr, ctr_argv):
        assert FAKE_TOKEN not in text
        assert secret_b64 not in text
    for host in ECR_HOSTS:
        hosts_toml = (fake_tools / "hosts-copy" / host / "hosts.toml").read_text()
        assert f'server = "https://{host}"' in hosts_toml
        assert f'Authorization = ["Basic {secret_b64}"]' in hosts_toml
    # The token's directory is gone after the run.
    for hosts_dir in set((fake_tools / "hostsdirs.log").read_text().split()):
        assert not Path(hosts_dir).exists()


def test_ecr_login_failure_is_reported_per_image(node: Node, workdir: Path, lock_env: dict, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text("#!/bin/bash\necho 'Unable to locate credentials' >&2\nexit 255\n")
    (bin_dir / "aws").chmod(0o755)
    ref = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app@sha256:{HEX}"
    env = {**lock_env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run(node, workdir, [ref, ref.replace("team/app", "team/b")], env=env)
    assert [r["error"] for r in result.images] == ["ECR login failed: Unable to locate credentials"] * 2
    assert [r["reason"] for r in result.images] == ["login_failed"] * 2


def longest_reference(n: int) -> str:
    """A reference of the maximum length the document's allowedPattern accepts: a 253-character host with a
    5-digit port, a 256-character repository and a 128-character tag (644 characters)."""
    first_label = f"host{n:02d}".ljust(60, "h")
    host = ".".join([first_label, "a" * 63, "b" * 63, "c" * 63]) + ":65535"
    repo = f"team{n:02d}/".ljust(256, "r")
    tag = "v1.".ljust(128, "0")
    return f"{host}/{repo}:{tag}"


def unreachable_env(lock_env: dict) -> dict:
    """Registries other than 127.0.0.1 are reached through a closed local proxy port: they fail at once, with a
    long error, and nothing leaves the machine."""
    return {**lock_env, "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}", "NO_PROXY": "127.0.0.1,localhost"}


def test_worst_case_output_fits_what_ssm_keeps(node: Node, workdir: Path, lock_env: dict) -> None:
    """50 references of maximum length, all failing with long errors: stdout stays under the 24,000 characters
    GetCommandInvocation returns, the summary is last and whole, and what is left out is counted."""
    refs = [longest_reference(n) for n in range(50)]
    images = ",".join(refs)
    assert re.fullmatch(document_content()["parameters"]["images"]["allowedPattern"], images)
    result = run(node, workdir, images, env=unreachable_env(lock_env))
    assert len(result.stdout) < 24000
    assert len(result.stderr) < 8000
    summary = result.summary
    assert (summary["images"], summary["failed"], summary["pulled"]) == (50, 50, 0)
    assert summary["omitted"] > 0
    assert len(result.images) + summary["omitted"] == 50
    # Detail text went before any whole record: none of the printed records kept its error (the stable reason, a
    # few characters within each record's room, stays).
    assert all(set(record) == {"image", "status", "seconds", "reason"} for record in result.images), result.images[0]
    # Printed records name their image whole, in order, so a reader can tell which ones were left out.
    assert [record["image"] for record in result.images] == refs[: len(result.images)]
    assert node.containerd.images() == {}


def test_details_are_dropped_before_any_record(node: Node, workdir: Path, lock_env: dict) -> None:
    """50 typical references with long errors do not all fit with their errors: the later ones lose the error
    text, and every record is still printed."""
    refs = [f"registry-{n:02d}.example.com/team/{'some-long-repository-name-' * 8}{n}:v1.2.3" for n in range(50)]
    result = run(node, workdir, refs, env=unreachable_env(lock_env))
    assert len(result.stdout) < 24000
    assert result.summary["omitted"] == 0
    assert [record["image"] for record in result.images] == refs
    with_error = ["error" in record for record in result.images]
    assert with_error[0], result.images[0]
    assert not all(with_error)
    assert "registry-00.example.com" in result.images[0]["error"]


def test_stderr_stays_within_what_ssm_keeps(node: Node, workdir: Path, lock_env: dict, tmp_path: Path) -> None:
    """A noisy tool (a `uname` double that writes 20,000 characters to stderr, then runs the real uname): the run's
    stderr stays under the 8,000 characters SSM keeps and says how much it left out."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_uname = subprocess.run(["bash", "-c", "command -v uname"], capture_output=True, text=True, check=True)
    (bin_dir / "uname").write_text(
        f'#!/bin/bash\nprintf "noise%.0s" {{1..4000}} >&2\nexec {real_uname.stdout.strip()} "$@"\n'
    )
    (bin_dir / "uname").chmod(0o755)
    env = {**lock_env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    image = node.images["app-v1"]
    result = run(node, workdir, [image.by_digest], env=env)
    assert result.images[0]["status"] == "pulled"
    assert len(result.stderr) < 8000
    assert result.stderr.startswith("noisenoise")
    assert result.stderr.rstrip().endswith("(13000 more bytes of stderr not shown)")


@pytest.fixture
def clock_stepping_back(tmp_path: Path, node: Node) -> dict[str, str]:
    """A `date` double first on PATH whose `+%s%N` steps back a second at every call (chrony correcting the wall
    clock at boot); any other use goes to the real date. The environment for a run that uses it."""
    real_date = subprocess.run(["bash", "-c", "command -v date"], capture_output=True, text=True, check=True)
    return command_double(
        tmp_path,
        "date",
        "#!/bin/bash\n"
        f"state={tmp_path}/date-state\n"
        'now=$(cat "$state" 2>/dev/null || echo 1800000000000000000)\n'
        'echo $((now - 1000000000)) >"$state"\n'
        'if [ "$*" = "+%s%N" ]; then echo "$now"; exit 0; fi\n'
        f'exec {real_date.stdout.strip()} "$@"\n',
        node,
    )


def test_elapsed_times_ignore_the_wall_clock_stepping_back(
    node: Node, workdir: Path, lock_env: dict, clock_stepping_back: dict
) -> None:
    """Seconds come from the monotonic /proc/uptime: the wall clock stepping back leaves every record valid JSON
    (assert_well_formed validates each line against the schema) with its real, non-negative duration."""
    image = node.images["app-v1"]
    env = {**lock_env, **clock_stepping_back}
    result = run(node, workdir, ["not a reference", image.by_digest, image.by_digest], env=env)
    assert [record["status"] for record in result.images] == ["failed", "pulled", "cached"]
    assert all(0 <= record["seconds"] < 60 for record in [*result.images, result.summary])
    assert 0 < result.summary["seconds"] <= result.seconds


def test_elapsed_times_without_uptime_are_clamped_at_zero(
    node: Node, workdir: Path, lock_env: dict, clock_stepping_back: dict
) -> None:
    """Where /proc/uptime cannot be read, the wall clock is the fallback: stepping back, it gives 0, never a
    negative or malformed number."""
    image = node.images["app-v1"]
    env = {**lock_env, **clock_stepping_back, "PREFETCH_UPTIME_FILE": str(workdir / "no-uptime")}
    result = run(node, workdir, ["not a reference", image.by_digest], env=env)
    assert [record["status"] for record in result.images] == ["failed", "pulled"]
    assert [record["seconds"] for record in [*result.images, result.summary]] == [0, 0, 0]


def test_an_image_with_no_manifest_for_this_platform_is_skipped_not_failed(
    node: Node, workdir: Path, lock_env: dict
) -> None:
    """An index with a manifest for another architecture only (arm64-only on an amd64 node): skipped with the reason
    `platform`, nothing pulled, and the run exits 0; the image next to it is pulled as usual."""
    node.push_new("foreign-only", "team/foreign", "other")
    push_index(node, "team/foreign", "v1", [("foreign-only", OTHER_ARCH)])
    native = node.push_new("native-app", "team/native", "v1")
    foreign_ref = f"{node.registry.host}/team/foreign:v1"

    result = run(node, workdir, [foreign_ref, native.by_digest], env=lock_env)

    assert result.returncode == 0, result.stderr
    skipped, pulled = result.images
    assert (skipped["image"], skipped["status"]) == (foreign_ref, "skipped"), skipped
    assert skipped["reason"] == f"platform: no manifest for linux/{NODE_ARCH}"
    assert pulled["status"] == "pulled"
    assert (result.summary["skipped"], result.summary["failed"]) == (1, 0)
    assert foreign_ref not in node.containerd.images()
    assert_well_formed(result)


def test_failure_reasons_are_the_contracts() -> None:
    """The script's reasons, the output schema's and node_contract's are one set."""
    script = (Path(__file__).resolve().parents[2] / "document" / "prefetch.sh").read_text()
    body = script[script.index("failure_reason() {") : script.index("declare -A count=")]
    in_script = set(re.findall(r"_r=([a-z_]+)", body))
    schema = json.loads((Path(__file__).resolve().parents[2] / "document" / "output.schema.json").read_text())
    in_schema = set(schema["$defs"]["image"]["then"]["properties"]["reason"]["enum"])
    assert in_script == in_schema == set(node_contract.FAILURE_REASONS)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("failed to resolve reference: unexpected status: 401 Unauthorized", "unauthorized"),
        (
            "pull access denied, repository does not exist or may require authorization: authorization failed: "
            "no basic auth credentials",
            "unauthorized",
        ),
        ("failed to resolve reference: 127.0.0.1:5000/a@sha256:00: not found", "not_found"),
        ("tls: failed to verify certificate: x509: certificate signed by unknown authority", "tls"),
        ("dial tcp 127.0.0.1:1: connect: connection refused", "unreachable"),
        ("write /var/lib/containerd/x: no space left on device", "disk"),
        ("timed out after 10s", "timeout"),
        ("something new", "other"),
        ("failed to copy: unexpected status code 403 Forbidden", "unauthorized"),
        ("failed to resolve reference: unexpected status from HEAD request: 404", "not_found"),
        # A digest, a port or an account id holding 401/403/404 is not a status code (a dropped connection seen in
        # the demo was once classified "unauthorized" for the digest it named).
        (
            'httpReadSeeker: failed open: failed to do request: Get "http://127.0.0.1:44013/v2/ml/trainer/blobs/'
            'sha256:9f7f401a403b404c?ns=123401403404.dkr.ecr.us-east-1.amazonaws.com": dial tcp 127.0.0.1:44013: '
            "connect: connection refused",
            "unreachable",
        ),
    ],
)
def test_failure_reason_of_each_wording(text: str, reason: str) -> None:
    script = (Path(__file__).resolve().parents[2] / "document" / "prefetch.sh").read_text()
    body = script[script.index("failure_reason() {") : script.index("declare -A count=")]
    out = subprocess.run(
        ["bash", "-c", body + '\nfailure_reason r "$1"; printf %s "$r"', "bash", text],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == reason
