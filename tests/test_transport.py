"""The urllib3 transport under httpx2, against scripted loopback HTTP/1.1 servers (plain and
TLS), under threads and under gevent, and under the SDK against the simulator."""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from streaming.settings import Settings
from streaming.upstream.chunks import UpstreamCutError, iter_sse_data
from streaming.upstream.openai import OpenAIProvider
from streaming.upstream.provider import CONTENT, FINISH
from streaming.upstream.transport import READ_SIZE, Urllib3Transport, body_of

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0  # generous bound for anything that should take milliseconds
UNBLOCK = 1.0  # how soon a close must free a blocked reader and reach the server

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n"


def with_length(body: bytes, *headers: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (
        b"".join(h + b"\r\n" for h in headers), len(body), body)


# -- a scripted HTTP/1.1 server -------------------------------------------------------------

CLOSE = object()  # in a reply: close the connection here
AWAIT_CLOSE = object()  # in a reply: read until the client closes, and note when
Part = bytes | float | threading.Event | object


class RawServer:
    """Loopback HTTP/1.1 server answering each request path with scripted writes.

    A reply is a list of parts: bytes are written as they are (one send each), a float pauses
    that long (to split what the client reads), an Event holds the reply until it is set or
    the server closes, CLOSE ends the connection and AWAIT_CLOSE waits for the client to close
    it (`client_closed` is set then). `requests` records (connection number, path) in arrival
    order: the same number twice means a kept-alive connection was reused.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.replies: dict[str, list[Part]] = {}
        self.requests: list[tuple[int, str]] = []
        self.heads: list[bytes] = []  # each request's line and header fields
        self.client_closed = threading.Event()
        self._tls = tls
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def url(self, path: str) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._released.set()
        with self._lock:
            conns = list(self._conns)
        for conn in [*conns, self._listener]:
            with contextlib.suppress(OSError):  # already gone
                conn.shutdown(socket.SHUT_RDWR)  # wakes accept() and recv() in our threads
        self._listener.close()
        self._accepting.join(WAIT)
        for thread in self._threads:
            thread.join(WAIT)

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            number += 1
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            with self._lock:
                self._conns.append(conn)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                path = head.split(b" ")[1].decode()
                with self._lock:
                    self.requests.append((number, path))
                    self.heads.append(head)
                for part in self.replies[path]:
                    if part is CLOSE:
                        return
                    if part is AWAIT_CLOSE:
                        while conn.recv(65536):
                            pass
                        self.client_closed.set()
                        return
                    if isinstance(part, threading.Event):
                        while not (part.wait(0.05) or self._released.is_set()):
                            pass
                    elif isinstance(part, float):
                        time.sleep(part)
                    elif isinstance(part, bytes):
                        conn.sendall(part)
        except OSError:
            if self._released.is_set():
                return  # close() shut us down
            self.client_closed.set()  # a reset from the client is a close too
        finally:
            conn.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(transport=Urllib3Transport(max_idle=4), timeout=WAIT) as http:
        yield http


def fetch(client: httpx2.Client, url: str) -> bytes:
    with client.stream("POST", url, content=b"{}") as response:
        return b"".join(response.iter_raw())


def blocked_in_read(frame_of: Callable[[], Any]) -> None:
    """Wait until a reader is blocked in a socket read (there is no event for that)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        frame = frame_of()
        while frame is not None:
            if frame.f_code.co_name in ("readinto", "recv_into", "recv", "read"):
                return
            frame = frame.f_back
        time.sleep(0.005)
    raise AssertionError("the reader never blocked in a read")


def thread_frame(thread: threading.Thread) -> Callable[[], Any]:
    return lambda: sys._current_frames().get(thread.ident or 0)


# -- framing --------------------------------------------------------------------------------

@pytest.mark.parametrize("pause", [0.0, 0.02], ids=["together", "paced"])
@pytest.mark.parametrize(
    ("reply", "body"),
    [
        pytest.param([CHUNKED, chunk(b"data: a\n\n"), chunk(b"data: b\n\n"), b"0\r\n\r\n"],
                     b"data: a\n\ndata: b\n\n", id="chunk-per-write"),
        pytest.param([CHUNKED, b"5\r", b"\nhel", b"lo\r", b"\n", b"a", b"\r\n", b"0123456789",
                      b"\r", b"\n0\r", b"\n\r", b"\n"], b"hello0123456789",
                     id="split-everywhere"),
        pytest.param([CHUNKED, chunk(b"hello", b";a=1"), chunk(b"!", b';b="x y"'),
                      b"0;c\r\nX-Trailer: 1\r\n\r\n"], b"hello!", id="extensions-trailers"),
        pytest.param([CHUNKED + chunked(b"all", b"at", b"once")], b"allatonce",
                     id="whole-body-with-headers"),
        pytest.param([with_length(b"0123456789")[:-6], b"4567", b"89"], b"0123456789",
                     id="content-length"),
        pytest.param([with_length(b"")], b"", id="content-length-zero"),
    ],
)
def test_body_is_exact_and_the_connection_is_reused(server: RawServer, client: httpx2.Client,
                                                    reply: list[bytes], body: bytes,
                                                    pause: float) -> None:
    parts: list[Part] = []
    for part in reply:
        parts += [part, pause] if pause else [part]
    server.replies["/r"] = parts
    assert fetch(client, server.url("/r")) == body
    assert fetch(client, server.url("/r")) == body
    assert server.requests == [(1, "/r"), (1, "/r")]


def test_pieces_arrive_as_they_are_sent(server: RawServer, client: httpx2.Client) -> None:
    # An SSE body must not wait for a buffer to fill: each event is handed on at once.
    hold = threading.Event()
    server.replies["/sse"] = [CHUNKED, chunk(b"data: first\n\n"), hold, b"0\r\n\r\n"]
    with client.stream("POST", server.url("/sse"), content=b"{}") as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"data: first\n\n"
        hold.set()
        assert list(pieces) == []


def test_a_large_chunk_is_read_in_bounded_pieces(server: RawServer,
                                                 client: httpx2.Client) -> None:
    # A chunk is read whole only up to READ_SIZE: an upstream announcing a huge one (in one
    # piece or slowly) never makes us take it in one allocation.
    big = bytes(range(256)) * (3 * READ_SIZE // 256 + 7)
    server.replies["/big"] = [CHUNKED, b"%x\r\n" % len(big), big[:1000], 0.05, big[1000:],
                              b"\r\n", chunk(b"tail"), b"0\r\n\r\n"]
    with client.stream("POST", server.url("/big"), content=b"{}") as response:
        pieces = list(response.iter_raw())
    assert b"".join(pieces) == big + b"tail"
    assert max(map(len, pieces)) == READ_SIZE


def test_close_delimited_body_is_exact_and_not_reused(server: RawServer,
                                                      client: httpx2.Client) -> None:
    server.replies["/r"] = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil", 0.02,
                            b" the end", CLOSE]
    assert fetch(client, server.url("/r")) == b"until the end"
    assert fetch(client, server.url("/r")) == b"until the end"
    assert server.requests == [(1, "/r"), (2, "/r")]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param([CHUNKED + b"zz\r\nhello\r\n", AWAIT_CLOSE], id="bad-chunk-size"),
        pytest.param([CHUNKED + chunk(b"cut"), CLOSE], id="cut-chunked"),
        pytest.param([with_length(b"0123456789")[:-4], CLOSE], id="cut-content-length"),
    ],
)
def test_a_broken_body_raises_and_is_not_reused(server: RawServer, client: httpx2.Client,
                                                reply: list[Part]) -> None:
    server.replies["/bad"] = reply
    server.replies["/next"] = [with_length(b"next")]
    with pytest.raises(httpx2.TransportError):
        fetch(client, server.url("/bad"))
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/bad"), (2, "/next")]


