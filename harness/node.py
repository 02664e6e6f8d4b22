"""A real containerd, a real registry and image builds, on 127.0.0.1, for the node tests and the node benchmark.

Everything lives under one temporary directory; processes are started and stopped by PID.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eks_prefetch import node_contract
from harness.template import document_content

# What a node needs besides containerd and ctr (the system's, or a release's: see Containerd).
BINARIES = ("docker-registry", "skopeo", "umoci", "timeout", "df", "flock")
PIN_LABEL = node_contract.PIN_LABEL
OUR_LABEL = node_contract.OUR_PIN_LABEL
NAMESPACE = "k8s.io"
# The CRI plugin's mark on every image it sees (on a real node too): not a label of ours, left out of images().
CRI_MANAGED_LABEL = "io.cri-containerd.image"


def bcrypt_hash(password: str) -> str:
    """The bcrypt hash docker-registry's htpasswd auth needs: the bcrypt package if installed, else libc's crypt
    (libxcrypt does bcrypt; the module is deprecated, gone in Python 3.13), else htpasswd (apache2-utils)."""
    with contextlib.suppress(ImportError):
        import bcrypt  # noqa: PLC0415

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with contextlib.suppress(ImportError):
            import crypt  # noqa: PLC0415

            hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 5))  # noqa: S324 - bcrypt
            if hashed and hashed.startswith("$2"):
                return hashed
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "x", password], capture_output=True, text=True, check=True)
        return out.stdout.strip().split(":", 1)[1]
    raise RuntimeError("no bcrypt: pip install bcrypt, or apt-get install apache2-utils")


def missing_prerequisites(releases: tuple[str, ...] | None = None) -> str | None:
    """Why this machine cannot run the node tests on these containerd releases (default: the default one), or None."""
    if os.geteuid() != 0:
        return "node tests need root (containerd mounts overlayfs snapshots)"
    missing = [name for name in BINARIES if shutil.which(name) is None]
    for release in releases or (default_release(),):
        if not release_available(release):
            where = "on PATH" if release == SYSTEM else f"under {release_bin_dir(release)}"
            missing.append(f"containerd {release} ({where})")
    if missing:
        return f"node tests need {', '.join(missing)} (make system-deps)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(what)


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    """Start a service in its own session (stopped by PID later), its output appended to log_path."""
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


# containerd releases the node tests run on: the system's (Debian 12: 1.6), and those scripts/containerd-releases.sh
# unpacks under .build/containerd/<suite>/ (trixie: 1.7, as AL2023 AMIs shipped; sid: 2.x, as current ones ship).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
RELEASES_DIR = Path(os.environ.get("CONTAINERD_RELEASES_DIR", PROJECT_ROOT / ".build" / "containerd"))
# The harness nodes' sockets (Containerd.address): short paths, whatever the node's base directory.
SOCKET_DIR = Path("/run/eks-prefetch-harness")  # root only, as the nodes are
RELEASE_SUITES = {"1.7": "trixie", "2.x": "sid"}
SYSTEM = "system"
# Which release a Containerd() runs when not told: HARNESS_CONTAINERD (system, 1.7 or 2.x), else 2.x when fetched.
RELEASE_ENV = "HARNESS_CONTAINERD"


def release_bin_dir(release: str) -> Path | None:
    """The directory of a release's containerd and ctr; None for the system's (found on PATH)."""
    if release == SYSTEM:
        return None
    if release not in RELEASE_SUITES:
        raise ValueError(f"unknown containerd release {release!r}: {SYSTEM} or one of {sorted(RELEASE_SUITES)}")
    return RELEASES_DIR / RELEASE_SUITES[release] / "usr" / "bin"


def release_available(release: str) -> bool:
    bin_dir = release_bin_dir(release)
    if bin_dir is None:
        return shutil.which("containerd") is not None and shutil.which("ctr") is not None
    return (bin_dir / "containerd").is_file() and (bin_dir / "ctr").is_file()


def fetch_releases() -> None:
    """Unpack the releases the tests run on, if missing (idempotent, cached under .build; the script's apt-get needs
    Debian's archive only the first time). Failures show when a test asks for a release that is not there."""
    if all(release_available(release) for release in RELEASE_SUITES):
        return
    subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "containerd-releases.sh")], check=False, timeout=900)


def default_release() -> str:
    chosen = os.environ.get(RELEASE_ENV)
    if chosen:
        return chosen
    return "2.x" if release_available("2.x") else SYSTEM


