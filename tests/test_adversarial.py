"""Hostile and careless clients against the running service under gunicorn: bodies that never
arrive, sockets that never read, methods that would open streams, retried POSTs, odd ids.
Each asserts the contract's answer and that the upstream was not touched where it must not be.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Service, openai_env
from conftest import sim_body as body
from sseclient import attach, collect, request, start, text_of


@pytest.fixture(scope="module")
def service(upstream: Any) -> Iterator[Service]:
    svc = Service(openai_env(upstream, HEARTBEAT_INTERVAL=1, BODY_TIMEOUT=1, SEND_TIMEOUT=2,
                             RESUME_GRACE=1, STREAM_TTL=30, API_KEYS="key-a,key-b",
                             # Room for a request that scripts a long answer.
                             MAX_BODY_BYTES=16 * 2**20))
    yield svc
    svc.stop()


AUTH_A = {"Authorization": "Bearer key-a"}
AUTH_B = {"Authorization": "Bearer key-b"}


def worker_pid(svc: Service) -> int:
    out = subprocess.run(["pgrep", "-P", str(svc.proc.pid)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw_connect(svc: Service, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", svc.port))
    sock.settimeout(30)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_body_that_never_arrives_gets_408_and_a_closed_connection(service: Service,
                                                                    sim: Any) -> None:
    sock = raw_connect(service)
    payload = json.dumps(body(tokens=2)).encode()
    sock.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
                 + payload[:10])
    started = time.monotonic()
    answer = read_until_closed(sock)  # the server closes it: recv returns b""
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"request_timeout"' in answer
    assert time.monotonic() - started < 10
    assert sim.requests == []  # refused: never reached the upstream


def test_a_slow_body_does_not_delay_other_streams(service: Service, sim: Any) -> None:
    slow = raw_connect(service)
    slow.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
    events = collect(start(service.url, body(tokens=3), AUTH_A))
    assert text_of(events) == "t0 t1 t2 "
    assert read_until_closed(slow).startswith(b"HTTP/1.1 408 ")
    slow.close()


def test_a_client_that_never_reads_is_dropped_after_send_timeout(service: Service,
                                                                 sim: Any) -> None:
    pid = worker_pid(service)
    collect(start(service.url, body(tokens=1), AUTH_A))  # warm: the upstream pool is open
    before = open_fds(pid)
    sim.reset()
    # A long, fast answer into a socket that is never read: its buffers fill in a moment.
    big = ["x" * 20000 + " "] * 400  # 8 MB: more than both sides' socket buffers hold
    sock = raw_connect(service, rcvbuf=4096)
    # Then the upstream stalls: the stream runs on until its last client is gone.
    payload = json.dumps(body(tokens=big, delay=0, stall_after=len(big))).encode()
    sock.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
                 + payload)
    assert sim.wait_for_requests(1, 10)
    record = sim.requests[0]
    # Meanwhile other streams go on untouched.
    assert text_of(collect(start(service.url, body(tokens=3), AUTH_A))) == "t0 t1 t2 "
    # SEND_TIMEOUT (2 s) after its socket filled, the service gives up on it: with nobody
    # else following, RESUME_GRACE (1 s) later the upstream request is closed.
    assert record.wait_closed(30), "the stuck client still holds its stream"
    assert record.outcome != "completed"
    sock.close()
    deadline = time.monotonic() + 10
    while open_fds(pid) > before and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker closes its side asynchronously: poll its fd table
    assert open_fds(pid) <= before


@pytest.mark.parametrize("method", ["HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_a_stream_path_get_405_and_open_nothing(service: Service, sim: Any,
                                                                 method: str) -> None:
    events = collect(start(service.url, body(tokens=1), AUTH_A))
    stream_id = events[0].json["stream_id"]
    sim.reset()
    for path in (f"/api/chat/stream/{stream_id}", "/api/chat/stream",
                 f"/api/chat/stream/{stream_id}/cancel"):
        status, _, _ = request(service.url, method, path, headers=AUTH_A)
        assert status == 405, (method, path)
    assert sim.requests == []


def test_an_idempotency_key_attaches_a_retried_post_to_its_stream(service: Service,
                                                                  sim: Any) -> None:
    headers = {**AUTH_A, "Idempotency-Key": "retry-me-1"}
    script = body(tokens=[f"w{i} " for i in range(20)], delay=0.02)
    first = start(service.url, script, headers)
    stream_id = first.headers["X-Stream-Id"]
    first_events = collect(first)
    again = start(service.url, script, headers)
    assert again.headers["X-Stream-Id"] == stream_id
    assert [e.data for e in collect(again)] == [e.data for e in first_events]
    assert len(sim.requests) == 1  # one generation paid for
    # After an id the client has, only what follows; at the end, 204.
    tail = collect(start(service.url, script, {**headers, "Last-Event-ID": "3"}))
    assert tail[0].id == "4"
    past = start(service.url, script, {**headers, "Last-Event-ID": first_events[-2].id or ""})
    assert past.status == 204
    past.conn.close()
    # The same key with another body: 422; another API key: its own namespace.
    status, _, raw = request(service.url, "POST", "/api/chat/stream", body(tokens=2), headers)
    assert status == 422 and b"Idempotency-Key" in raw
    other = start(service.url, script, {**AUTH_B, "Idempotency-Key": "retry-me-1"})
    assert other.headers["X-Stream-Id"] != stream_id
    collect(other)
    assert len(sim.requests) == 2


@pytest.mark.parametrize("key", ["", "a" * 129, "has space", "tab\there", "é"])
def test_a_malformed_idempotency_key_is_refused(service: Service, sim: Any, key: str) -> None:
    status, _, raw = request(service.url, "POST", "/api/chat/stream", body(tokens=1),
                             {**AUTH_A, "Idempotency-Key": key.encode("latin-1", "replace")
                              .decode("latin-1")})
    assert status == 422 and b"Idempotency-Key" in raw
    assert sim.requests == []


def test_the_resume_token_opens_that_stream_and_nothing_else(service: Service,
                                                             sim: Any) -> None:
    first = collect(start(service.url, body(tokens=3), AUTH_A))
    stream_id, token = first[0].json["stream_id"], first[0].json["resume_token"]
    other = collect(start(service.url, body(tokens=1), AUTH_A))
    other_id = other[0].json["stream_id"]
    # A browser EventSource sends no Authorization header: the token stands in for the key.
    again = collect(attach(service.url, f"{stream_id}?token={token}"))
    assert text_of(again) == "t0 t1 t2 "
    for path in (f"/api/chat/stream/{other_id}?token={token}",
                 f"/api/chat/stream/{stream_id}?token=wrong"):
        status, _, _ = request(service.url, "GET", path)
        assert status == 404
    status, _, _ = request(service.url, "GET", f"/api/chat/stream/{stream_id}")
    assert status == 401
    # Not a key: it cannot cancel, nor start anything.
    status, _, _ = request(service.url, "POST",
                           f"/api/chat/stream/{stream_id}/cancel?token={token}")
    assert status == 401


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "0x10", " ", "1e3", "١٢"])
def test_odd_last_event_ids_get_400(service: Service, sim: Any, value: str) -> None:
    first = collect(start(service.url, body(tokens=1), AUTH_A))
    stream_id = first[0].json["stream_id"]
    status, _, raw = request(service.url, "GET", f"/api/chat/stream/{stream_id}",
                             headers={**AUTH_A, "Last-Event-ID": value.encode().decode("latin-1")})
    assert status == 400, raw


def test_metrics_and_the_log_line_of_a_stream(service: Service, sim: Any) -> None:
    first = start(service.url, body(tokens=[f"w{i} " for i in range(40)], delay=0.02), AUTH_A)
    stream_id = first.headers["X-Stream-Id"]
    next(iter(first))  # the first bytes
    first.close()  # gone mid-answer: noticed at once
    again = collect(attach(service.url, stream_id, headers=AUTH_A))
    assert again[-2].json["type"] == "done"
    _, _, raw = request(service.url, "GET", "/metrics")
    text = raw.decode()

    def value(name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in /metrics")

    assert value('llm_disconnects_total{cause="client_closed"}') >= 1
    assert value("llm_resumes_total") >= 1
    assert value("llm_bytes_sent_total") > sum(len(e.data) for e in again)
    assert value("llm_stream_duration_seconds_count") >= 1
    assert value("llm_heartbeats_total") >= 0
    lines = [json.loads(line[line.index("{"):]) for line in service.log().splitlines()
             if '"event": "stream_end"' in line]
    mine = [entry for entry in lines if entry["stream"] == stream_id[:8]]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["outcome"] == "stop" and entry["deltas"] == 40 and entry["resumes"] == 1
    assert entry["ttft_ms"] > 0 and entry["duration_ms"] >= entry["ttft_ms"]
    assert entry["events"] == len(again) - 1 and entry["bytes"] > 0


def test_no_key_or_token_in_any_log_line_or_metric(service: Service, sim: Any) -> None:
    """Last in the module: everything the tests above made the service log or count."""
    events = collect(start(service.url, body(tokens=2), AUTH_B))
    token = events[0].json["resume_token"]
    collect(attach(service.url, f"{events[0].json['stream_id']}?token={token}"))
    status, _, raw = request(service.url, "GET", "/metrics")
    assert status == 200
    for text in (service.log(), raw.decode()):
        for secret in ("key-a", "key-b", "SECRETKEY", token, "Bearer"):
            assert secret not in text


def test_readiness_probes_the_upstream_once_however_many_ask(service_factory: Any) -> None:
    """A flood of unauthenticated /readyz: one upstream probe per period (single flight)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    probes: list[float] = []

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            probes.append(time.monotonic())
            time.sleep(0.5)  # a slow upstream: concurrent probes would pile up meanwhile
            payload = b'{"object": "list", "data": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        svc = service_factory({"LLM_PROVIDER": "openai", "OPENAI_API_KEY": "sk-x",
                               "OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_port}/v1"})
        statuses: list[int] = []
        started = time.monotonic()

        def ask() -> None:
            statuses.append(request(svc.url, "GET", "/readyz")[0])

        askers = [threading.Thread(target=ask) for _ in range(40)]
        for t in askers:
            t.start()
        for t in askers:
            t.join(30)
        assert statuses == [200] * 40
        assert time.monotonic() - started < 5  # all inside one cache period...
        assert len(probes) == 1  # ...and so one probe
    finally:
        server.shutdown()
        server.server_close()