def test_gzip_body_is_decoded_by_httpx2(server: RawServer, client: httpx2.Client) -> None:
    packed = gzip.compress(b"data: zipped\n\n")
    server.replies["/gz"] = [with_length(packed, b"Content-Encoding: gzip")]
    with client.stream("POST", server.url("/gz"), content=b"{}") as response:
        assert b"".join(response.iter_bytes()) == b"data: zipped\n\n"


def test_headers_and_status_reach_httpx2(server: RawServer, client: httpx2.Client) -> None:
    server.replies["/r"] = [b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n"
                            b"X-Two: a\r\nX-Two: b\r\nContent-Length: 2\r\n\r\nno"]
    response = client.post(server.url("/r"), content=b"{}")
    assert response.status_code == 429 and response.reason_phrase == "Too Many Requests"
    assert response.headers["retry-after"] == "3"
    assert response.headers.get_list("x-two") == ["a", "b"]
    assert response.content == b"no"


# -- errors and timeouts --------------------------------------------------------------------

def test_refused_connection_is_a_connect_error(client: httpx2.Client) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(httpx2.ConnectError):
        client.post(f"http://127.0.0.1:{port}/", content=b"{}")


def test_headers_that_never_come_are_a_read_timeout(server: RawServer,
                                                    client: httpx2.Client) -> None:
    server.replies["/slow"] = [threading.Event()]
    started = time.monotonic()
    with pytest.raises(httpx2.ReadTimeout):
        client.post(server.url("/slow"), content=b"{}", timeout=0.2)
    assert time.monotonic() - started < WAIT


