"""Node benchmark: the SSM document's script against a bare `ctr images pull`, on a real containerd and registry.

(a) the document end-to-end pulling a ~500 MB image (5 x 100 MB random, incompressible layers) and (b) a bare
`ctr -n k8s.io images pull` of the same image, alternating which goes first, cold each time (images removed,
content pruned, dirty pages synced in between); (c) a cached re-run of 10 images. Prints a table and writes
bench/results/node.json.

Run as root: `make bench-node`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.node import Containerd, Registry, build_image, missing_prerequisites, run_document

ROUNDS = 6  # even: each side goes first equally often
LAYERS_MB = [100.0] * 5
CACHED_IMAGES = 10
RESULTS = Path(__file__).resolve().parent / "results" / "node.json"


def timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def measure_cold_pulls(base: Path, containerd: Containerd, registry: Registry) -> dict:
    """(a) and (b): the document and a bare ctr pull of the same ~500 MB image, cold, alternating."""
    layout = base / "layout"
    print(f"building a {sum(LAYERS_MB):.0f} MB image ({len(LAYERS_MB)} random layers) and pushing it ...")
    build_seconds = timed(lambda: build_image(layout, "big", LAYERS_MB, seed="big"))
    digest = registry.push(layout, "big", "bench/big", "v1")
    ref = f"{registry.host}/bench/big@{digest}"
    blobs = registry.base / "data" / "docker" / "registry" / "v2" / "blobs"
    image_bytes = sum(p.stat().st_size for p in blobs.rglob("data"))
    print(f"  built in {build_seconds:.1f} s, {image_bytes / 1e6:.0f} MB compressed in the registry")

    def document() -> None:
        run = run_document(base / "work", containerd, {"images": ref, "keepPinned": "2"})
        if run.returncode != 0 or run.images[0]["status"] != "pulled":
            raise RuntimeError(f"document run failed: {run.stdout} {run.stderr}")

    def bare() -> None:
        containerd.ctr("images", "pull", "--plain-http", ref)

    rounds = []
    for index in range(ROUNDS):
        order = [("document", document), ("bare", bare)]
        if index % 2:
            order.reverse()
        times = {}
        for name, fn in order:
            containerd.remove_all_images()
            os.sync()  # the previous pull's writeback must not land on the next one's clock
            times[name] = timed(fn)
        rounds.append({"first": order[0][0], **times})
        print(f"  round {index + 1}: document {times['document']:.2f} s, bare ctr pull {times['bare']:.2f} s")
    containerd.remove_all_images()
    doc_median = statistics.median(r["document"] for r in rounds)
    bare_median = statistics.median(r["bare"] for r in rounds)
    return {
        "image_bytes_compressed": image_bytes,
        "rounds": rounds,
        "document_median_seconds": round(doc_median, 3),
        "bare_ctr_pull_median_seconds": round(bare_median, 3),
        "overhead_percent": round((doc_median - bare_median) / bare_median * 100, 2),
    }


def measure_cached_rerun(base: Path, containerd: Containerd, registry: Registry) -> dict:
    """(c): the document over 10 images that are all present already."""
    layout = base / "layout"
    print(f"building and pushing {CACHED_IMAGES} small images for the cached re-run ...")
    refs = []
    for n in range(CACHED_IMAGES):
        build_image(layout, f"small{n}", seed=f"small{n}")
        refs.append(f"{registry.host}/bench/small{n}@{registry.push(layout, f'small{n}', f'bench/small{n}', 'v1')}")
    first = run_document(base / "work", containerd, {"images": ",".join(refs)})
    if first.summary["pulled"] != CACHED_IMAGES:
        raise RuntimeError(f"cached setup failed: {first.stdout}")
    runs = []
    for _ in range(3):
        run = run_document(base / "work", containerd, {"images": ",".join(refs)})
        if run.summary["cached"] != CACHED_IMAGES:
            raise RuntimeError(f"expected {CACHED_IMAGES} cached: {run.stdout}")
        runs.append(run.seconds)
    return {
        "cached_rerun_images": CACHED_IMAGES,
        "cached_rerun_seconds": [round(s, 3) for s in runs],
        "cached_rerun_median_seconds": round(statistics.median(runs), 3),
    }


def print_table(results: dict) -> None:
    rows = [
        (
            "(a) document, cold pull",
            f"{results['document_median_seconds']:.2f} s",
            f"{results['image_bytes_compressed'] / 1e6:.0f} MB image, median of {ROUNDS}",
        ),
        ("(b) bare ctr pull, cold", f"{results['bare_ctr_pull_median_seconds']:.2f} s", "same image, alternating"),
        ("    overhead (a) vs (b)", f"{results['overhead_percent']:+.1f} %", "target within 5 %"),
        (
            "(c) cached re-run",
            f"{results['cached_rerun_median_seconds']:.2f} s",
            f"{CACHED_IMAGES} images, median of 3, target < 1 s",
        ),
    ]
    print()
    print(f"{'measure':<26} {'value':>10}  note")
    for row in rows:
        print(f"{row[0]:<26} {row[1]:>10}  {row[2]}")


def main() -> int:
    reason = missing_prerequisites()
    if reason:
        print(f"bench-node skipped: {reason}", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="eks-prefetch-bench-", dir="/var/tmp"))
    containerd = Containerd(base / "containerd")
    registry = Registry(base / "registry")
    try:
        containerd.start()
        registry.start()
        results = {
            **measure_cold_pulls(base, containerd, registry),
            **measure_cached_rerun(base, containerd, registry),
            "targets": {"overhead_percent_max": 5, "cached_rerun_seconds_max": 1},
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print_table(results)
        print(f"\nwritten to {RESULTS}")
        return 0
    finally:
        registry.stop()
        containerd.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