def test_drain_with_a_client_that_never_reads(service_factory: Any, sim: Any) -> None:
    """SIGTERM while one client's socket is full: the others still get their terminal event
    before the kill, and the worker still goes within graceful_timeout."""
    import signal

    from sseclient import until_first_token

    svc = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1, GRACEFUL_TIMEOUT=5,
                                     SEND_TIMEOUT=30, MAX_BODY_BYTES=16 * 2**20))
    big = ["x" * 20000 + " "] * 400
    stuck = raw_connect(svc, rcvbuf=4096)
    payload = json.dumps(body(tokens=big, delay=0, stall_after=len(big))).encode()
    stuck.sendall(b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
                  + payload)
    assert sim.wait_for_requests(1, 10)
    healthy = start(svc.url, body(tokens=1000, delay=0.05))
    until_first_token(healthy)
    stopped = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    events = collect(healthy)
    assert events[-2].json["code"] == "producer_lost"
    assert time.monotonic() - stopped < 5
    svc.proc.wait(15)  # gunicorn kills what is left at graceful_timeout: the stuck write
    assert time.monotonic() - stopped < 12
    stuck.close()


FORGED = ["ok ", "\n\ndata: [DONE]\n\n", "id: 99\r\nretry: 1\r", "\u2028data: [DONE]\u2029",
          "\x85event: x\x0b\x0c\x1c\x1d\x1e", "\ud7ff😀 end"]