def test_body_read_timeout_bounds_each_read(server: RawServer, client: httpx2.Client) -> None:
    server.replies["/slow"] = [CHUNKED + chunk(b"first"), threading.Event()]
    with client.stream("POST", server.url("/slow"), content=b"{}", timeout=0.2) as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"first"
        with pytest.raises(httpx2.ReadTimeout):
            next(pieces)


def test_without_a_body_read_timeout_a_read_waits_until_closed(server: RawServer) -> None:
    hold = threading.Event()
    server.replies["/slow"] = [CHUNKED + chunk(b"first"), hold, chunk(b"late"), b"0\r\n\r\n"]
    transport = Urllib3Transport(max_idle=1, body_read_timeout=False)
    with httpx2.Client(transport=transport, timeout=0.2) as http, \
            http.stream("POST", server.url("/slow"), content=b"{}") as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"first"
        timer = threading.Timer(0.6, hold.set)  # three read timeouts later
        timer.start()
        assert list(pieces) == [b"late"]
        timer.join()


def test_a_burst_keeps_only_max_idle_connections(server: RawServer) -> None:
    gate = threading.Event()
    server.replies["/hold"] = [CHUNKED + chunk(b"first"), gate, b"0\r\n\r\n"]
    transport = Urllib3Transport(max_idle=1)
    with httpx2.Client(transport=transport, timeout=WAIT) as http:
        # Three at once: past max_idle a request opens its own connection (no pool wait).
        with contextlib.ExitStack() as stack:
            responses = [stack.enter_context(http.stream("POST", server.url("/hold"),
                                                         content=b"{}")) for _ in range(3)]
            gate.set()
            for response in responses:
                assert b"".join(response.iter_raw()) == b"first"
        assert len({number for number, _ in server.requests}) == 3
        # Done: one connection stays for reuse, the other two were closed.
        deadline = time.monotonic() + WAIT
        while sum(t.is_alive() for t in server._threads) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server's threads end as the client closes: poll them
        assert sum(t.is_alive() for t in server._threads) == 1


# -- close from elsewhere, and finishing for reuse ------------------------------------------

@pytest.mark.parametrize("head", [CHUNKED + chunk(b"first"), with_length(b"first-rest")[:-5]],
                         ids=["chunked", "content-length"])
