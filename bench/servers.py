"""The processes a benchmark run starts (simulator, this service, the baseline, redis-server)
and their cost.

CPU and memory come from the kernel's accounting of the server's whole process tree
(/proc/<pid>/stat utime + stime, /proc/<pid>/status VmRSS): the gunicorn master and its
workers, or uvicorn and its workers. A sampler thread records them every 50 ms, so a figure can
be taken over any window afterwards. A redis-server started for this service is sampled the
same way, apart from it, and also for what it was asked (INFO commandstats) and who holds its
connections (CLIENT LIST, by the name each worker's store gives them: `llmstream-<worker>`).
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
# What a developer's shell may hold that would change what is measured (PROTOCOL.md's
# configuration and the SDK's): each server gets only what the benchmark sets.
_DROP_PREFIXES = ("OPENAI_", "LLM_", "BUFFER_", "MAX_", "REDIS_", "API_KEYS", "WEB_CONCURRENCY",
                  "WORKER_CONNECTIONS", "BIND", "PROMETHEUS_MULTIPROC_DIR", "HEARTBEAT_",
                  "STREAM_", "RESUME_", "IDLE_", "FIRST_TOKEN_", "UPSTREAM_", "SEND_TIMEOUT",
                  "BODY_TIMEOUT", "CORS_ORIGINS", "ALLOWED_MODELS", "SIMULATED_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text()
                         .split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class Server:
    """A server process (tree) on a loopback port, sampled while it runs."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int,
                 health: str | None = "/healthz") -> None:
        self.name, self.port = name, port
        self.tmp = Path(tempfile.mkdtemp(prefix=f"llm-bench-{name}-"))
        self.log_path = self.tmp / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu s, rss bytes)
        self._stop = threading.Event()
        self.redis: RedisServer | None = None  # the Redis this server's store uses, if any
        try:
            if health is not None:
                self._wait_healthy(health)
        except BaseException:
            self.stop()
            raise
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds of the tree between two monotonic times, from the samples."""
        return self._cpu_at(end) - self._cpu_at(start)

    def _cpu_at(self, t: float) -> float:
        samples = list(self.samples)
        times = [s[0] for s in samples]
        i = bisect.bisect_left(times, t)
        if i == 0:
            return samples[0][1]
        if i >= len(samples):
            return samples[-1][1]
        (t0, c0, _), (t1, c1, _) = samples[i - 1], samples[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def _sample(self) -> None:
        while not self._stop.is_set():
            pids = self.pids()
            self.samples.append((time.monotonic(), cpu_seconds(pids), rss_bytes(pids)))
            self._stop.wait(0.05)

    def _wait_healthy(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)  # nothing to wait on but the port
        raise RuntimeError(f"{self.name} did not come up:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(35)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        if self.redis is not None:
            self.redis.stop()


def _interpolate(samples: list[tuple[float, dict[str, int]]], t: float) -> dict[str, float]:
    """Counters at monotonic time `t`, linear between the two samples around it."""
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, t)
    if i == 0 or i >= len(samples):
        return {k: float(v) for k, v in samples[min(i, len(samples) - 1)][1].items()}
    (t0, a), (t1, b) = samples[i - 1], samples[i]
    f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
    return {k: a.get(k, 0) + (b.get(k, 0) - a.get(k, 0)) * f for k in a.keys() | b.keys()}


class RedisServer(Server):
    """Debian's redis-server on a free loopback port in a temp dir, without persistence.

    Besides its CPU (the sampler above, on its own process), a second thread records every
    0.2 s the commands it has run (INFO commandstats: those run inside scripts count too) and
    its clients by name (CLIENT LIST). The INFO and CLIENT LIST calls are the benchmark's own:
    left out of the counts."""

    OWN = frozenset({"info", "client|list"})
    INTERVAL = 0.2

    def __init__(self) -> None:
        import redis

        port = free_port()
        server = shutil.which("redis-server") or "/usr/sbin/redis-server"
        tmp = Path(tempfile.mkdtemp(prefix="llm-bench-redis-"))
        cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
               "--save", "", "--appendonly", "no", "--logfile", "", "--maxclients", "10000"]
        super().__init__("redis", cmd, _base_env(), port, health=None)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.commands: list[tuple[float, dict[str, int]]] = []  # (monotonic, calls by command)
        self.clients: list[tuple[float, dict[str, int]]] = []  # (monotonic, connections by name)
        try:
            self._client = self._connect(redis)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _connect(self, redis: Any) -> Any:
        deadline = time.monotonic() + 15
        while True:
            client = redis.Redis(port=self.port, socket_timeout=5, single_connection_client=True)
            try:
                client.ping()
                return client
            except redis.ConnectionError as exc:
                client.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not come up:\n{self.log()[-3000:]}"
                                       ) from exc
                time.sleep(0.05)  # the port is not open yet: nothing to wait on

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self._client.info("commandstats")
                listed = self._client.client_list()
            except Exception:  # stopping, or Redis went away: nothing to sample
                if self._stop.wait(self.INTERVAL):
                    return
                continue
            now = time.monotonic()
            calls = {key.removeprefix("cmdstat_"): int(value["calls"])
                     for key, value in stats.items()}
            self.commands.append((now, {k: v for k, v in calls.items() if k not in self.OWN}))
            names: dict[str, int] = {}
            for client in listed:
                names[client.get("name") or ""] = names.get(client.get("name") or "", 0) + 1
            self.clients.append((now, names))
            self._stop.wait(self.INTERVAL)

    def commands_between(self, start: float, end: float) -> dict[str, float]:
        """Commands run between two monotonic times, by command (interpolated)."""
        samples = list(self.commands)
        if not samples:
            return {}
        a, b = _interpolate(samples, start), _interpolate(samples, end)
        return {k: b.get(k, 0) - a.get(k, 0) for k in a.keys() | b.keys()
                if b.get(k, 0) - a.get(k, 0) > 0}

    def connections(self, start: float, end: float, prefix: str = "llmstream-"
                    ) -> dict[str, Any]:
        """This service's connections per worker (by the store's connection name) at the
        sample between `start` and `end` with the most of them."""
        best: dict[str, int] = {}
        most_per_worker = 0
        for t, names in list(self.clients):
            if start <= t <= end:
                ours = {n: c for n, c in names.items() if n.startswith(prefix)}
                most_per_worker = max([most_per_worker, *ours.values()])
                if sum(ours.values()) > sum(best.values()):
                    best = ours
        return {"workers": len(best), "per_worker": sorted(best.values(), reverse=True),
                "total": sum(best.values()), "max_per_worker": most_per_worker}

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(Exception):
            self._client.close()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_simulator() -> Server:
    """The lean OpenAI-wire simulator (bench/wire_sim.py); it prints its port."""
    port = free_port()
    return Server("sim", [PYTHON, str(BENCH / "wire_sim.py"), "--port", str(port)],
                  _base_env(), port, health="/v1/models")


def start_ours(sim_port: int, workers: int = 1, buffer_max_tokens: int | None = None,
               redis: bool = False) -> Server:
    """This service as deployed: gunicorn's gevent worker, `gunicorn.conf.py`, defaults; with
    `redis`, its streams in a redis-server of its own (`server.redis`, stopped with it)."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="llm-bench-ours-"))
    env = _base_env() | {
        "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers),
        "LLM_PROVIDER": "openai", "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{sim_port}/v1", "LLM_MODEL": "sim-model",
        # gunicorn 25+ opens a control socket there, and metrics need a directory: one each.
        "XDG_RUNTIME_DIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    if buffer_max_tokens is not None:
        env["BUFFER_MAX_TOKENS"] = str(buffer_max_tokens)
    name = f"ours-w{workers}" + (f"-b{buffer_max_tokens}" if buffer_max_tokens else "")
    store = RedisServer() if redis else None
    if store is not None:
        env["REDIS_URL"] = store.url
        name += "-redis"
    try:
        server = Server(name, [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                        env, port)
    except BaseException:
        if store is not None:
            store.stop()
        raise
    server.redis = store
    return server


def start_baseline(sim_port: int, workers: int = 1) -> Server:
    """FastAPI + uvicorn (uvloop and httptools when installed, as `uvicorn --loop auto` picks)."""
    port = free_port()
    env = _base_env() | {"OPENAI_API_KEY": "sk-bench", "LLM_MODEL": "sim-model",
                         "OPENAI_BASE_URL": f"http://127.0.0.1:{sim_port}/v1"}
    cmd = [PYTHON, "-m", "uvicorn", "--app-dir", str(BENCH / "baseline"), "app:app",
           "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    return Server(f"baseline-w{workers}", cmd, env, port)