# Where a node keeps containerd's configuration and registry hosts (certs.d), and the registry config_path EKS's
# AL2023 and AL2 configurations give the CRI. The prefetch script runs in a mount namespace of its own with its node's
# directories bound over these paths (`unshare -m`), so it reads the config and certs.d exactly where a node has them,
# with no seam. The node's containerd runs in the harness's own namespace (the warm boot scripts' mounts must reach
# it), from the same config but for config_path, which names the same directories by their real paths.
NODE_ETC_DIRS = ("/etc/containerd", "/etc/docker")
EKS_REGISTRY_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"
# `ctr leases rm --sync` of a lease that holds nothing runs containerd's garbage collection now, synchronously.
_GC_LEASE = "harness-gc"


def in_node_namespace(etc_dirs: Mapping[str, Path], argv: list[str]) -> list[str]:
    """argv run in a new mount namespace where each of etc_dirs' directories is bound over its node path (key).
    Mounts made outside later still reach it (slave propagation: a warm volume mounted at the root, say); its own
    binds stay inside."""
    binds = []
    for target, source in etc_dirs.items():
        binds += [str(source), target]
    # Absolute paths: the environment argv runs with may have a PATH without these (a test's minimal node).
    unshare, mount = _tool("unshare"), _tool("mount")
    script = f'while [ "$1" != -- ]; do {mount} --bind "$1" "$2" || exit 97; shift 2; done; shift; exec "$@"'
    return [unshare, "--mount", "--propagation", "slave", "--", _tool("sh"), "-c", script, "sh", *binds, "--", *argv]


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise RuntimeError(f"{name} not found (util-linux)")
    return found


