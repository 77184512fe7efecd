"""Read a streaming response's body straight from its socket, past the transport's layers.

Under gevent with 100 streams, `iter_raw()` costs ~160 µs of CPU per SSE chunk against ~60 µs
for a bare socket read of the same stream, and this ~75 µs (bench/upstream_read_bench.py): it
drops five generator layers with their context managers, h11's state machine (two events per
read), a `settimeout` and a gevent timer per `recv`. It takes over an HTTP/1.1 response the
SDK has opened: it decodes a chunked body itself and lets h11 frame Content-Length and
close-delimited ones, reading the socket with no per-read timeout unless asked.

It reaches into httpcore2's private objects, so it checks each of them and falls back to
`iter_raw()` (`iter_bytes()` for a content-encoded body) whenever anything differs from the
release it was written against; `fallback_reason` says why.

A body read to its end leaves h11 where its own reader would have (their side DONE), so the
connection goes back to the pool; a body left unfinished (cancel, cut, error) closes it.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Generator, Iterator
from contextlib import suppress
from typing import Any

import h11
import httpcore2
import httpx2

# The httpcore2 releases whose private structure this module was checked against: see _probe.
TESTED_HTTPCORE = ("2.16.",)

_READ_SIZE = 64 * 1024  # what httpcore reads at a time
_MAX_PENDING = 100 * 1024  # h11's max_incomplete_event_size, as httpcore sets it
# RFC 9112 §7.1, as lenient as h11: chunk-size [chunk-ext] OWS (h11's own pattern, minus CRLF).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_TERMINATOR = b"0\r\n\r\n"

# The response's stream and connection, layer by layer: (qualified type name, next attribute).
_LAYERS = (
    ("httpx2._client.BoundSyncStream", "_stream"),
    ("httpx2._transports.default.ResponseStream", "_httpcore_stream"),
    ("httpcore2._sync.connection_pool.PoolByteStream", "_stream"),
    ("httpcore2._sync.http11.HTTP11ConnectionByteStream", "_connection"),
)

_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


class FramingError(ValueError):
    """The body breaks HTTP/1.1 framing (a bad chunk line, footer or an oversized line)."""


class ChunkedDecoder:
    """Decode a chunked body (RFC 9112 §7.1) incrementally: `feed(data) -> [data, ...]`.

    Accepts what h11 accepts. Extensions and trailers are read and dropped, as h11 does; bytes
    after the last chunk's trailer section are kept in `extra`.
    """

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0  # data bytes still to come in the current chunk
        self._pending = b""  # an incomplete chunk line, footer or trailer section
        self.extra = b""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def at_chunk_start(self) -> bool:
        """Nothing pending: the next byte begins a chunk line (or more data will not parse)."""
        return self._state == _SIZE and not self._pending

    def feed(self, data: bytes) -> list[bytes]:
        if self._state == _DONE:
            self.extra += data
            return []
        buf = self._pending + data if self._pending else data
        end = len(buf)
        pos = 0
        out: list[bytes] = []
        state = self._state
        while pos < end:
            if state == _DATA:
                stop = pos + self._left
                if stop > end:
                    out.append(buf[pos:] if pos else buf)
                    self._left = stop - end
                    pos = end
                    break
                out.append(buf[pos:stop])
                pos = stop
                state = _CRLF
            elif state == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                match = _CHUNK_LINE.fullmatch(buf, pos, eol)
                if match is None:
                    raise FramingError("illegal chunk header")  # not quoted: it may be body
                self._left = int(match[1], 16)
                pos = eol + 2
                state = _DATA if self._left else _TRAILER
            elif state == _CRLF:
                if end - pos < 2:
                    if buf[pos:] != b"\r":
                        raise FramingError("malformed chunk footer")
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise FramingError("malformed chunk footer")
                pos += 2
                state = _SIZE
            else:  # _TRAILER: h11 takes a bare LF too, here and in the blank line
                if buf.startswith(b"\r\n", pos) or buf.startswith(b"\n", pos):
                    pos += 1 if buf[pos] == 0x0A else 2
                else:
                    blank = _BLANK_LINE.search(buf, pos)
                    if blank is None:
                        break
                    pos = blank.end()
                state = _DONE
                break
        self._state = state
        rest = buf[pos:] if pos < end else b""
        if state == _DONE:
            self.extra, self._pending = rest, b""
        else:
            if len(rest) > _MAX_PENDING:
                raise FramingError("chunk line or trailer section too long")
            self._pending = rest
        return out

    def eof_error(self) -> FramingError | None:
        """What ending the body here means: None if the body was complete."""
        if self._state == _DONE:
            return None
        return FramingError("peer closed connection without sending complete message body "
                            "(incomplete chunked read)")


class _CloseGuard(httpx2.SyncByteStream):
    """Stands in for the response's stream so that closing the response, from any thread,
    shuts the socket down while the body is unfinished: closing a socket does not wake a thread
    blocked in recv() (the kernel holds the descriptor until the call returns); shutdown does.
    """

    def __init__(self, inner: Any, sock: socket.socket) -> None:
        self._inner = inner
        self._sock = sock
        self._lock = threading.Lock()
        self._reading = True
        self.closed = False

    @property
    def elapsed(self) -> Any:
        # httpx2.Response.elapsed reads it from the stream once the response is closed.
        return getattr(self._inner, "elapsed", None)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def finish(self) -> bool:
        """The reader is done with the socket; False if a close came first."""
        with self._lock:
            self._reading = False
            return not self.closed

    def close(self) -> None:
        with self._lock:
            shut = self._reading and not self.closed
            self.closed = True
        if shut:
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._inner.close()


def abort(response: httpx2.Response) -> None:
    """Close `response` from any thread or greenlet, waking whoever is blocked reading it.

    A body that was read to its end keeps its connection: only an unfinished one has its
    socket shut down (on the fallback path too, where `close()` alone would leave a thread
    blocked in recv() until the read timeout).
    """
    if not isinstance(response.stream, _CloseGuard) and not response.is_closed:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    response.close()


def fallback_reason(response: httpx2.Response) -> str | None:
    """Why `iter_body` would use the transport's own iterator; None if it reads the socket."""
    probe = _probe(response)
    return probe if isinstance(probe, str) else None


