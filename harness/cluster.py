"""Emulated EKS nodes and ECR: each node is a real containerd (own root, state and socket) that pulls from a real
registry on 127.0.0.1, and the registry stands in for ECR.

The node script pulls `<account>.dkr.ecr.<region>.amazonaws.com/<repo>@sha256:...` after `aws ecr
get-login-password`, through a hosts.toml it writes for `ctr --hosts-dir` (and reads for its own parallel layer
fetch with curl). On a node, DNS and TLS take that host to ECR; here three small tools on the node's PATH play that
part, and nothing else: `aws` answers get-login-password with the registry's password (the registry checks it: user
AWS, as ECR does), and `ctr` and `curl` point the hosts.toml and the curl config they are given at the node's route to
the registry (plain HTTP on 127.0.0.1) before running the real ones. Everything the script decides (cache, disk, pins,
errors) is the real script against the real containerd, configured as EKS configures it (harness.node.Containerd).

Without root or the packages, a node is a DryRunNode: it says so, and records what it would have run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.node import (
    Containerd,
    Registry,
    Run,
    basic_auth,
    build_image,
    kill_group,
    render_script,
    run_document,
)

DRY_RUN_MARK = "DRY RUN"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

_CTR_WRAPPER = """#!/bin/bash
# The node's network for ECR hosts: hosts.toml files under --hosts-dir point at this node's route to the registry.
route=$(cat {route_file})
prev=
for arg in "$@"; do
  if [ "$prev" = --hosts-dir ]; then
    for file in "$arg"/*/hosts.toml; do
      [ -f "$file" ] || continue
      sed -i -E "s#https://[0-9]{{12}}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com#http://$route#g" "$file"
    done
  fi
  prev=$arg
done
exec {ctr} "$@"
"""

_CURL_WRAPPER = """#!/bin/bash
# The node's network for ECR hosts: URLs of a curl config (-K) point at this node's route to the registry.
route=$(cat {route_file})
prev=
for arg in "$@"; do
  if [ "$prev" = -K ] || [ "$prev" = --config ]; then
    sed -i -E "s#https://[0-9]{{12}}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com#http://$route#g" "$arg"
  fi
  prev=$arg
done
exec {curl} "$@"
"""

_AWS_WRAPPER = """#!/bin/bash
# The node's instance role, for the one call the script makes: an ECR token (the registry's password).
if [ "$1 $2" = "ecr get-login-password" ]; then cat {token_file}; exit 0; fi
echo "emulated node: aws $* is not emulated" >&2
exit 1
"""


_UNAME_WRAPPER = """#!/bin/sh
# This node's architecture, emulated (harness.cluster.Node.uname_machine).
if [ "$*" = "-m" ]; then echo {machine}; else exec /usr/bin/uname "$@"; fi
"""


@dataclass
class Node:
    """A real containerd for one EC2 instance, and its route to the registry."""

    name: str
    base: Path
    registry: EcrRegistry
    containerd: Containerd = field(init=False)
    dry_run: bool = False
    # The architecture the node's script sees (`uname -m`), when not this machine's: an emulated Graviton node on an
    # x86 host. Its containerd still runs this machine's platform, so give it only images its script skips.
    uname_machine: str | None = None
    _scripts: set = field(default_factory=set)  # running document scripts (Popen), killed by id on stop
    # The containerd release this node runs (None: the default one), and what happens on the node before its
    # containerd first starts (the warm boot user-data part: harness.warm).
    release: str | None = None
    before_containerd: Callable[[Containerd], None] | None = None

    def start(self) -> Node:
        self.base.mkdir(parents=True, exist_ok=True)
        containerd = Containerd(self.base / "containerd", **({"release": self.release} if self.release else {}))
        if self.before_containerd is not None:
            self.before_containerd(containerd)
        self.containerd = containerd.start()
        self.started_at = time.monotonic()  # when its containerd answered: the node has booted
        bin_dir = self.base / "bin"
        bin_dir.mkdir(exist_ok=True)
        self.route(self.registry.host)
        (self.base / "ecr-token").write_text(self.registry.token)
        (self.base / "ecr-token").chmod(0o600)
        ctr = bin_dir / "ctr"
        ctr.write_text(_CTR_WRAPPER.format(route_file=self.base / "route", ctr=self.containerd.binary("ctr")))
        curl = bin_dir / "curl"
        curl.write_text(_CURL_WRAPPER.format(route_file=self.base / "route", curl=shutil.which("curl") or "curl"))
        aws = bin_dir / "aws"
        aws.write_text(_AWS_WRAPPER.format(token_file=self.base / "ecr-token"))
        tools = [ctr, curl, aws]
        if self.uname_machine:
            uname = bin_dir / "uname"
            uname.write_text(_UNAME_WRAPPER.format(machine=self.uname_machine))
            tools.append(uname)
        for tool in tools:
            tool.chmod(0o755)
        return self

    def stop(self) -> None:
        for proc in list(self._scripts):
            kill_group(proc)
        with contextlib.suppress(AttributeError):
            self.containerd.stop()

    def route(self, address: str) -> None:
        """Where this node reaches the registry (host:port); a proxy in between can cut it."""
        (self.base / "route").write_text(address)

    def execute(self, content: dict[str, Any], values: dict[str, str], command_id: str, timeout: float) -> Run:
        workdir = self.base / "ssm" / command_id
        # The node's tools first, then its containerd release's (the script reads its config with `containerd config
        # dump`), then the system's.
        system_path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        path = f"{self.base / 'bin'}:{self.containerd.env().get('PATH', system_path)}"
        extra = {"PATH": path, "PREFETCH_LOCK_FILE": str(self.base / "prefetch.lock")}
        try:
            return run_document(
                workdir,
                self.containerd,
                values,
                extra_env=extra,
                timeout=timeout,
                content=content,
                on_start=self._scripts.add,
            )
        except subprocess.TimeoutExpired as error:
            stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout or ""
            timed_out = TimeoutError(f"step timed out after {timeout:.0f} s")
            timed_out.stdout = stdout  # type: ignore[attr-defined]
            raise timed_out from error

    def images(self) -> dict[str, dict]:
        return self.containerd.images()


@dataclass
class DryRunNode:
    """A node on a machine that cannot run containerd (not root, or packages missing): it runs nothing, says so,
    and keeps what it would have run."""

    name: str
    base: Path
    reason: str
    dry_run: bool = True
    would_run: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> DryRunNode:
        self.base.mkdir(parents=True, exist_ok=True)
        return self

    def stop(self) -> None:
        pass

    def route(self, address: str) -> None:
        pass

    def execute(self, content: dict[str, Any], values: dict[str, str], command_id: str, timeout: float) -> Run:
        script = self.base / f"{command_id}.sh"
        script.write_text(render_script(values, False, content))
        self.would_run.append({"command_id": command_id, "script": str(script), "parameters": dict(values)})
        line = {"dry_run": True, "node": self.name, "reason": self.reason, "would_run": str(script), **values}
        return Run(0, json.dumps(line) + "\n", f"{DRY_RUN_MARK}: {self.reason}; nothing was pulled\n", 0.0)

    def images(self) -> dict[str, dict]:
        return {}


@dataclass
class PushedImage:
    repository: str
    tag: str
    digest: str
    manifest: str
    media_type: str
    config_media_type: str
    size: int


class EcrRegistry(Registry):
    """docker-registry on 127.0.0.1 standing in for the account's ECR registry: htpasswd user AWS, password = the
    token `aws ecr get-login-password` gives the nodes."""

    def __init__(self, base: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        super().__init__(base, auth=("AWS", self.token))
        self.layout = base / "layout"

    def blob(self, digest: str) -> bytes:
        hex_digest = digest.removeprefix("sha256:")
        return (self.base / "data/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data").read_bytes()

    def build_and_push(
        self,
        repository: str,
        tag: str,
        layers_mb: list[float],
        based_on: str | None = None,
        index_for: str | None = None,
    ) -> PushedImage:
        """Build an image (random layers, on top of the image tagged ``based_on`` if given) and push it. With
        ``index_for`` (an architecture, e.g. amd64), the tag names an OCI index whose one manifest is that image, for
        linux/<index_for>: an image built for that platform only, as multi-platform builders push them."""
        name = f"{repository.replace('/', '-')}-{tag}"
        if based_on:
            base_name = f"{repository.replace('/', '-')}-{based_on}"
            subprocess.run(
                ["umoci", "tag", "--image", f"{self.layout}:{base_name}", name], check=True, capture_output=True
            )
            _add_layers(self.layout, name, layers_mb, seed=name)
        else:
            build_image(self.layout, name, layers_mb, seed=name)
        digest = self.push(self.layout, name, repository, tag)
        manifest = self.blob(digest).decode()
        parsed = json.loads(manifest)
        if index_for:
            return self._push_index(repository, tag, digest, manifest, parsed, index_for)
        return PushedImage(
            repository=repository,
            tag=tag,
            digest=digest,
            manifest=manifest,
            media_type=parsed.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
            config_media_type=parsed["config"]["mediaType"],
            size=sum(layer["size"] for layer in parsed["layers"]) + parsed["config"]["size"],
        )

    def _push_index(
        self, repository: str, tag: str, digest: str, manifest: str, parsed: dict[str, Any], architecture: str
    ) -> PushedImage:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": parsed.get("mediaType", OCI_MANIFEST),
                    "digest": digest,
                    "size": len(manifest.encode()),
                    "platform": {"architecture": architecture, "os": "linux"},
                }
            ],
        }
        body = json.dumps(index, indent=2)
        assert self.auth is not None
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            data=body.encode(),
            method="PUT",
            headers={"Content-Type": OCI_INDEX, "Authorization": f"Basic {basic_auth(*self.auth)}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the registry on 127.0.0.1
            index_digest = response.headers["Docker-Content-Digest"]
        return PushedImage(
            repository=repository,
            tag=tag,
            digest=index_digest,
            manifest=body,
            media_type=OCI_INDEX,
            config_media_type=parsed["config"]["mediaType"],
            size=sum(layer["size"] for layer in parsed["layers"]) + parsed["config"]["size"],
        )


def _add_layers(layout: Path, name: str, layers_mb: list[float], seed: str) -> None:
    work = layout.parent / f"{name}-work"
    work.mkdir(parents=True, exist_ok=True)
    for index, size_mb in enumerate([0.001, *layers_mb]):
        payload = work / f"extra{index}"
        with payload.open("wb") as out:
            out.write(seed.encode())
            out.write(os.urandom(max(1, int(size_mb * 1024 * 1024))))
        subprocess.run(
            ["umoci", "insert", "--image", f"{layout}:{name}", str(payload), f"/data/{name}-{index}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    shutil.rmtree(work, ignore_errors=True)