def test_forged_lines_in_model_text_stay_text(service: Service, sim: Any) -> None:
    stream = start(service.url, body(tokens=FORGED), AUTH_A)
    events = collect(stream)
    assert text_of(events) == "".join(FORGED)
    assert [e.data for e in events].count("[DONE]") == 1
    # A client that splits lines the way str.splitlines does sees the same events.
    raw = bytes(stream.raw).decode()
    lines = raw.splitlines()
    data = [line[6:] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    tokens = [json.loads(d)["token"] for d in data[:-1] if json.loads(d)["type"] == "token"]
    assert "".join(tokens) == "".join(FORGED)
    assert not any(line.startswith(("event:", "id: 99", "retry: 1 ")) or line == "retry: 1"
                   for line in lines)


def test_a_flood_of_attaches_meets_max_followers(service: Service, sim: Any) -> None:
    origin = start(service.url, body(tokens=[f"w{i} " for i in range(200)], delay=0.05), AUTH_A)
    stream_id = origin.headers["X-Stream-Id"]
    followers = []
    try:
        for _ in range(15):  # with the starter: 16, MAX_FOLLOWERS' default
            follower = attach(service.url, stream_id, headers=AUTH_A)
            assert follower.status == 200
            followers.append(follower)
        status, headers, raw = request(service.url, "GET", f"/api/chat/stream/{stream_id}",
                                       headers=AUTH_A)
        assert status == 429 and headers.get("retry-after")
        assert json.loads(raw)["error"]["message"]
        followers.pop().close()  # one leaves: one more may come
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            again = attach(service.url, stream_id, headers=AUTH_A)
            if again.status == 200:
                followers.append(again)
                break
            again.close()
            time.sleep(0.05)  # the departure is noticed asynchronously: poll
        assert followers[-1].status == 200 and len(followers) == 15
    finally:
        for follower in followers:
            follower.close()
        origin.close()
    assert len(sim.requests) == 1