def test_closing_from_another_thread_unblocks_the_reader_and_ends_the_connection(
        server: RawServer, client: httpx2.Client, head: bytes) -> None:
    server.replies["/hold"] = [head, AWAIT_CLOSE]
    server.replies["/next"] = [with_length(b"next")]
    outcome: dict[str, Any] = {}
    with client.stream("POST", server.url("/hold"), content=b"{}") as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"first"

        def read() -> None:
            try:
                outcome["rest"] = list(pieces)
            except httpx2.HTTPError as exc:
                outcome["error"] = exc

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocked_in_read(thread_frame(reader))
        started = time.monotonic()
        response.close()
        reader.join(WAIT)
        elapsed = time.monotonic() - started
        assert server.client_closed.wait(WAIT)
        fin = time.monotonic() - started
    assert not reader.is_alive()
    assert elapsed < UNBLOCK and fin < UNBLOCK
    assert isinstance(outcome.get("error"), httpx2.ReadError), outcome
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/hold"), (2, "/next")]


def test_closing_after_the_whole_body_keeps_the_connection(server: RawServer,
                                                           client: httpx2.Client) -> None:
    server.replies["/r"] = [CHUNKED, chunked(b"whole")]
    for _ in range(2):
        with client.stream("POST", server.url("/r"), content=b"{}") as response:
            assert b"".join(response.iter_raw()) == b"whole"
            response.close()  # what a cancel racing the end of the stream does
    assert server.requests == [(1, "/r"), (1, "/r")]


def _until_done(events: Iterator[bytes]) -> Iterator[bytes]:
    for data in events:
        if data == b"[DONE]":
            return
        yield data


@pytest.mark.parametrize("arrives", [True, False], ids=["end-arrives", "end-late"])
def test_finishing_at_done_keeps_the_connection_if_the_end_arrives(
        server: RawServer, client: httpx2.Client, arrives: bool) -> None:
    # Like the provider: it stops iterating at [DONE], before the last chunk is read.
    late = threading.Event()
    server.replies["/sse"] = [CHUNKED, chunk(b"data: x\n\n"), chunk(b"data: [DONE]\n\n"),
                              *([] if arrives else [late]), b"0\r\n\r\n"]
    server.replies["/next"] = [with_length(b"next")]
    with client.stream("POST", server.url("/sse"), content=b"{}") as response:
        body = body_of(response)
        assert body is not None
        assert list(_until_done(iter_sse_data(iter(body)))) == [b"x"]
        assert body.finish(timeout=0.2 if not arrives else WAIT) is arrives
    late.set()
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/sse"), (1 if arrives else 2, "/next")]


# -- TLS ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-nodes", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_server(tls_files: tuple[Path, Path]) -> Iterator[RawServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    srv = RawServer(tls=context)
    yield srv
    srv.close()


@pytest.fixture
def tls_client(tls_files: tuple[Path, Path]) -> Iterator[httpx2.Client]:
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    transport = Urllib3Transport(max_idle=4, ssl_context=context)
    with httpx2.Client(transport=transport, timeout=WAIT) as http:
        yield http


def test_tls_body_is_exact_and_the_connection_is_reused(tls_server: RawServer,
                                                        tls_client: httpx2.Client) -> None:
    big = bytes(range(256)) * 200  # 51 KiB: several TLS records
    tls_server.replies["/r"] = [CHUNKED + chunk(b"early"), 0.02, chunk(big)[:1000], 0.02,
                                chunk(big)[1000:], b"0\r\n\r\n"]
    assert fetch(tls_client, tls_server.url("/r")) == b"early" + big
    assert fetch(tls_client, tls_server.url("/r")) == b"early" + big
    assert tls_server.requests == [(1, "/r"), (1, "/r")]


def test_tls_refuses_an_unknown_certificate(tls_server: RawServer, client: httpx2.Client) -> None:
    tls_server.replies["/r"] = [with_length(b"secret")]
    with pytest.raises(httpx2.ConnectError):
        fetch(client, tls_server.url("/r"))


