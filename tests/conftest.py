"""Fixtures that start real parts on free loopback ports: the service under gunicorn's gevent
worker (or a plain threaded server), the OpenAI-wire simulator, and helpers to reach them."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable

# Variables of the contract (PROTOCOL.md, "Configuration") and of the OpenAI SDK that a
# developer's shell may hold: tests set their own. An exported OPENAI_API_KEY must never send a
# test to the real OpenAI.
_CONTRACT_VARS = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_PROVIDER", "LLM_MODEL", "ALLOWED_MODELS",
    "HEARTBEAT_INTERVAL", "FIRST_TOKEN_TIMEOUT", "IDLE_TIMEOUT", "STREAM_TIMEOUT",
    "UPSTREAM_RETRIES", "BUFFER_MAX_TOKENS", "BUFFER_MAX_DELAY_MS", "RESUME_GRACE",
    "STREAM_TTL", "REDIS_URL", "REDIS_CLUSTER", "REDIS_PREFIX", "CORS_ORIGINS", "API_KEYS",
    "MAX_BODY_BYTES", "MAX_STREAMS", "MAX_STREAMS_PER_KEY", "MAX_MESSAGES",
    "MAX_OUTPUT_TOKENS", "IMAGE_URL_SCHEMES", "MAX_FOLLOWERS", "MAX_CONNECTIONS_PER_KEY",
    "BODY_TIMEOUT", "SEND_TIMEOUT", "BIND", "WEB_CONCURRENCY", "WORKER_CONNECTIONS",
    "GRACEFUL_TIMEOUT", "SIMULATED_TOKENS_PER_SECOND", "PROMETHEUS_MULTIPROC_DIR",
    "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
)


@pytest.fixture(scope="session", autouse=True)
def _no_contract_environment() -> Iterator[None]:
    """In-process tests (Settings(), the blueprint, the SDK) never see the shell's values."""
    with pytest.MonkeyPatch.context() as patch:
        for name in _CONTRACT_VARS:
            patch.delenv(name, raising=False)
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None) -> None:
    """Wait until `url` answers 200 (the server is up), or fail with its log."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
        try:
            conn.request("GET", parts.path or "/")
            with conn.getresponse() as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)  # polling a port that is not open yet: there is no event to wait on
    text = log.read_text() if log is not None and log.exists() else ""
    raise RuntimeError(f"{url} did not come up in {timeout}s\n{text[-4000:]}")


class Service:
    """The service in a subprocess: gunicorn + gevent (`wsgi:app`), or a threaded server."""

    def __init__(self, env: dict[str, Any] | None = None, *, threaded: bool = False,
                 workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="llm-stream-test-"))
        self.log_path = self.tmp / "service.log"
        base = {k: v for k, v in os.environ.items() if k not in _CONTRACT_VARS}
        base.update({
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(workers),
            # gunicorn 25+ opens a control socket there: one per instance.
            "XDG_RUNTIME_DIR": str(self.tmp),
            "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "metrics"),
            "PYTHONUNBUFFERED": "1",
        })
        base.update({k: str(v) for k, v in (env or {}).items()})
        if threaded:
            cmd = [PYTHON, str(TESTS / "threaded_server.py"), str(self.port)]
            base.pop("PROMETHEUS_MULTIPROC_DIR")
        else:
            cmd = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=base, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.url + "/healthz", proc=self.proc, log=self.log_path)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def service_factory() -> Iterator[Any]:
    """Start services with given environments; all are stopped after the test."""
    started: list[Service] = []

    def start(env: dict[str, Any] | None = None, **kwargs: Any) -> Service:
        service = Service(env, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Any]:
    """One OpenAI-wire simulator for the session; each test starts from a clean record."""
    from upstream_sim import UpstreamSimulator

    with UpstreamSimulator() as sim:
        yield sim


@pytest.fixture
def sim(upstream: Any) -> Any:
    upstream.reset()
    return upstream


def openai_env(sim: Any, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "LLM_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test-SECRETKEY-0123456789",
        "OPENAI_BASE_URL": sim.base_url,
        "LLM_MODEL": "sim-model",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def relay_service(upstream: Any) -> Iterator[Service]:
    """A service on the simulator with quick timeouts, shared by a module's tests."""
    service = Service(openai_env(upstream, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=5,
                                 IDLE_TIMEOUT=3, STREAM_TIMEOUT=30, RESUME_GRACE=2,
                                 STREAM_TTL=30))
    yield service
    service.stop()


class RecordingProducer:
    """A store's producer callbacks, recorded as events a test can wait on."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.presence = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def presence_changed(self) -> None:
        self.presence.set()


def sim_body(**script: Any) -> dict[str, Any]:
    """A native request body whose last user turn scripts the simulator."""
    return {"messages": sim_prompt(**script)}


def sim_prompt(**script: Any) -> list[dict[str, Any]]:
    """Messages whose last user turn scripts the simulator."""
    import json

    return [{"role": "user", "content": "SIM " + json.dumps(script)}]


from nginxfix import nginx_factory  # noqa: E402, F401
from redisfix import redis_cluster, redis_crashable, redis_server  # noqa: E402, F401
