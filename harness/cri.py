"""The CRI image service of a harness containerd, asked the way kubelet asks it (runtime.v1 over gRPC)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from cri_api.v1 import api_pb2
from cri_api.v1.api_pb2_grpc import ImageServiceStub
from google.protobuf.json_format import MessageToDict


@dataclass
class CriImage:
    """What ImageStatus says of one image: its id (config digest), names, pin, and platform (from verbose info)."""

    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    pinned: bool | None  # None: the runtime has no such field (containerd 1.6)
    platform: str | None


@dataclass
class ImageFilesystem:
    mountpoint: str
    snapshotter: str
    used_bytes: int


class Cri:
    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self._stub = ImageServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Cri:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def image_status(self, ref: str) -> CriImage | None:
        """kubelet's question before it starts a container: is `ref` present? None when it is not."""
        request = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref), verbose=True)
        response = self._stub.ImageStatus(request, timeout=30)
        if not response.HasField("image") or not response.image.id:
            return None
        image = MessageToDict(response.image, preserving_proto_field_name=True)
        platform = None
        info = dict(response.info).get("info")
        if info:
            spec = json.loads(info).get("imageSpec") or {}
            if spec.get("os") and spec.get("architecture"):
                platform = f"{spec['os']}/{spec['architecture']}"
        fields = {field.name for field in response.image.DESCRIPTOR.fields}
        pinned = image.get("pinned", False) if "pinned" in fields else None
        return CriImage(image["id"], image.get("repo_tags", []), image.get("repo_digests", []), pinned, platform)

    def image_filesystems(self) -> list[ImageFilesystem]:
        """kubelet's view of where images live (ImageFsInfo, which its image GC reads): each filesystem's snapshotter
        (from containerd's io.containerd.snapshotter.v1.<name> directory) and the bytes used there, as the CRI last
        measured them (every stats_collect_period, 10 s by default: 0 before its first measure)."""
        response = self._stub.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=30)
        found = []
        for usage in response.image_filesystems:
            mountpoint = usage.fs_id.mountpoint
            _, marker, snapshotter = mountpoint.rpartition("io.containerd.snapshotter.v1.")
            snapshotter = snapshotter if marker else ""
            found.append(ImageFilesystem(mountpoint, snapshotter, usage.used_bytes.value))
        return found

    def list_images(self) -> list[dict]:
        response = self._stub.ListImages(api_pb2.ListImagesRequest(), timeout=30)
        return [MessageToDict(image, preserving_proto_field_name=True) for image in response.images]

    def pull_image(self, ref: str) -> str:
        """kubelet's pull (imagePullPolicy Always, or IfNotPresent on a miss): the image id."""
        response = self._stub.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=300)
        return response.image_ref
