"""The processes a benchmark run starts (simulator, this service, the baseline) and their cost.

CPU and memory come from the kernel's accounting of the server's whole process tree
(/proc/<pid>/stat utime + stime, /proc/<pid>/status VmRSS): the gunicorn master and its
workers, or uvicorn and its workers. A sampler thread records them every 50 ms, so a figure can
be taken over any window afterwards.
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_simulator() -> Server:
    """The lean OpenAI-wire simulator (bench/wire_sim.py); it prints its port."""
    port = free_port()
    return Server("sim", [PYTHON, str(BENCH / "wire_sim.py"), "--port", str(port)],
                  _base_env(), port, health="/v1/models")


def start_ours(sim_port: int, workers: int = 1, buffer_max_tokens: int | None = None) -> Server:
    """This service as deployed: gunicorn's gevent worker, `gunicorn.conf.py`, defaults."""
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
    return Server(name, [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                  env, port)


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
