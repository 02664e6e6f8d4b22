"""A node's route to a registry, as a TCP proxy on 127.0.0.1: what the harness, the node tests and the benchmarks put
between a node and the registry to shape or to watch it.

- ``bytes_per_second``: each connection's responses at most that rate (ECR serves layers from S3, whose published
  guidance budgets a rate per connection), so that what a pull gains from more connections or byte ranges shows;
- ``ignore_ranges``: Range headers dropped, as a registry that serves whole blobs only;
- ``cut(after_bytes)``: every connection dropped after that many more bytes, and new ones refused (a registry outage
  in the middle of a pull), until close();
- what went through: every request's head (``requests``), the most connections open at once
  (``peak_connections``) and the bytes the node received (``bytes_down``).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time


class RegistryProxy:
    CHUNK = 64 << 10

    def __init__(self, upstream: str, bytes_per_second: float | None = None, ignore_ranges: bool = False) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = bytes_per_second
        self.ignore_ranges = ignore_ranges
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[str] = []
        self.open_connections = 0
        self.peak_connections = 0
        self.bytes_down = 0
        self._budget: int | None = None  # bytes left before the cut, once cut() is called
        self.cut_done = threading.Event()  # the cut happened: the route is down
        self._generation = 0  # connections opened before the last reset() are not counted
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def blob_requests(self, digest: str) -> list[str]:
        """The heads of the GET requests of one blob, in order."""
        return [head for head in list(self.requests) if head.startswith("GET ") and f"/blobs/{digest}" in head]

    def reset(self) -> None:
        """Forgets the requests so far, and counts from now only the connections opened from now (a client's idle
        keep-alive connections, still open, are not the next pull's)."""
        with self._lock:
            self.requests.clear()
            self.open_connections = self.peak_connections = 0
            self._generation += 1

    def cut(self, after_bytes: int = 0) -> None:
        """The route goes down after ``after_bytes`` more bytes to the node, and stays down."""
        with self._lock:
            self._budget = after_bytes
        if after_bytes <= 0:
            self.cut_done.set()
            self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self.listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.open_connections += 1
                self.peak_connections = max(self.peak_connections, self.open_connections)
                self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server, self._generation), daemon=True).start()
            threading.Thread(target=self._responses, args=(server, client), daemon=True).start()

    def _requests(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        pending = b""
        rewrite = self.ignore_ranges
        with contextlib.suppress(OSError):
            while data := source.recv(self.CHUNK):
                if rewrite and not pending and data[:1] == b"\x16":
                    rewrite = False  # a TLS hello: the registry's answer ends it, nothing to rewrite
                if not rewrite:
                    # Passed on as it comes: a client's TLS hello first (containerd tries HTTPS on loopback, then
                    # falls back to HTTP on the registry's answer) must not wait for a request head.
                    sink.sendall(data)
                pending += data
                while b"\r\n\r\n" in pending:
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    text = head.decode("latin-1")
                    if rewrite:
                        text = re.sub(r"(?im)^range:[^\r\n]*(\r\n|$)", "", text).rstrip("\r\n")
                        sink.sendall(text.encode("latin-1") + b"\r\n\r\n")
                    with self._lock:
                        self.requests.append(text)
                if len(pending) > 1 << 16:
                    pending = b""  # not HTTP (a TLS hello): nothing to record
        with self._lock:
            if generation == self._generation:
                self.open_connections -= 1  # the client is done with it
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _spend(self, size: int) -> bool:
        """Whether ``size`` more bytes may reach the node; when the cut's budget runs out, the route goes down."""
        with self._lock:
            if self._budget is None:
                return True
            self._budget -= size
            if self._budget >= 0:
                return True
        self.cut_done.set()
        self.close()
        return False

    def _responses(self, source: socket.socket, sink: socket.socket) -> None:
        # A token bucket holding at most a tenth of a second's bytes: an idle keep-alive connection earns no burst.
        rate = self.rate
        burst = (rate or 0) / 10
        tokens, last = burst, time.monotonic()
        with contextlib.suppress(OSError):
            while data := source.recv(self.CHUNK):
                if not self._spend(len(data)):
                    return
                if rate:
                    now = time.monotonic()
                    tokens = min(burst, tokens + (now - last) * rate) - len(data)
                    last = now
                    if tokens < 0:
                        time.sleep(-tokens / rate)
                sink.sendall(data)
                with self._lock:
                    self.bytes_down += len(data)
        with self._lock:
            for sock in (source, sink):
                with contextlib.suppress(ValueError):
                    self._sockets.remove(sock)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