@dataclass
class Containerd:
    """containerd with its own root, state and socket, CRI plugin on (kubelet's API; the script talks to it through
    ctr, the tests through both). ``release``: system, 1.7 or 2.x (see RELEASE_SUITES).

    Its configuration is a node's: /etc/containerd/config.toml (as the prefetch script sees it: ``in_namespace``)
    gives the CRI's image settings as EKS's AMIs do by default: the overlayfs snapshotter, unpacked layers' blobs
    discarded, registry hosts read from /etc/containerd/certs.d then /etc/docker/certs.d (``hosts()`` writes them).
    ``snapshotter`` and ``discard_unpacked_layers`` choose others. The daemon reads the same config, but for
    config_path, which names those two directories by their paths on this machine (``daemon_config``)."""

    base: Path
    release: str = field(default_factory=default_release)
    snapshotter: str = "overlayfs"
    discard_unpacked_layers: bool = True
    proc: subprocess.Popen | None = None

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def address(self) -> str:
        # A Unix socket's path has at most 104-108 bytes, which a test's tmp_path can pass on its own (pytest's
        # numbered and worker directories, the test's name): a short directory per node, named by its base.
        return str(SOCKET_DIR / hashlib.sha256(str(self.base).encode()).hexdigest()[:16] / "containerd.sock")

    @property
    def etc_dirs(self) -> dict[str, Path]:
        """The node's /etc/containerd and /etc/docker: what the daemon and the scripts see at those paths."""
        return {target: self.base / "etc" / Path(target).name for target in NODE_ETC_DIRS}

    @property
    def config(self) -> Path:
        """/etc/containerd/config.toml, as this node's processes see it."""
        return self.etc_dirs["/etc/containerd"] / "config.toml"

    @property
    def daemon_config(self) -> Path:
        """The daemon's copy of the node's config: the same, but for config_path's directories, by their real paths."""
        return self.base / "daemon-config.toml"

    @property
    def certs_dir(self) -> Path:
        """/etc/containerd/certs.d, as this node's processes see it."""
        return self.etc_dirs["/etc/containerd"] / "certs.d"

    @property
    def bin_dir(self) -> Path | None:
        return release_bin_dir(self.release)

    def binary(self, name: str) -> str:
        bin_dir = self.bin_dir
        found = str(bin_dir / name) if bin_dir is not None else shutil.which(name)
        if not found or not Path(found).is_file():
            raise RuntimeError(f"containerd release {self.release}: no {name} (scripts/containerd-releases.sh)")
        return found

    @property
    def version(self) -> str:
        """containerd's own version, e.g. 1.7.24 or 2.1.9."""
        out = subprocess.run([self.binary("containerd"), "--version"], capture_output=True, text=True, check=True)
        match = re.search(r" v?(\d+\.\d+\.\d+)", out.stdout)
        return match.group(1) if match else out.stdout.strip()

    def config_text(self, major: int, registry_config_path: str = EKS_REGISTRY_CONFIG_PATH) -> str:
        """Config version 2 (containerd 1.x) or 3 (2.x): the CRI's plugins were split and renamed in 2.0."""
        common = [
            f'root = "{self.root}"',
            f'state = "{self.base / "state"}"',
            # No NRI: its socket is machine-wide (/var/run/nri), and several harness nodes run at once.
            'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",',
            '  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",',
            '  "io.containerd.nri.v1.nri"]',
            "[grpc]",
            f'  address = "{self.address}"',
            "[ttrpc]",
            f'  address = "{self.address}.ttrpc"',
        ]
        cni = [f'  conf_dir = "{self.base / "cni"}"']
        images = [
            f'  snapshotter = "{self.snapshotter}"',
            f"  discard_unpacked_layers = {str(self.discard_unpacked_layers).lower()}",
        ]
        registry = [f'  config_path = "{registry_config_path}"']
        if major >= 2:
            lines = [
                "version = 3",
                *common,
                '[plugins."io.containerd.cri.v1.images"]',
                *images,
                '[plugins."io.containerd.cri.v1.images".registry]',
                *registry,
                '[plugins."io.containerd.cri.v1.runtime".cni]',
                *cni,
            ]
        else:
            lines = [
                "version = 2",
                *common,
                '[plugins."io.containerd.grpc.v1.cri".cni]',
                *cni,
                '[plugins."io.containerd.grpc.v1.cri".containerd]',
                *images,
                '[plugins."io.containerd.grpc.v1.cri".registry]',
                *registry,
            ]
        return "\n".join([*lines, ""])

    def start(self) -> Containerd:
        self.base.mkdir(parents=True, exist_ok=True)
        Path(self.address).parent.mkdir(parents=True, exist_ok=True)
        for directory in self.etc_dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        self.certs_dir.mkdir(exist_ok=True)
        major = int(self.version.split(".")[0])
        self.config.write_text(self.config_text(major))
        real_paths = ":".join(
            str(self.etc_dirs[root] / "certs.d")
            for root in (path.rsplit("/certs.d", 1)[0] for path in EKS_REGISTRY_CONFIG_PATH.split(":"))
        )
        self.daemon_config.write_text(self.config_text(major, real_paths))
        self.proc = _spawn(
            [self.binary("containerd"), "--config", str(self.daemon_config), "--log-level", "warn"],
            self.base / "containerd.log",
        )
        _wait_for(self._ready, 30, "containerd socket", self.proc)
        return self

    def in_namespace(self, argv: list[str]) -> list[str]:
        """argv as a process of this node that reads its /etc: its /etc/containerd and /etc/docker where a node has
        them (mounts it makes stay in its namespace)."""
        return in_node_namespace(self.etc_dirs, argv)

    def hosts(self, registry: str, text: str, root: str = "/etc/containerd") -> Path:
        """The node's hosts.toml for registry (host[:port]) under root's certs.d (a path of EKS's config_path), as a
        node's administrator writes it: mirrors, CAs, headers."""
        directory = self.etc_dirs[root] / "certs.d" / registry
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(text)
        return directory / "hosts.toml"

    def _ready(self) -> bool:
        if not Path(self.address).exists():
            return False
        return self.ctr("version", check=False).returncode == 0

    def stop(self) -> None:
        _stop(self.proc)

    def env(self) -> dict[str, str]:
        """The script's environment for this node: its socket in ctr's own variable (the unpin script has no other
        way to find it), and this release's containerd and ctr first on PATH. Its root, snapshotter and registry
        hosts the prefetch script reads from the node's config, as on a node."""
        env = {"CONTAINERD_ADDRESS": self.address}
        if self.bin_dir is not None:
            env["PATH"] = f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env

    def ctr(self, *args: str, check: bool = True, namespace: str = NAMESPACE) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.binary("ctr"), "--address", self.address, "-n", namespace, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def images(self) -> dict[str, dict]:
        """name -> {"digest": ..., "labels": {...}} from `ctr images ls` (the LABELS column is the last one). Without
        the CRI's own records of an image id (named sha256:<config digest>), which it adds to every image it sees."""
        out = self.ctr("images", "ls").stdout.splitlines()[1:]
        images = {}
        for line in out:
            parts = line.split()
            if parts[0].startswith("sha256:"):
                continue
            labels = {}
            if parts[-1] != "-":
                for item in parts[-1].split(","):
                    key, _, value = item.partition("=")
                    labels[key] = value
            labels.pop(CRI_MANAGED_LABEL, None)
            images[parts[0]] = {"digest": parts[2], "labels": labels}
        return images

    def content(self) -> dict[str, dict[str, str]]:
        """digest -> labels of every blob in the content store."""
        blobs = {}
        for line in self.ctr("content", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            labels = {}
            if len(parts) > 3 and parts[-1] != "-":
                for item in parts[-1].split(","):
                    key, _, value = item.partition("=")
                    labels[key] = value
            blobs[parts[0]] = labels
        return blobs

    def snapshots(self, snapshotter: str | None = None) -> set[str]:
        """The committed snapshots (named by chain id) of a snapshotter (default: the CRI's)."""
        out = self.ctr("snapshots", "--snapshotter", snapshotter or self.snapshotter, "ls").stdout.splitlines()[1:]
        return {line.split()[0] for line in out if line.split() and line.split()[-1] == "Committed"}

    def collect_garbage(self) -> None:
        """containerd's garbage collection, now: what a pull left unreferenced is gone when this returns."""
        self.ctr("leases", "create", "--id", _GC_LEASE, check=False)
        self.ctr("leases", "rm", "--sync", _GC_LEASE)

    def bytes_on_disk(self) -> dict[str, int]:
        """What containerd's root holds now, as du counts it, without collecting garbage: its content store (blobs:
        compressed layers, manifests, configs) and the CRI's snapshotter's directory (unpacked layers)."""
        parts = {
            "blobs": self.root / "io.containerd.content.v1.content",
            "unpacked": self.root / f"io.containerd.snapshotter.v1.{self.snapshotter}",
        }
        sizes = {}
        for name, path in parts.items():
            out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=False)
            sizes[name] = int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0
        return sizes

    def disk_bytes(self) -> int:
        """Bytes under containerd's root (content store, snapshots, metadata) once garbage is collected: what the
        node's disk holds for its images."""
        self.collect_garbage()
        os.sync()
        out = subprocess.run(["du", "-s", "-B1", str(self.root)], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[0])

    def remove_all_images(self) -> None:
        names = self.ctr("images", "ls", "-q").stdout.split()
        if names:
            self.ctr("images", "rm", "--sync", *names)
        self.prune_content()

    def prune_content(self) -> None:
        """Drop unreferenced blobs and snapshots now (containerd's GC), so the next pull is cold."""
        # `ctr images rm --sync` runs a synchronous GC; content of deleted images is released by it.
        for digest in self.ctr("content", "ls", "-q").stdout.split():
            self.ctr("content", "rm", digest, check=False)
        self.collect_garbage()


