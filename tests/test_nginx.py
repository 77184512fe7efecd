"""Real nginx (Debian's) with our nginx.conf in front of the service."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port, openai_env, sim_prompt, wait_http
from sseclient import Comment, Event, collect, start, text_of, until_first_token

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed"),
]


class Nginx:
    """Our nginx.conf, adapted in its ports (and, where a test says so, one timeout)."""

    def __init__(self, backend_port: int, read_timeout: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="llm-nginx-"))
        self.prefix.chmod(0o755)
        conf = (ROOT / "nginx.conf").read_text()
        conf, n_listen = re.subn(r"listen 8080;", f"listen 127.0.0.1:{self.port};", conf)
        conf, n_server = re.subn(r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{backend_port};",
                                 conf)
        assert n_listen == 1 and n_server == 1, "nginx.conf no longer has the expected ports"
        if read_timeout is not None:
            conf, n = re.subn(r"proxy_read_timeout \S+;", f"proxy_read_timeout {read_timeout};",
                              conf)
            assert n >= 1  # every stream location
        (self.prefix / "nginx.conf").write_text(conf)
        self.log = open(self.prefix / "out.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/healthz", proc=self.proc, log=self.prefix / "out.log")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture
def nginx_factory() -> Iterator[Any]:
    started: list[Nginx] = []

    def make(backend_port: int, read_timeout: str | None = None) -> Nginx:
        proxy = Nginx(backend_port, read_timeout)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def test_tokens_arrive_one_by_one_through_nginx(service_factory: Any, nginx_factory: Any,
                                                sim: Any) -> None:
    service = service_factory(openai_env(sim, BUFFER_MAX_TOKENS=1))
    proxy = nginx_factory(service.port)
    words = [f"w{i} " for i in range(6)]
    stream = start(proxy.url, {"messages": sim_prompt(tokens=words, delay=0.4)})
    assert stream.status == 200
    assert "gzip" not in stream.headers.get("Content-Encoding", "")
    assert stream.headers["X-Accel-Buffering"] == "no"
    assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = collect(stream)
    tokens = [e for e in events[:-1] if e.json["type"] == "token"]
    assert [e.json["token"] for e in tokens] == words
    gaps = [b.at - a.at for a, b in itertools.pairwise(tokens)]
    # 0.4 s apart at the upstream: a buffering proxy would deliver them together.
    assert all(gap > 0.2 for gap in gaps), gaps


def test_heartbeats_keep_a_silent_stream_past_the_read_timeout(
        service_factory: Any, nginx_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=30))
    proxy = nginx_factory(service.port, read_timeout="3s")
    started = time.monotonic()
    stream = start(proxy.url, {"messages": sim_prompt(first_delay=6, tokens=["after ", "6s"])})
    items: list[Any] = []
    for item in stream:
        items.append(item)
        if isinstance(item, Event) and item.data == "[DONE]":
            break
    stream.close()
    assert time.monotonic() - started > 5.5
    assert sum(1 for i in items if isinstance(i, Comment) and i.text == "ping") >= 4
    events = [i for i in items if isinstance(i, Event)]
    assert text_of(events) == "after 6s"
    assert events[-2].json["type"] == "done"


def test_client_abort_reaches_the_service_through_nginx(service_factory: Any,
                                                        nginx_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, RESUME_GRACE=0, HEARTBEAT_INTERVAL=30))
    proxy = nginx_factory(service.port)
    stream = start(proxy.url, {"messages": sim_prompt(tokens=20, stall_after=2)})
    until_first_token(stream)
    left = time.monotonic()
    stream.close()
    record = sim.requests[0]
    assert record.wait_closed(10)
    assert record.closed_at - left < 3.0
