"""Real Redis for the tests: Debian's `redis-server` on free loopback ports in temp dirs, alone
or as a three-node Redis Cluster built with `redis-cli --cluster create`."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; both at most 65535."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


class RedisServer:
    """One redis-server process; `stop()` kills it (a crash, not a shutdown) and `start()`
    brings it back on the same port, empty."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llm-stream-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--logfile", str(self.dir / "redis.log"), *self._extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self._wait_ping()

    def _wait_ping(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            if self.cli("PING").strip() == "PONG":
                return
            time.sleep(0.02)  # the port is not open yet: there is no event to wait on
        log = (self.dir / "redis.log")
        raise RuntimeError(f"redis-server on {self.port} did not start\n"
                           f"{log.read_text() if log.exists() else ''}")

    def cli(self, *args: str) -> str:
        done = subprocess.run([REDIS_CLI, "-p", str(self.port), *args], capture_output=True,
                              text=True, timeout=10, check=False)
        return done.stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters, no replicas, on free ports."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(_free_cluster_port(), "--cluster-enabled", "yes",
                                  "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", "2000") for _ in range(3)]
        try:
            subprocess.run(
                [REDIS_CLI, "--cluster", "create",
                 *[f"127.0.0.1:{n.port}" for n in self.nodes], "--cluster-yes"],
                capture_output=True, text=True, timeout=60, check=True)
            self._wait_ok()
        except BaseException:
            self.close()
            raise
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def _wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes):
                return
            time.sleep(0.1)  # the nodes gossip the slot map: nothing to wait on
        raise RuntimeError("the Redis Cluster did not become ready")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by stream ids and key prefixes."""
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_crashable() -> Iterator[RedisServer]:
    """A redis-server of its own, for a test that kills and restarts it."""
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    yield cluster
    cluster.close()


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    files = {name: directory / f"{name}" for name in ("ca.key", "ca.crt", "server.key",
                                                      "server.csr", "server.crt", "san.cnf")}
    files["san.cnf"].write_text("subjectAltName=IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], capture_output=True, timeout=60, check=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", str(files["server.key"]), "-out", str(files["server.csr"]))
    openssl("x509", "-req", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]),
            "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "1",
            "-extfile", str(files["san.cnf"]), "-out", str(files["server.crt"]))
    return files
