"""Node pull against kubelet's (issue 28): the prefetch document's pull against the CRI's PullImage, kubelet's pull,
in the same run, from the same throttled registry, on containerd 1.7 and 2.x.

Each node is configured as EKS configures containerd (harness.node.Containerd: discard_unpacked_layers, registry
config_path certs.d), and the registry is reached through a proxy that sends each connection's responses at most
RATE bytes a second (ECR serves layers from S3, whose guidance budgets a rate per connection): what more connections
and byte ranges gain shows, as on a node. Two image shapes of random (incompressible) layers: several layers, and one
big layer. Per round, each side pulls cold (images removed, garbage collected, dirty pages synced), alternating which
goes first; the figures are medians. Disk: bytes under containerd's root once garbage is collected, less the empty
node's. With a mirror in certs.d (a second registry holding the images, behind its own throttled proxy): the blob
requests that reach the origin. Then the big layer's pull with several `connections` values: how the default was
chosen. Needs root and the node binaries (make system-deps); without them the rows say why.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Row, Section, not_measured, ratio, verdict
from eks_prefetch import node_contract
from harness.cri import Cri
from harness.node import (
    RELEASE_SUITES,
    Containerd,
    Registry,
    build_image,
    missing_prerequisites,
    release_available,
    run_document,
)
from harness.proxy import RegistryProxy

MB = 1_000_000
RATE = 20 * MB  # per connection, as in the measurements
TARGET_TIME = 0.6
TARGET_DISK = 1.05
RESULTS = Path(__file__).resolve().parent / "results" / "node_pull.json"


@dataclass(frozen=True)
class Shape:
    name: str
    layers_mb: list[float]


def shapes(quick: bool) -> list[Shape]:
    if quick:
        return [Shape("7 layers of 16 MB", [16.0] * 7), Shape("1 layer of 96 MB", [96.0])]
    return [Shape("7 layers of 48 MB", [48.0] * 7), Shape("1 layer of 320 MB", [320.0])]


def releases() -> list[str]:
    return [release for release in RELEASE_SUITES if release_available(release)]


def figures(quick: bool) -> list[str]:
    names = []
    for release in RELEASE_SUITES:
        for shape in shapes(quick):
            names += [f"wall time, {shape.name}, containerd {release}", f"disk left, {shape.name}, {release}"]
        names.append(f"origin blob requests with a mirror, containerd {release}")
    return names


def timed(fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


@dataclass
class Bench:
    base: Path
    registry: Registry
    mirror: Registry
    images: dict[str, tuple[str, str]]  # shape name -> (repository, digest)


@contextmanager
def registries(quick: bool) -> Iterator[Bench]:
    base = Path(tempfile.mkdtemp(prefix="eks-prefetch-bench-pull-", dir="/var/tmp"))
    registry, mirror = Registry(base / "registry"), Registry(base / "mirror")
    try:
        registry.start()
        mirror.start()
        images = {}
        for index, shape in enumerate(shapes(quick)):
            name = f"shape{index}"
            build_image(base / "layout", name, shape.layers_mb, seed=name)
            repository = f"bench/{name}"
            digest = registry.push(base / "layout", name, repository, "v1")
            mirror.push(base / "layout", name, repository, "v1")
            images[shape.name] = (repository, digest)
        shutil.rmtree(base / "layout", ignore_errors=True)
        yield Bench(base, registry, mirror, images)
    finally:
        mirror.stop()
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


def cold(containerd: Containerd) -> int:
    """An empty node: its bytes on disk."""
    containerd.remove_all_images()
    os.sync()
    return containerd.disk_bytes()


WARNINGS: list[str] = []


def prefetch(containerd: Containerd, workdir: Path, ref: str, **params: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"PREFETCH_LOCK_FILE": str(workdir / "prefetch.lock")}
    run = run_document(workdir, containerd, {"images": ref, **params}, extra_env=env)
    records = run.images
    if run.returncode != 0 or not records or records[0]["status"] != "pulled":
        raise RuntimeError(f"the prefetch did not pull {ref}: {run.stdout} {run.stderr[-2000:]}")
    if "warning" in records[0]:
        WARNINGS.append(f"containerd {containerd.release}: {records[0]['warning']}")


def pull_rounds(bench: Bench, containerd: Containerd, shape: Shape, rounds: int) -> dict[str, Any]:
    repository, digest = bench.images[shape.name]
    proxy = RegistryProxy(bench.registry.host, RATE)
    workdir = bench.base / "work"
    try:
        ref = f"{proxy.host}/{repository}@{digest}"
        measured = []
        with Cri(containerd.address) as cri:
            sides = {"kubelet": lambda: cri.pull_image(ref), "prefetch": lambda: prefetch(containerd, workdir, ref)}
            for index in range(rounds):
                order = list(sides) if index % 2 == 0 else list(reversed(sides))
                result: dict[str, Any] = {"first": order[0]}
                for side in order:
                    empty = cold(containerd)
                    proxy.reset()
                    result[f"{side}_seconds"] = timed(sides[side])
                    result[f"{side}_connections"] = proxy.peak_connections
                    result[f"{side}_bytes"] = containerd.disk_bytes() - empty
                measured.append(result)
        return {"ref": ref, "rounds": measured}
    finally:
        proxy.close()


def mirror_round(bench: Bench, containerd: Containerd, shape: Shape) -> dict[str, int]:
    """Each side pulls once with certs.d naming the mirror for the origin: blob GETs each registry served."""
    repository, digest = bench.images[shape.name]
    origin, mirror = RegistryProxy(bench.registry.host, RATE), RegistryProxy(bench.mirror.host, RATE)
    hosts = containerd.hosts(
        origin.host,
        f'server = "http://{origin.host}"\n[host."http://{mirror.host}"]\n  capabilities = ["pull", "resolve"]\n',
    )
    counts: dict[str, int] = {}
    try:
        ref = f"{origin.host}/{repository}@{digest}"
        with Cri(containerd.address) as cri:
            sides = {
                "kubelet": lambda: cri.pull_image(ref),
                "prefetch": lambda: prefetch(containerd, bench.base / "work", ref),
            }
            for side, pull in sides.items():
                cold(containerd)
                origin.reset()
                mirror.reset()
                pull()
                counts[f"{side}_origin"] = _blob_gets(origin)
                counts[f"{side}_mirror"] = _blob_gets(mirror)
        return counts
    finally:
        shutil.rmtree(hosts.parent)
        origin.close()
        mirror.close()


def _blob_gets(proxy: RegistryProxy) -> int:
    return sum(1 for head in proxy.requests if head.startswith("GET ") and "/blobs/" in head)


def connections_sweep(bench: Bench, containerd: Containerd, shape: Shape, values: list[int]) -> dict[int, float]:
    repository, digest = bench.images[shape.name]
    proxy = RegistryProxy(bench.registry.host, RATE)
    try:
        ref = f"{proxy.host}/{repository}@{digest}"
        seconds = {}
        for value in values:
            cold(containerd)
            seconds[value] = timed(lambda v=value: prefetch(containerd, bench.base / "work", ref, connections=str(v)))
        return seconds
    finally:
        proxy.close()


def run_release(bench: Bench, release: str, quick: bool) -> dict[str, Any]:
    containerd = Containerd(bench.base / f"containerd-{release}", release=release)
    containerd.start()
    try:
        rounds = 1 if quick else 3
        results: dict[str, Any] = {"version": containerd.version, "shapes": {}}
        for shape in shapes(quick):
            results["shapes"][shape.name] = pull_rounds(bench, containerd, shape, rounds)
        results["mirror"] = mirror_round(bench, containerd, shapes(quick)[0])
        if release == releases()[-1]:
            values = [3, 8] if quick else [3, 8, 16]
            results["sweep"] = connections_sweep(bench, containerd, shapes(quick)[-1], values)
        cold(containerd)
        return results
    finally:
        containerd.stop()
        shutil.rmtree(containerd.base, ignore_errors=True)


def measure(section: Section, quick: bool) -> None:
    chosen = releases()
    reason = missing_prerequisites(tuple(chosen)) if chosen else "no containerd 1.7 or 2.x under .build"
    if reason:
        not_measured(section, figures(quick), reason)
        return
    with registries(quick) as bench:
        results = {release: run_release(bench, release, quick) for release in chosen}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for release in chosen:
        report_release(section, release, results[release], quick)
    report_sweep(section, results[chosen[-1]], chosen[-1], quick)
    for warning in sorted(set(WARNINGS)):
        section.notes.append(f"The prefetch's record said: {warning}.")
    section.notes.append(
        f"Registry throttled to {RATE / MB:.0f} MB/s per connection (loopback proxy); kubelet's pull is the CRI's "
        "PullImage (3 connections: containerd's max_concurrent_downloads); the prefetch runs the document's script "
        f"with its defaults ({node_contract.DEFAULT_CONNECTIONS} connections, "
        f"{node_contract.RANGE_CHUNK_BYTES >> 20} MiB byte ranges). Medians of "
        f"{1 if quick else 3} rounds per side, alternating which goes first. Raw figures in "
        "`bench/results/node_pull.json` (not committed)."
    )


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(round_[key] for round_ in rounds)


def report_release(section: Section, release: str, results: dict[str, Any], quick: bool) -> None:
    version = results["version"]
    for shape in shapes(quick):
        rounds = results["shapes"][shape.name]["rounds"]
        ours, kubelet = _median(rounds, "prefetch_seconds"), _median(rounds, "kubelet_seconds")
        conns = max(round_["prefetch_connections"] for round_ in rounds)
        kubelet_conns = max(round_["kubelet_connections"] for round_ in rounds)
        section.rows.append(
            Row(
                f"wall time, {shape.name}, containerd {release}",
                f"{ours:.2f} s (prefetch, up to {conns} connections)",
                f"{kubelet:.2f} s (kubelet's pull, up to {kubelet_conns} connections; containerd {version})",
                ratio(ours, kubelet),
                f"≤ {TARGET_TIME}x",
                verdict(ours <= TARGET_TIME * kubelet, f"by {ours / kubelet - TARGET_TIME:.2f}x"),
            )
        )
        disk, kubelet_disk = _median(rounds, "prefetch_bytes"), _median(rounds, "kubelet_bytes")
        section.rows.append(
            Row(
                f"disk left, {shape.name}, {release}",
                f"{disk / MB:.1f} MB",
                f"{kubelet_disk / MB:.1f} MB (kubelet's pull, discard_unpacked_layers)",
                ratio(disk, kubelet_disk),
                f"≤ {TARGET_DISK}x",
                verdict(disk <= TARGET_DISK * kubelet_disk, f"by {disk / kubelet_disk - TARGET_DISK:.2f}x"),
            )
        )
    mirror = results["mirror"]
    section.rows.append(
        Row(
            f"origin blob requests with a mirror, containerd {release}",
            f"{mirror['prefetch_origin']} (mirror served {mirror['prefetch_mirror']})",
            f"{mirror['kubelet_origin']} (kubelet's pull; mirror served {mirror['kubelet_mirror']})",
            "—",
            "0",
            verdict(mirror["prefetch_origin"] == 0, f"{mirror['prefetch_origin']} blob requests reached the origin"),
        )
    )


def report_sweep(section: Section, results: dict[str, Any], release: str, quick: bool) -> None:
    sweep = {int(value): seconds for value, seconds in results["sweep"].items()}
    shape = shapes(quick)[-1]
    default = node_contract.DEFAULT_CONNECTIONS
    text = ", ".join(f"{value}: {seconds:.2f} s" for value, seconds in sorted(sweep.items()))
    section.rows.append(
        Row(
            f"prefetch of {shape.name} by `connections`, containerd {release}",
            text,
            f"{sweep[default]:.2f} s at the default ({default})" if default in sweep else "",
            verdict="(reported: the default's choice; on a node, S3's per-connection rate and the node's NIC set it)",
        )
    )