def iter_body(response: httpx2.Response, *,
              timeout: float | None = None) -> Generator[bytes, None, None]:
    """The body of an opened, unread streaming response, as it arrives; closes the response.

    Reads the socket directly where `_probe` allows, else returns `iter_raw()` (`iter_bytes()`
    if the body is content-encoded, so the caller always gets the content itself). On the fast
    path `timeout` bounds each read (None: no limit, as the relay keeps the clocks and closing
    the response, or killing the reading greenlet, unblocks it); on the fallback the client's
    own read timeout applies. Raises httpx2's errors, as `iter_raw()` does.
    """
    probe = _probe(response)
    if isinstance(probe, str):
        return _relay(response.iter_bytes() if probe == "content-encoding"
                      else response.iter_raw())
    h11_conn, sock, chunked = probe
    guard = _CloseGuard(response.stream, sock)
    # Claim the body as iter_raw() does, so that nothing else reads it behind our back.
    response.stream = guard
    response.is_stream_consumed = True
    sock.settimeout(timeout)
    if chunked:
        return _iter_chunked(response, h11_conn, sock, guard)
    return _iter_h11(response, h11_conn, sock, guard)


def _probe(response: httpx2.Response) -> tuple[h11.Connection, socket.socket, bool] | str:
    """The h11 connection and socket under `response`, and whether its body is chunked, or
    why we must not read them ourselves."""
    if not httpcore2.__version__.startswith(TESTED_HTTPCORE):
        return "httpcore-version"
    if response.is_stream_consumed or response.is_closed:
        return "consumed"
    if response.extensions.get("http_version") not in (b"HTTP/1.1", b"HTTP/1.0"):
        return "http-version"
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return "content-encoding"
    layer: Any = response.stream
    for name, attr in _LAYERS:
        if f"{type(layer).__module__}.{type(layer).__qualname__}" != name:
            return "structure"
        if getattr(layer, "_closed", False):
            return "consumed"
        layer = getattr(layer, attr, None)
    if type(layer) is not httpcore2.HTTP11Connection:
        return "structure"
    conn = getattr(layer, "_h11_state", None)
    stream: Any = getattr(layer, "_network_stream", None)
    # A TLS-in-TLS stream (an HTTPS proxy) holds the outer socket, whose bytes are ciphertext.
    if (not isinstance(conn, h11.Connection)
            or f"{type(stream).__module__}.{type(stream).__qualname__}"
            != "httpcore2._backends.sync.SyncStream"):
        return "structure"
    sock = stream.get_extra_info("socket")
    if not isinstance(sock, socket.socket) or response.extensions.get("network_stream") is not (
            stream):
        return "structure"
    # Only the status line and headers have gone through h11: the body is all ours to read.
    if conn.their_state is not h11.SEND_BODY:
        return "h11-state"
    try:
        request = response.request
    except RuntimeError:  # a Response built by hand
        return "structure"
    chunked = (request.method not in ("HEAD", "CONNECT")
               and response.status_code not in (204, 304)
               and "transfer-encoding" in response.headers)
    if chunked:
        codings = [v.strip().lower() for v in response.headers.get_list(
            "transfer-encoding", split_commas=True)]
        if codings != ["chunked"]:  # h11 refuses any other, so this cannot be its framing
            return "transfer-encoding"
    return conn, sock, chunked


