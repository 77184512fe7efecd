"""Real nginx (Debian's) with our nginx.conf, on free loopback ports, for the tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, free_port, wait_http

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

needs_nginx = [
    pytest.mark.nginx,
    pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed"),
]


class Nginx:
    """Our nginx.conf, adapted in its ports (and, where a test says so, its read timeout);
    several backend ports make the upstream block balance them round robin."""

    def __init__(self, backend_port: int | list[int], read_timeout: str | None = None) -> None:
        ports = [backend_port] if isinstance(backend_port, int) else backend_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="llm-nginx-"))
        self.prefix.chmod(0o755)
        conf = (ROOT / "nginx.conf").read_text()
        conf, n_listen = re.subn(r"listen 8080;", f"listen 127.0.0.1:{self.port};", conf)
        servers = "\n        ".join(f"server 127.0.0.1:{port};" for port in ports)
        conf, n_server = re.subn(r"server 127\.0\.0\.1:8000;", servers, conf)
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

    def make(backend_port: int | list[int], read_timeout: str | None = None) -> Nginx:
        proxy = Nginx(backend_port, read_timeout)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
