"""Cold start: each handler module's import in a fresh interpreter, against `import boto3` alone, with only the layer's
pinned packages installed; and the size of each deployment package and of the layer, zipped.

The packages go into a throwaway directory (pip, from layers/prefetch/requirements.txt), for the Lambda runtime's
Python (3.13) if it is on this machine: `sam build` output is for arm64, which an x86 machine cannot import.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.report import Row, Section, median, not_measured, ratio, verdict
from testing.environment import DEPLOYMENT_ENV

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.4
HANDLERS = {"ecr_push": "EcrPushFunction", "node_launch": "NodeLaunchFunction"}
# What the Lambda Python runtime ships itself: boto3 and its dependencies.
SDK_TOP_LEVEL = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
LAMBDA_ZIP_LIMIT_MB = 50  # direct upload, zipped
# boto3 and pydantic's model machinery, which the settings and event models need (BaseModel loads it lazily).
FLOOR = "boto3; from pydantic import BaseModel, Field"


def runtime_python() -> str:
    """Python 3.13 as the functions run it, if installed (pyenv keeps it off PATH), else this interpreter."""
    for candidate in ("python3.13", str(Path.home() / ".pyenv" / "versions" / "3.13.0" / "bin" / "python3.13")):
        found = shutil.which(candidate)
        if found:
            probe = subprocess.run([found, "-c", "pass"], capture_output=True, check=False)
            if probe.returncode == 0:
                return found
    return sys.executable


def install_layer(python: str, into: Path) -> None:
    requirements = ROOT / "layers" / "prefetch" / "requirements.txt"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "--target", str(into), "--requirement", str(requirements)],
        check=True,
        capture_output=True,
        text=True,
    )


def import_seconds(python: str, paths: list[str], module: str) -> float:
    code = f"import sys; sys.path[:0] = {paths!r}; import {module}"
    environment = {
        "PATH": os.environ.get("PATH", ""),
        **{key: value for key, value in DEPLOYMENT_ENV.items() if key.startswith("POWERTOOLS")},
        # As deployed: tracing off (EnableTracing=false) makes POWERTOOLS_TRACE_DISABLED true.
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    started = time.perf_counter()
    subprocess.run([python, "-c", code], check=True, env=environment, capture_output=True)
    return time.perf_counter() - started


def zipped_size(root: Path, exclude_top_level: tuple[str, ...] = ()) -> int:
    """Bytes of the directory zipped (deflate) in memory, leaving out top-level packages (and their dist-info)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(root)
            top = relative.parts[0].split("-")[0] if relative.parts else ""
            if top in exclude_top_level or top.removeprefix("python_") in exclude_top_level:
                continue
            archive.write(path, relative.as_posix())
    return buffer.tell()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def measure_imports(section: Section, quick: bool) -> None:
    rounds = 5 if quick else 15
    python = runtime_python()
    version = subprocess.run([python, "-V"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="eks-prefetch-layer-") as directory:
        layer = Path(directory)
        install_layer(python, layer)
        samples: dict[str, list[float]] = {"boto3": [], "floor": [], **{name: [] for name in HANDLERS}}
        # Warm the OS file cache once, then interleave, so that drift on a shared machine hits every import alike.
        import_seconds(python, [str(layer)], "boto3")
        for _ in range(rounds):
            samples["boto3"].append(import_seconds(python, [str(layer)], "boto3"))
            samples["floor"].append(import_seconds(python, [str(layer)], FLOOR))
            for name in HANDLERS:
                paths = [str(layer), str(ROOT / "layers" / "prefetch"), str(ROOT / "functions" / name)]
                samples[name].append(import_seconds(python, paths, "app"))
    boto3 = median(samples["boto3"])
    for name in HANDLERS:
        value = median(samples[name])
        section.rows.append(
            Row(
                f"`import app` of {name}, fresh interpreter",
                f"{value * 1000:.0f} ms",
                f"{boto3 * 1000:.0f} ms (`import boto3`)",
                ratio(value, boto3),
                f"≤ {TARGET_RATIO}x",
                verdict(
                    value / boto3 <= TARGET_RATIO,
                    f"by {value / boto3 - TARGET_RATIO:.2f}x: pydantic alone (settings, event models) takes "
                    f"{(median(samples['floor']) - boto3) * 1000:.0f} ms of it (the floor, below)",
                ),
            )
        )
    floor = median(samples["floor"])
    section.rows.append(
        Row(
            "`import boto3` + pydantic's BaseModel: the floor while settings and event models use pydantic",
            f"{floor * 1000:.0f} ms",
            f"{boto3 * 1000:.0f} ms (`import boto3`)",
            ratio(floor, boto3),
            verdict="(reported: what no lazier import in the handlers can go below)",
        )
    )
    section.notes.append(
        f"Method: wall time of `python -c 'import ...'` in a fresh {version} (interpreter start included, as in a "
        f"cold start), median of {rounds} interleaved runs, with only the layer's pinned packages installed (pip "
        "into a throwaway directory) and the functions' Powertools environment (tracing off, its default). Lambda's "
        "own init (runtime start, downloading the code) is not included."
    )


def measure_packages(section: Section) -> None:
    build = ROOT / ".aws-sam" / "build"
    layer = build / "PrefetchLayer" / "python"
    functions = {name: build / resource for name, resource in HANDLERS.items()}
    if not layer.is_dir() or not all(path.is_dir() for path in functions.values()):
        not_measured(
            section,
            ["deployment packages and layer, zipped"],
            "no `sam build` output in .aws-sam/build (`make bench` builds it first)",
        )
        return
    for name, path in [*functions.items(), ("layer (PrefetchLayer)", layer)]:
        full, without = zipped_size(path), zipped_size(path, SDK_TOP_LEVEL)
        section.rows.append(
            Row(
                f"{name} zipped, without boto3 & its deps",
                _megabytes(without),
                f"{_megabytes(full)} (with them)",
                ratio(without, full),
                f"≤ {LAMBDA_ZIP_LIMIT_MB} MB (Lambda, zipped)",
                verdict(full <= LAMBDA_ZIP_LIMIT_MB * 1e6, f"{_megabytes(full)}"),
            )
        )
    section.notes.append(
        "Packages: `sam build` output zipped in memory (deflate). The functions' packages hold only their handler; "
        "the layer holds eks_prefetch and the pinned packages, boto3 included, so that the functions run the SDK the "
        f"tests ran ({', '.join(SDK_TOP_LEVEL)} are what the Python runtime would otherwise provide)."
    )


def measure(section: Section, quick: bool) -> None:
    try:
        measure_imports(section, quick)
    except (subprocess.CalledProcessError, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        not_measured(
            section,
            [f"`import app` of {name}" for name in HANDLERS],
            f"could not install or import the layer's packages: {str(detail).strip()[-200:]}",
        )
    measure_packages(section)