def test_tls_close_from_another_thread_unblocks_the_reader(tls_server: RawServer,
                                                           tls_client: httpx2.Client) -> None:
    tls_server.replies["/hold"] = [CHUNKED + chunk(b"first"), AWAIT_CLOSE]
    errors: list[Exception] = []
    with tls_client.stream("POST", tls_server.url("/hold"), content=b"{}") as response:
        pieces = response.iter_raw()
        assert next(pieces) == b"first"

        def read() -> None:
            try:
                list(pieces)
            except httpx2.HTTPError as exc:
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocked_in_read(thread_frame(reader))
        started = time.monotonic()
        response.close()
        reader.join(WAIT)
        assert time.monotonic() - started < UNBLOCK
        assert tls_server.client_closed.wait(WAIT)
    assert not reader.is_alive()
    assert [type(e) for e in errors] == [httpx2.ReadError]


# -- the SDK against the simulator ----------------------------------------------------------

def sdk_client(sim: Any) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(transport=Urllib3Transport(max_idle=4), timeout=WAIT)
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0,
                         http_client=http)


def sdk_post(sdk: openai.OpenAI, **script: Any) -> httpx2.Response:
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "SIM " + json.dumps(script)}]}
    return sdk.post("/chat/completions", content=json.dumps(body).encode(),
                    cast_to=httpx2.Response, stream=True)


def test_sdk_stream_is_read_and_the_connection_reused(sim: Any) -> None:
    with sdk_client(sim) as sdk:
        texts = []
        for _ in range(2):
            with contextlib.closing(sdk_post(sdk, tokens=20)) as response:
                assert response.request.headers["authorization"] == "Bearer sk-test"
                events = list(iter_sse_data(response.iter_raw()))
            assert events[-1] == b"[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            texts.append("".join(c["choices"][0]["delta"].get("content") or ""
                                 for c in chunks if c["choices"]))
            assert chunks[-1]["usage"]["completion_tokens"] == 20
    assert texts == ["".join(f"t{i} " for i in range(20))] * 2
    assert sim.requests[0].peer == sim.requests[1].peer  # the same connection, kept alive


def test_sdk_maps_a_refusal_to_its_error_type(sim: Any) -> None:
    with sdk_client(sim) as sdk, pytest.raises(openai.RateLimitError) as caught:
        sdk_post(sdk, status=429, retry_after=3)
    assert caught.value.response.headers["retry-after"] == "3"


def test_sdk_stream_cut_by_the_upstream_raises(sim: Any) -> None:
    with sdk_client(sim) as sdk, \
            contextlib.closing(sdk_post(sdk, tokens=10, drop_after=3)) as response:
        received = []
        with pytest.raises(httpx2.RemoteProtocolError):
            for piece in response.iter_raw():
                received.append(piece)
    assert b"t2 " in b"".join(received)


# -- gevent ---------------------------------------------------------------------------------

GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json, ssl, sys, time

import gevent
import httpx2

sys.path.insert(0, sys.argv[2])
from streaming.upstream.transport import Urllib3Transport

base, out = sys.argv[1], {}
context = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else None


def in_read(greenlet):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frame = greenlet.gr_frame
        while frame is not None:
            if frame.f_code.co_name in ("recv_into", "recv", "read", "readinto"):
                return True
            frame = frame.f_back
        gevent.sleep(0.005)
    return False


def drain(pieces):
    try:
        list(pieces)
        return "ended"
    except httpx2.HTTPError as exc:
        return type(exc).__name__


transport = Urllib3Transport(max_idle=4, ssl_context=context, body_read_timeout=False)
with httpx2.Client(transport=transport, timeout=5) as client:
    out["bodies"] = []
    for _ in range(2):
        with client.stream("POST", base + "/full", content=b"{}") as response:
            out["bodies"].append(b"".join(response.iter_raw()).decode())

    with client.stream("POST", base + "/hold", content=b"{}") as response:
        pieces = response.iter_raw()
        next(pieces)
        reader = gevent.spawn(drain, pieces)
        blocked = in_read(reader)
        started = time.monotonic()
        response.close()
        out["close"] = [blocked, reader.get(timeout=5), time.monotonic() - started]

    with client.stream("POST", base + "/hold", content=b"{}") as response:
        pieces = response.iter_raw()
        next(pieces)
        reader = gevent.spawn(drain, pieces)
        blocked = in_read(reader)
        started = time.monotonic()
        reader.kill(timeout=5)
        out["kill"] = [blocked, reader.dead, time.monotonic() - started, response.is_closed]

    with client.stream("POST", base + "/next", content=b"{}") as response:
        out["next"] = b"".join(response.iter_raw()).decode()
