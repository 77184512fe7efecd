"""A TCP proxy on a free loopback port that a test can sever: every connection it carries is
cut at once (`cut()`), the way a flaky network or a restarted load balancer drops a stream,
while new connections keep being accepted. Stdlib only."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from types import TracebackType


class TCPProxy:
    """Forward 127.0.0.1:<port> to `target` (host, port); `cut()` severs what is open."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0  # connections taken so far
        self.cuts = 0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._frozen: set[tuple[socket.socket, socket.socket]] = set()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcpproxy-{self.port}",
                                        daemon=True)

    def start(self) -> TCPProxy:
        self._thread.start()
        return self

    def cut(self) -> int:
        """Sever every open connection (RST to both ends); return how many there were."""
        with self._lock:
            pairs = list(self._pairs)
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        return len(pairs)

    def freeze(self) -> int:
        """Stop forwarding on every open connection but keep it open, as a half-open
        connection does (a laptop waking, a network change); return how many there were."""
        with self._lock:
            self._frozen.update(self._pairs)
            return len(self._pairs)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut()
        self._thread.join(5)
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> TCPProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self._lock:
                self.accepted += 1
                self._pairs.add(pair)
            thread = threading.Thread(target=self._pump, args=(pair,), daemon=True,
                                      name=f"tcpproxy-{self.port}-conn")
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        """Copy bytes both ways until either side ends; then close both."""
        client, upstream = pair
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            try:
                while True:
                    if pair in self._frozen:
                        if self._closing:
                            break
                        time.sleep(0.05)  # holding bytes back on purpose: nothing to wait on
                        continue
                    for key, _ in sel.select(timeout=0.5):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(65536)
                        if not data:
                            raise ConnectionError("closed")
                        peer[sock].sendall(data)
            except (OSError, ValueError):
                pass  # a side closed or was cut
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.close()


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close sends RST, the way a dead middlebox's connection ends; shutdown first
    # wakes the pump thread blocked in select/recv.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
