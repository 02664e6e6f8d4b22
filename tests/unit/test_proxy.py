"""harness.proxy.RegistryProxy, the route the harness, node tests and benchmarks put between a node and a registry:
what it records, the Range headers it drops, and the cut. Against a small HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from harness.proxy import RegistryProxy

BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + "a" * 64


class _Blobs(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen_ranges: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen_ranges.append(self.headers.get("Range"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    _Blobs.seen_ranges = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Blobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def get(host: str, headers: dict[str, str] | None = None) -> bytes:
    connection = http.client.HTTPConnection(host, timeout=10)
    try:
        connection.request("GET", f"/v2/team/app/blobs/{DIGEST}", headers=headers or {})
        return connection.getresponse().read()
    finally:
        connection.close()


def test_it_passes_the_blob_and_records_what_went_through(registry: str) -> None:
    proxy = RegistryProxy(registry)
    try:
        assert get(proxy.host, {"Range": "bytes=0-99"}) == BLOB
        assert get(proxy.host) == BLOB
        heads = proxy.blob_requests(DIGEST)
        assert len(heads) == 2 and "Range: bytes=0-99" in heads[0]
        assert proxy.bytes_down > 2 * len(BLOB)  # the bodies and their heads
        assert proxy.peak_connections >= 1
        assert _Blobs.seen_ranges == ["bytes=0-99", None]

        proxy.reset()
        assert proxy.requests == [] and proxy.peak_connections == 0
    finally:
        proxy.close()


def test_ignore_ranges_drops_the_header_as_a_registry_serving_whole_blobs(registry: str) -> None:
    proxy = RegistryProxy(registry, ignore_ranges=True)
    try:
        assert get(proxy.host, {"Range": "bytes=0-99"}) == BLOB
        assert _Blobs.seen_ranges == [None]
    finally:
        proxy.close()


def test_a_cut_route_drops_the_download_part_way_and_refuses_new_connections(registry: str) -> None:
    proxy = RegistryProxy(registry)
    try:
        proxy.cut(after_bytes=100_000)
        assert not proxy.cut_done.is_set()
        with pytest.raises((http.client.HTTPException, OSError)):
            get(proxy.host)
        assert proxy.cut_done.is_set()
        assert proxy.bytes_down <= 100_000
        with pytest.raises(OSError):
            get(proxy.host)
    finally:
        proxy.close()