@dataclass
class Registry:
    """docker-registry (distribution 2.8) on 127.0.0.1:<free port>, storage in base, optional htpasswd auth."""

    base: Path
    auth: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        self.base.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            # The access log (in registry.log) is how tests count what a pull fetched.
            "log": {"level": "error", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.base / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.auth:
            user, password = self.auth
            hashed = bcrypt_hash(password)
            (self.base / "htpasswd").write_text(f"{user}:{hashed}\n")
            config["auth"] = {"htpasswd": {"realm": "test", "path": str(self.base / "htpasswd")}}
        (self.base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self.proc = _spawn(["docker-registry", "serve", str(self.base / "config.yml")], self.base / "registry.log")
        _wait_for(self._ready, 30, "registry port", self.proc)
        return self

    def _ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def stop(self) -> None:
        _stop(self.proc)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request served so far, from the access log."""
        log = self.base / "registry.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return re.findall(r'"([A-Z]+) (/v2/\S*) HTTP/[0-9.]+"', text)

    def blob_gets(self, repo: str) -> int:
        """How many layer or config blobs of repo were downloaded (GET, not HEAD) so far."""
        return sum(1 for method, path in self.requests() if method == "GET" and path.startswith(f"/v2/{repo}/blobs/"))

    def push(self, layout: Path, tag: str, repo: str, ref_tag: str | None = None) -> str:
        """Copy oci:layout:tag to repo:ref_tag, return the manifest digest."""
        digestfile = layout.parent / f"{layout.name}-{tag}.digest"
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"--digestfile={digestfile}"]
        if self.auth:
            cmd.append(f"--dest-creds={self.auth[0]}:{self.auth[1]}")
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}:{ref_tag or tag}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        return digestfile.read_text().strip()


def build_image(layout: Path, tag: str, layers_mb: list[float] | None = None, seed: str = "") -> None:
    """An OCI image in an umoci layout: one small random file (so every build has its own digest) plus, optionally,
    layers of random (incompressible) data of the given sizes in MB."""
    work = layout.parent / f"{layout.name}-{tag}-work"
    work.mkdir(parents=True, exist_ok=True)
    if not (layout / "index.json").exists():
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:{tag}"], check=True, capture_output=True)
    sizes = [0.001, *(layers_mb or [])]
    for index, size_mb in enumerate(sizes):
        payload = work / f"layer{index}"
        with payload.open("wb") as out:
            remaining = max(1, int(size_mb * 1024 * 1024))
            out.write(seed.encode())
            while remaining > 0:
                chunk = min(remaining, 8 << 20)
                out.write(os.urandom(chunk))
                remaining -= chunk
        subprocess.run(
            ["umoci", "insert", "--image", f"{layout}:{tag}", str(payload), f"/data/layer{index}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
        payload.unlink()
    shutil.rmtree(work, ignore_errors=True)


def render_script(values: Mapping[str, str], text_interpolation: bool, content: Mapping | None = None) -> str:
    """The document's script as the SSM agent runs it. Parameters without interpolationType (executionTimeout) are
    always pasted into the text; ENV_VAR ones too when text_interpolation (an agent older than 3.3.2746.0).
    ``content``: the document as SSM holds it (the harness's agent); by default, template.yaml's."""
    content = content or document_content()
    (step,) = content["mainSteps"]
    (script,) = step["inputs"]["runCommand"]
    parameters = content["parameters"]
    for name, spec in parameters.items():
        value = values.get(name, spec.get("default", ""))
        if spec.get("interpolationType") == "ENV_VAR" and not text_interpolation:
            continue
        script = re.sub(r"\{\{\s*" + re.escape(name) + r"\s*\}\}", lambda _m, v=value: v, script)
    return script


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def images(self) -> list[dict]:
        return [record for record in self.records if "summary" not in record]

    @property
    def summary(self) -> dict:
        (summary,) = [record for record in self.records if "summary" in record]
        return summary

    def by_image(self) -> dict[str, dict]:
        return {record["image"]: record for record in self.images}


def run_document(
    workdir: Path,
    containerd: Containerd,
    values: Mapping[str, str],
    text_interpolation: bool = False,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 600,
    content: Mapping | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    node_etc: bool | None = None,
) -> Run:
    """Run the document's script like the agent: a file under the command's directory run by bash (its shebang's
    shell), SSM_<param> in the environment (or pasted into the text), a minimal environment plus containerd's. The
    prefetch document's script (``node_etc``, by default: a document taking ``images``) sees the node's /etc/containerd
    and /etc/docker (Containerd.in_namespace); others run as the harness does (the warm volume scripts' mounts must
    reach the node's containerd)."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "_script.sh"
    script.write_text(render_script(values, text_interpolation, content))
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/root", "LANG": "C.UTF-8"}
    env.update(containerd.env())
    if not text_interpolation:
        parameters = (content or document_content())["parameters"]
        for name, spec in parameters.items():
            if spec.get("interpolationType") == "ENV_VAR":
                env[f"SSM_{name}"] = values.get(name, spec.get("default", ""))
    env.update(extra_env or {})
    started = time.monotonic()
    # bash reads the file rather than the kernel exec'ing it: a child another thread forks while the file is being
    # written holds it open for writing until that child execs, and exec'ing it then fails "Text file busy".
    # Its own process group, so that a timeout (as the agent does) or the harness's shutdown ends all of it.
    if node_etc is None:
        node_etc = "images" in (content or document_content())["parameters"]
    argv = [_tool("bash"), str(script)]
    if node_etc:
        for directory in containerd.etc_dirs.values():
            directory.mkdir(parents=True, exist_ok=True)
        argv = containerd.in_namespace(argv)
    proc = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if on_start is not None:
        on_start(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, output=stdout, stderr=stderr) from None
    return Run(proc.returncode, stdout, stderr, time.monotonic() - started)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group a run_document script leads (by its id)."""
    if proc.poll() is None:  # a finished one's id may belong to someone else by now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def basic_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()