print(json.dumps(out))
"""


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_under_gevent_close_and_kill_unblock_and_bodies_are_reused(
        tls: bool, request: pytest.FixtureRequest) -> None:
    server: RawServer = request.getfixturevalue("tls_server" if tls else "server")
    server.replies["/full"] = [CHUNKED + chunk(b"early"), 0.02, chunk(b"late"), b"0\r\n\r\n"]
    server.replies["/hold"] = [CHUNKED + chunk(b"first"), threading.Event()]
    server.replies["/next"] = [with_length(b"next")]
    argv = [sys.executable, "-c", GEVENT_SCRIPT, server.url(""), str(ROOT)]
    if tls:
        argv.append(str(request.getfixturevalue("tls_files")[0]))
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["bodies"] == ["earlylate", "earlylate"]
    blocked, outcome, elapsed = out["close"]
    assert blocked and outcome == "ReadError" and elapsed < UNBLOCK
    blocked, dead, elapsed, closed = out["kill"]
    assert blocked and dead and closed and elapsed < UNBLOCK
    assert out["next"] == "next"
    # Both full bodies on the first connection; each abandoned one closed its own.
    assert server.requests == [(1, "/full"), (1, "/full"), (1, "/hold"), (2, "/hold"),
                               (3, "/next")]


def test_request_fields_reach_the_server_once_each(server: RawServer,
                                                   client: httpx2.Client) -> None:
    server.replies["/echo"] = [with_length(b"ok")]
    response = client.post(server.url("/echo"), content=b"{}",
                           headers=[("X-One", "1"), ("X-Twice", "a"), ("x-twice", "b")])
    assert response.content == b"ok"
    head = server.heads[0].lower().split(b"\r\n")
    assert head.count(b"x-one: 1") == 1 and head.count(b"host: 127.0.0.1:%d" % server.port) == 1
    assert sorted(line for line in head if line.startswith(b"x-twice")) == [b"x-twice: a",
                                                                          b"x-twice: b"]


# -- the provider's stream on this transport ----------------------------------------------

def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


@pytest.fixture
def provider(server: RawServer) -> Iterator[OpenAIProvider]:
    """The project's OpenAI provider (on this transport) against the scripted server."""
    provider = OpenAIProvider(Settings(LLM_PROVIDER="openai", OPENAI_API_KEY="sk-test",
                                       OPENAI_BASE_URL=server.url("/v1")))
    yield provider
    provider.close()


def test_events_read_together_are_handed_on_together(server: RawServer,
                                                     provider: OpenAIProvider) -> None:
    # Three events in one HTTP chunk are one hand-over (one relay round, one append); events
    # in chunks of their own, as they are sent, stay apart.
    hold = threading.Event()
    server.replies["/v1/chat/completions"] = [
        CHUNKED, chunk(sse(delta("a"))), hold,
        chunk(sse(delta("b")) + sse(delta("c")) + sse(delta("d", "stop"))),
        chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
    with provider.open({"model": "m", "messages": []}) as upstream:
        batches = iter(upstream)
        assert next(batches) == [(CONTENT, "a")]
        hold.set()
        assert list(batches) == [[(CONTENT, "b"), (CONTENT, "c"), (CONTENT, "d"),
                                  (FINISH, "stop")]]


def test_a_fault_after_good_events_in_one_read_comes_after_them(
        server: RawServer, provider: OpenAIProvider) -> None:
    server.replies["/v1/chat/completions"] = [
        CHUNKED, chunk(sse(delta("a")) + b"data: {not json\n\n" + sse(delta("b"))),
        b"0\r\n\r\n"]
    with provider.open({"model": "m", "messages": []}) as upstream:
        batches = iter(upstream)
        assert next(batches) == [(CONTENT, "a")]
        with pytest.raises(UpstreamCutError):
            next(batches)
