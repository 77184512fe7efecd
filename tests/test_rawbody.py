"""rawbody: the chunked decoder against h11, and iter_body against real loopback servers.

A scripted socket server writes responses byte for byte (chunk boundaries, extensions,
trailers, Content-Length, close-delimited, gzip, early bytes, bytes past the end, TLS); the
OpenAI-wire simulator checks the SDK's own responses. Readers run on plain threads here, and
under gevent in a subprocess.
"""

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

import h11
import httpx2
import openai
import pytest

from streaming.upstream.chunks import iter_sse_data
from streaming.upstream.rawbody import (
    ChunkedDecoder,
    FramingError,
    abort,
    fallback_reason,
    iter_body,
)

ROOT = Path(__file__).resolve().parent.parent
WAIT = 5.0  # generous bound for anything that should take milliseconds
UNBLOCK = 1.0  # how soon a close must free a blocked reader

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n"


def with_length(body: bytes, *headers: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (
        b"".join(h + b"\r\n" for h in headers), len(body), body)


# -- the decoder, on its own ----------------------------------------------------------------

BODIES = [
    pytest.param(chunked(b"hello", b" world"), b"hello world", id="two-chunks"),
    pytest.param(chunked(), b"", id="empty"),
    pytest.param(chunk(b"hello", b";name=value") + chunk(b"!", b';q="a;b"') + b"0;end\r\n\r\n",
                 b"hello!", id="extensions"),
    pytest.param(chunk(b"x" * 300) + b"0\r\n\r\n", b"x" * 300, id="hex-size-12c"),
    pytest.param(b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", id="upper-hex"),
    pytest.param(b"005\r\nhello\r\n0\r\n\r\n", b"hello", id="leading-zeros"),
    pytest.param(b"5  \r\nhello\r\n0\r\n\r\n", b"hello", id="trailing-space"),
    pytest.param(chunk(b"a\r\nb\r\n\r\n") + b"0\r\n\r\n", b"a\r\nb\r\n\r\n", id="crlf-in-data"),
    pytest.param(chunk(b"data") + b"0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n", b"data",
                 id="trailers"),
    pytest.param(chunk(b"data") + b"0\r\nX-Trailer: 1\n\n", b"data", id="trailers-lf"),
    pytest.param(chunk(b"data") + b"0\r\n\n", b"data", id="bare-lf-end"),
]

BAD_BODIES = [
    pytest.param(b"zz\r\nhello\r\n", id="not-hex"),
    pytest.param(b"0x5\r\nhello\r\n", id="0x-prefix"),
    pytest.param(b"+5\r\nhello\r\n", id="sign"),
    pytest.param(b" 5\r\nhello\r\n", id="leading-space"),
    pytest.param(b"\r\nhello\r\n", id="no-size"),
    pytest.param(b"1" * 21 + b"\r\n", id="size-too-long"),
    pytest.param(b"5\r\nhelloXY0\r\n\r\n", id="bad-footer"),
    pytest.param(b"5\r\nhello\n0\r\n\r\n", id="lf-footer"),
]


def split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


def h11_body(wire: bytes) -> bytes:
    """What h11, httpcore's parser, makes of a chunked body; raises what it raises."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(CHUNKED + wire)
    out = b""
    while True:
        event = conn.next_event()
        if type(event) is h11.Data:
            out += event.data
        elif type(event) is h11.EndOfMessage:
            return out
        elif event is h11.NEED_DATA:
            raise EOFError("h11 wants more")


def decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b"".join(b"".join(decoder.feed(p)) for p in pieces)
    return out, decoder


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("wire", "body"), BODIES)
def test_decoder_matches_h11_at_any_split(wire: bytes, body: bytes, size: int) -> None:
    assert h11_body(wire) == body
    out, decoder = decode(split_every(wire, size))
    assert out == body
    assert decoder.done and decoder.extra == b"" and decoder.eof_error() is None


@pytest.mark.parametrize("wire", BAD_BODIES)
def test_decoder_refuses_what_h11_refuses(wire: bytes) -> None:
    with pytest.raises(h11.ProtocolError):
        h11_body(wire)
    with pytest.raises(FramingError):
        decode([wire])


def test_decoder_keeps_bytes_after_the_end() -> None:
    out, decoder = decode([chunked(b"hi") + b"HTTP/1.1 200", b" OK"])
    assert (out, decoder.done, decoder.extra) == (b"hi", True, b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("cut", [1, 3, 4, 8, 9, 10, 11, 12])
def test_decoder_reports_a_cut_body(cut: int) -> None:
    wire = chunked(b"hello")  # 5\r\nhello\r\n0\r\n\r\n: every cut leaves it unfinished
    _, decoder = decode([wire[:cut]])
    assert not decoder.done
    assert isinstance(decoder.eof_error(), FramingError)


def test_decoder_knows_chunk_boundaries() -> None:
    decoder = ChunkedDecoder()
    assert decoder.at_chunk_start
    for piece, boundary in [(b"5\r\nhel", False), (b"lo\r", False), (b"\n", True),
                            (b"1", False), (b"\r\n!\r\n", True)]:
        decoder.feed(piece)
        assert decoder.at_chunk_start is boundary, piece


def test_decoder_bounds_a_line_that_never_ends() -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(FramingError):
        for _ in range(200):
            decoder.feed(b"f" * 1024)


# -- a scripted HTTP/1.1 server -------------------------------------------------------------

CLOSE = object()  # in a reply: close the connection here
Part = bytes | float | threading.Event | object


class RawServer:
    """Loopback HTTP/1.1 server answering each request path with scripted writes.

    A reply is a list of parts: bytes are written as they are (one send each), a float pauses
    that long (to split what the client reads), an Event holds the reply until it is set or
    the server closes, and CLOSE ends the connection. `requests` records (connection number,
    path) in arrival order: the same number twice means a kept-alive connection was reused.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.replies: dict[str, list[Part]] = {}
        self.requests: list[tuple[int, str]] = []
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
                for part in self.replies[path]:
                    if part is CLOSE:
                        return
                    if isinstance(part, threading.Event):
                        while not (part.wait(0.05) or self._released.is_set()):
                            pass
                    elif isinstance(part, float):
                        time.sleep(part)
                    elif isinstance(part, bytes):
                        conn.sendall(part)
        except OSError:
            return  # the client hung up, or close() shut us down
        finally:
            conn.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=WAIT) as http:
        yield http


def fetch(client: httpx2.Client, url: str, *, fast: bool = True, **kwargs: Any) -> bytes:
    with client.stream("POST", url, content=b"{}") as response:
        assert (fallback_reason(response) is None) is fast, fallback_reason(response)
        return b"".join(iter_body(response, **kwargs))


def blocked_in(thread_frame: Callable[[], Any], function: str = "_recv",
               module: str = "rawbody.py") -> None:
    """Wait until a reader is blocked in a socket read (there is no event for that)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        frame = thread_frame()
        while frame is not None:
            if frame.f_code.co_name == function and frame.f_code.co_filename.endswith(module):
                return
            frame = frame.f_back
        time.sleep(0.005)
    raise AssertionError(f"the reader never blocked in {function}")


def thread_frame(thread: threading.Thread) -> Callable[[], Any]:
    return lambda: sys._current_frames().get(thread.ident or 0)


# -- iter_body over real sockets ------------------------------------------------------------

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
        pytest.param([CHUNKED + chunk(b"early") + chunk(b"more"), chunk(b"late"), b"0\r\n\r\n"],
                     b"earlymorelate", id="early-bytes-on-a-boundary"),
        pytest.param([CHUNKED + chunked(b"all", b"at", b"once")], b"allatonce",
                     id="whole-body-with-headers"),
        pytest.param([CHUNKED + b"b\r\nhel", 0.02, b"lo-world\r\n", b"0\r\n\r\n"],
                     b"hello-world", id="early-bytes-end-mid-chunk"),
        pytest.param([CHUNKED + b"5", 0.02, b"\r\nhello\r", 0.02, b"\n0\r\n\r\n"], b"hello",
                     id="early-bytes-end-mid-size-line"),
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


@pytest.mark.parametrize(
    ("reply", "body"),
    [
        pytest.param([CHUNKED + b"30000\r\n" + b"x" * 10, 0.02,
                      b"x" * (0x30000 - 10) + b"\r\n0\r\n\r\n"], b"x" * 0x30000,
                     id="early-bytes-end-mid-chunk-for-long"),
        pytest.param([CHUNKED, chunked(b"done") + b"HTTP/1.1 200 OK\r\n"], b"done",
                     id="bytes-past-the-end"),
        pytest.param([b"HTTP/1.1 200 OK\r\n\r\n", b"until ", b"close", CLOSE], b"until close",
                     id="close-delimited"),
        pytest.param([with_length(b"bye", b"Connection: close"), CLOSE], b"bye",
                     id="connection-close"),
    ],
)
def test_body_is_exact_and_the_connection_is_closed(server: RawServer, client: httpx2.Client,
                                                    reply: list[Part], body: bytes) -> None:
    server.replies["/r"] = reply
    server.replies["/next"] = [with_length(b"next")]
    assert fetch(client, server.url("/r")) == body
    assert fetch(client, server.url("/next")) == b"next"  # not read from a spoiled connection
    assert server.requests == [(1, "/r"), (2, "/next")]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param([CHUNKED, b"zz\r\n"], id="bad-size"),
        pytest.param([CHUNKED, b"5\r\nhelloXY"], id="bad-footer"),
        pytest.param([CHUNKED, chunk(b"cut"), CLOSE], id="cut-chunked"),
        pytest.param([CHUNKED, b"9\r\nhalf", CLOSE], id="cut-mid-chunk"),
        pytest.param([with_length(b"0123456789")[:-4], CLOSE], id="cut-content-length"),
    ],
)
def test_a_broken_body_raises_and_is_not_reused(server: RawServer, client: httpx2.Client,
                                                reply: list[Part]) -> None:
    server.replies["/bad"] = reply
    server.replies["/next"] = [with_length(b"next")]
    with pytest.raises(httpx2.RemoteProtocolError):
        fetch(client, server.url("/bad"))
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/bad"), (2, "/next")]


def test_gzip_falls_back_to_the_decoded_content(server: RawServer,
                                                client: httpx2.Client) -> None:
    text = b"data: " + b"compressible " * 200 + b"\n\n"
    server.replies["/gz"] = [with_length(gzip.compress(text), b"Content-Encoding: gzip")]
    with client.stream("POST", server.url("/gz"), content=b"{}") as response:
        assert fallback_reason(response) == "content-encoding"
        assert b"".join(iter_body(response)) == text


def test_an_unknown_transport_falls_back() -> None:
    transport = httpx2.MockTransport(
        lambda request: httpx2.Response(200, content=iter([b"mock", b"ed"]),
                                        extensions={"http_version": b"HTTP/1.1"}))
    with httpx2.Client(transport=transport) as http, http.stream("GET", "http://x/") as response:
        assert fallback_reason(response) == "structure"
        assert b"".join(iter_body(response)) == b"mocked"


def test_a_read_body_cannot_be_read_again(server: RawServer, client: httpx2.Client) -> None:
    server.replies["/r"] = [CHUNKED + chunked(b"once")]
    with client.stream("POST", server.url("/r"), content=b"{}") as response:
        assert b"".join(iter_body(response)) == b"once"
        assert fallback_reason(response) == "consumed"
        with pytest.raises(httpx2.StreamConsumed):
            response.read()
    assert response.elapsed.total_seconds() > 0  # httpx2 still finds it on the stream


def test_timeout_bounds_each_read(server: RawServer, client: httpx2.Client) -> None:
    hold = threading.Event()
    server.replies["/slow"] = [CHUNKED + chunk(b"first"), hold]
    with client.stream("POST", server.url("/slow"), content=b"{}") as response:
        body = iter_body(response, timeout=0.2)
        assert next(body) == b"first"
        with pytest.raises(httpx2.ReadTimeout):
            next(body)
    hold.set()


@pytest.mark.parametrize("close", [httpx2.Response.close, abort], ids=["close", "abort"])
@pytest.mark.parametrize("head", [CHUNKED + chunk(b"first"), with_length(b"first-rest")[:-5]],
                         ids=["chunked", "content-length"])
def test_closing_the_response_from_another_thread_unblocks_the_reader(
        server: RawServer, client: httpx2.Client, head: bytes,
        close: Callable[[httpx2.Response], None]) -> None:
    server.replies["/hold"] = [head, threading.Event()]  # never set: released at teardown
    server.replies["/next"] = [with_length(b"next")]
    outcome: dict[str, Any] = {}
    with client.stream("POST", server.url("/hold"), content=b"{}") as response:
        body = iter_body(response)  # no per-read timeout at all
        assert next(body) == b"first"

        def read() -> None:
            try:
                outcome["rest"] = list(body)
            except httpx2.HTTPError as exc:
                outcome["error"] = exc

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocked_in(thread_frame(reader))
        started = time.monotonic()
        close(response)
        reader.join(WAIT)
        elapsed = time.monotonic() - started
    assert not reader.is_alive()
    assert elapsed < UNBLOCK
    assert isinstance(outcome.get("error"), httpx2.ReadError), outcome
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/hold"), (2, "/next")]


def test_abort_unblocks_a_reader_on_the_fallback_path(server: RawServer,
                                                      client: httpx2.Client) -> None:
    server.replies["/gz"] = [CHUNKED.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n"),
                             threading.Event()]
    errors: list[Exception] = []
    with client.stream("POST", server.url("/gz"), content=b"{}") as response:
        assert fallback_reason(response) == "content-encoding"
        body = iter_body(response)

        def read() -> None:
            try:
                list(body)
            except httpx2.HTTPError as exc:
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocked_in(thread_frame(reader), "read", "_backends/sync.py")
        started = time.monotonic()
        abort(response)
        reader.join(WAIT)
        assert time.monotonic() - started < UNBLOCK  # the client's read timeout is WAIT
    assert not reader.is_alive() and len(errors) == 1


def test_abort_after_the_whole_body_keeps_the_connection(server: RawServer,
                                                         client: httpx2.Client) -> None:
    server.replies["/r"] = [CHUNKED, chunked(b"whole")]
    for _ in range(2):
        with client.stream("POST", server.url("/r"), content=b"{}") as response:
            assert b"".join(iter_body(response)) == b"whole"
            abort(response)  # what a cancel racing the end of the stream does
    assert server.requests == [(1, "/r"), (1, "/r")]


def test_stopping_at_done_keeps_the_connection_when_the_end_has_arrived(
        server: RawServer, client: httpx2.Client) -> None:
    # Like _OpenAIStream: it stops iterating at [DONE], before the last chunk is read.
    end_sent = threading.Event()
    server.replies["/sse"] = [CHUNKED, chunk(b"data: x\n\n"), chunk(b"data: [DONE]\n\n"),
                              end_sent, b"0\r\n\r\n"]
    server.replies["/next"] = [with_length(b"next")]
    with client.stream("POST", server.url("/sse"), content=b"{}") as response:
        sock = response.extensions["network_stream"].get_extra_info("socket")
        body = iter_body(response)
        data = list(_until_done(iter_sse_data(body)))
        end_sent.set()
        _wait_readable(sock)
        body.close()
    assert data == [b"x"]
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/sse"), (1, "/next")]


def test_stopping_before_the_end_arrived_closes_the_connection(
        server: RawServer, client: httpx2.Client) -> None:
    end_sent = threading.Event()
    server.replies["/sse"] = [CHUNKED, chunk(b"data: [DONE]\n\n"), end_sent, b"0\r\n\r\n"]
    server.replies["/next"] = [with_length(b"next")]
    with client.stream("POST", server.url("/sse"), content=b"{}") as response:
        body = iter_body(response)
        assert list(_until_done(iter_sse_data(body))) == []
        body.close()
    end_sent.set()
    assert fetch(client, server.url("/next")) == b"next"
    assert server.requests == [(1, "/sse"), (2, "/next")]


def _until_done(events: Iterator[bytes]) -> Iterator[bytes]:
    for data in events:
        if data == b"[DONE]":
            return
        yield data


def _wait_readable(sock: socket.socket) -> None:
    import select

    assert select.select([sock], [], [], WAIT)[0], "the last chunk never came"


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
    with httpx2.Client(verify=ssl.create_default_context(cafile=str(tls_files[0])),
                       timeout=WAIT) as http:
        yield http


def test_tls_body_is_exact_and_the_connection_is_reused(tls_server: RawServer,
                                                        tls_client: httpx2.Client) -> None:
    big = bytes(range(256)) * 200  # 51 KiB: several TLS records
    tls_server.replies["/r"] = [CHUNKED + chunk(b"early"), 0.02, chunk(big)[:1000], 0.02,
                                chunk(big)[1000:], b"0\r\n\r\n"]
    assert fetch(tls_client, tls_server.url("/r")) == b"early" + big
    assert fetch(tls_client, tls_server.url("/r")) == b"early" + big
    assert tls_server.requests == [(1, "/r"), (1, "/r")]


def test_tls_close_from_another_thread_unblocks_the_reader(tls_server: RawServer,
                                                           tls_client: httpx2.Client) -> None:
    tls_server.replies["/hold"] = [CHUNKED + chunk(b"first"), threading.Event()]
    errors: list[Exception] = []
    with tls_client.stream("POST", tls_server.url("/hold"), content=b"{}") as response:
        body = iter_body(response)
        assert next(body) == b"first"

        def read() -> None:
            try:
                list(body)
            except httpx2.HTTPError as exc:
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocked_in(thread_frame(reader))
        started = time.monotonic()
        response.close()
        reader.join(WAIT)
        assert time.monotonic() - started < UNBLOCK
    assert not reader.is_alive()
    assert [type(e) for e in errors] == [httpx2.ReadError]


# -- the SDK against the simulator ----------------------------------------------------------

def test_sdk_stream_is_read_fast_and_reused(sim: Any) -> None:
    messages: Any = [{"role": "user", "content": "SIM " + json.dumps({"tokens": 20})}]
    sdk = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    try:
        addresses, texts = [], []
        for _ in range(2):
            with sdk.chat.completions.with_streaming_response.create(
                    model="m", messages=messages, stream=True,
                    stream_options={"include_usage": True}) as response:
                http_response = response.http_response
                assert fallback_reason(http_response) is None
                addresses.append(
                    http_response.extensions["network_stream"].get_extra_info("client_addr"))
                events = list(iter_sse_data(iter_body(http_response)))
            assert events[-1] == b"[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            texts.append("".join(c["choices"][0]["delta"].get("content") or ""
                                 for c in chunks if c["choices"]))
            assert chunks[-1]["usage"]["completion_tokens"] == 20
        assert texts == ["".join(f"t{i} " for i in range(20))] * 2
        assert addresses[0] == addresses[1]  # the same connection, kept alive
    finally:
        sdk.close()


def test_sdk_stream_cut_by_the_upstream_raises(sim: Any) -> None:
    messages: Any = [{"role": "user", "content": "SIM " + json.dumps(
        {"tokens": 10, "drop_after": 3})}]
    sdk = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    try:
        with sdk.chat.completions.with_streaming_response.create(
                model="m", messages=messages, stream=True) as response:
            received = []
            with pytest.raises(httpx2.RemoteProtocolError):
                for piece in iter_body(response.http_response):
                    received.append(piece)
        assert b"t2 " in b"".join(received)
    finally:
        sdk.close()


# -- gevent ---------------------------------------------------------------------------------

GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json, ssl, sys, time

import gevent
import httpx2

sys.path.insert(0, sys.argv[2])
from streaming.upstream.rawbody import fallback_reason, iter_body

base, out = sys.argv[1], {}
verify = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else True


def in_recv(greenlet):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frame = greenlet.gr_frame
        while frame is not None:
            if frame.f_code.co_name == "_recv":
                return True
            frame = frame.f_back
        gevent.sleep(0.005)
    return False


def drain(body):
    try:
        list(body)
        return "ended"
    except httpx2.HTTPError as exc:
        return type(exc).__name__


with httpx2.Client(timeout=5, verify=verify) as client:
    out["bodies"], out["reasons"] = [], []
    for _ in range(2):
        with client.stream("POST", base + "/full", content=b"{}") as response:
            out["reasons"].append(fallback_reason(response))
            out["bodies"].append(b"".join(iter_body(response)).decode())

    with client.stream("POST", base + "/hold", content=b"{}") as response:
        body = iter_body(response)
        next(body)
        reader = gevent.spawn(drain, body)
        blocked = in_recv(reader)
        started = time.monotonic()
        response.close()
        out["close"] = [blocked, reader.get(timeout=5), time.monotonic() - started]

    with client.stream("POST", base + "/hold", content=b"{}") as response:
        body = iter_body(response)
        next(body)
        reader = gevent.spawn(drain, body)
        blocked = in_recv(reader)
        started = time.monotonic()
        reader.kill(timeout=5)
        out["kill"] = [blocked, reader.dead, time.monotonic() - started, response.is_closed]

    with client.stream("POST", base + "/next", content=b"{}") as response:
        out["next"] = b"".join(iter_body(response)).decode()
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
    assert out["reasons"] == [None, None]
    assert out["bodies"] == ["earlylate", "earlylate"]
    blocked, outcome, elapsed = out["close"]
    assert blocked and outcome == "ReadError" and elapsed < UNBLOCK
    blocked, dead, elapsed, closed = out["kill"]
    assert blocked and dead and closed and elapsed < UNBLOCK
    assert out["next"] == "next"
    # Both full bodies on the first connection; each abandoned one closed its own.
    assert server.requests == [(1, "/full"), (1, "/full"), (1, "/hold"), (2, "/hold"),
                               (3, "/next")]