def _relay(chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
    # A generator whatever httpx2 returns, so that callers can always close() it.
    yield from chunks


def _iter_chunked(response: httpx2.Response, conn: h11.Connection, sock: socket.socket,
                  guard: _CloseGuard) -> Generator[bytes, None, None]:
    request = response.request
    decoder = ChunkedDecoder()
    # h11 read past the headers into its buffer and has parsed none of it. To hand the
    # connection back we must later walk h11's own reader to the end of the message, so h11
    # is shown the same bytes as the decoder until they end on a chunk boundary (usually they
    # already do); from there a last chunk completes its view. None: not aligned yet.
    completion: bytes | None = None
    early, eof = conn.trailing_data
    shown = len(early)

    def feed(data: bytes) -> list[bytes]:
        nonlocal completion, shown
        pieces = decoder.feed(data)
        if completion is None and shown <= _MAX_PENDING:
            conn.receive_data(data)
            shown += len(data)
            if decoder.done:
                completion = b""
            elif decoder.at_chunk_start:
                completion = _TERMINATOR
        return pieces

    reusable = False
    try:
        pieces = _framed(decoder.feed, early, request)
        completion = b"" if decoder.done else _TERMINATOR if decoder.at_chunk_start else None
        recv = sock.recv
        while True:
            if pieces:
                try:
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                except GeneratorExit:
                    # The consumer has what it wanted (an SSE stream's [DONE], say); the last
                    # chunk has usually arrived too, and reading it keeps the connection.
                    _drain(feed, lambda: decoder.done, sock)
                    if not decoder.done:
                        raise
            if decoder.done:
                break
            data = b"" if eof else _recv(recv, guard, request)
            if not data:
                error = decoder.eof_error()
                if guard.closed:
                    raise _closed_error(request)
                if error is not None:
                    raise httpx2.RemoteProtocolError(str(error), request=request)
            pieces = _framed(feed, data, request)
        reusable = (completion is not None and not decoder.extra and not eof
                    and guard.finish() and _walk_h11(conn, completion))
    finally:
        guard.finish()
        if not reusable:
            # httpcore closes a connection whose h11 is not DONE; shut it down first so that
            # nothing stays blocked on it.
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        response.close()


def _iter_h11(response: httpx2.Response, conn: h11.Connection, sock: socket.socket,
              guard: _CloseGuard) -> Generator[bytes, None, None]:
    """Content-Length and close-delimited bodies: h11 frames them, we only read the socket."""
    request = response.request
    ended = False

    def feed(data: bytes | None) -> list[bytes]:
        # None: parse only what h11 holds; b"": the peer closed.
        nonlocal ended
        if data is not None and not ended:
            conn.receive_data(data)
        out = []
        while not ended:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise FramingError(str(exc)) from exc
            if type(event) is h11.Data:
                out.append(bytes(event.data))
            elif type(event) is h11.EndOfMessage:
                ended = True
            elif event is h11.NEED_DATA:
                break
            else:
                raise FramingError(f"unexpected {type(event).__name__} in a response body")
        return out

    try:
        pieces = _framed(feed, None, request)
        recv = sock.recv
        while True:
            if pieces:
                try:
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                except GeneratorExit:
                    _drain(feed, lambda: ended, sock)
                    if not ended:
                        raise
            if ended:
                break
            data = _recv(recv, guard, request)
            if not data and guard.closed:
                raise _closed_error(request)
            pieces = _framed(feed, data, request)
    finally:
        guard.finish()
        # Bytes after the message would be read as the next response: never reuse then.
        if conn.their_state is not h11.DONE or conn.trailing_data[0]:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        response.close()


def _framed(feed: Any, data: bytes | None, request: httpx2.Request) -> list[bytes]:
    try:
        pieces: list[bytes] = feed(data)
    except FramingError as exc:
        raise httpx2.RemoteProtocolError(str(exc), request=request) from exc
    return pieces


def _recv(recv: Any, guard: _CloseGuard, request: httpx2.Request) -> bytes:
    try:
        data: bytes = recv(_READ_SIZE)
    except TimeoutError as exc:
        raise httpx2.ReadTimeout("timed out reading the response body", request=request) from exc
    except (OSError, ValueError) as exc:  # ValueError: an SSL socket unwrapped by a shutdown
        if guard.closed:
            raise _closed_error(request) from exc
        raise httpx2.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    return data


def _closed_error(request: httpx2.Request) -> httpx2.ReadError:
    return httpx2.ReadError("the response was closed while its body was read", request=request)


def _drain(feed: Any, done: Any, sock: socket.socket) -> None:
    """Read, without waiting, what has already arrived of the body; never raises."""
    with suppress(Exception):  # nothing there yet (EAGAIN, SSLWantRead), or a bad body
        sock.settimeout(0.0)
        for _ in range(16):  # bounded: a body that keeps coming is not worth keeping
            data = sock.recv(_READ_SIZE)
            if not data:
                return
            feed(data)
            if done():
                return


def _walk_h11(conn: h11.Connection, completion: bytes) -> bool:
    """Bring h11 to the end of the message through its own reader; True if it got there.

    h11 holds, unparsed, a prefix of the body that ends on a chunk boundary (or the whole
    body): that and `completion`, a last chunk if needed, are a complete chunked body.
    """
    try:
        if completion:
            conn.receive_data(completion)
        while True:
            event = conn.next_event()
            if type(event) is h11.EndOfMessage:
                return conn.their_state is h11.DONE
            if type(event) is not h11.Data:
                return False
    except h11.ProtocolError:
        return False  # h11 is in ERROR now: httpcore closes the connection
