"""An httpx2 transport over urllib3: the OpenAI SDK's HTTP client, through its public hooks.

The SDK takes an `httpx2.Client`; this is the `transport` under it (`httpx2.BaseTransport`,
the documented way to plug in another HTTP stack). urllib3 reads a streaming body one HTTP
chunk at a time (`read_chunked()`; `read1()`, one socket read at a time, for a body that is
not chunked), so each SSE event is handed on as soon as it arrives, and closing a response
(a shutdown of its socket) wakes a read blocked in another thread or greenlet: the relay's
cancel depends on that. It runs on plain sockets, so the same code serves gevent (patched)
and threads.

Each response's body is also reachable as a `Body` (`body_of(response)`), for the two things
httpx2's interface has no word for: abort from another thread, and finish a body whose end
is already on the wire so that its connection is kept.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import httpx2
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

READ_SIZE = 64 * 1024


class _FullPoolIsExpected(logging.Filter):
    """urllib3 warns each time it closes a connection past the idle pool's size: here that is
    the design (a burst keeps `max_idle`), not a fault worth a log line per stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING
                    and str(record.msg).startswith("Connection pool is full"))


_FULL_POOL_FILTER = _FullPoolIsExpected()
_BODY_EXTENSION = "llm_stream.body"  # httpx extensions are namespaced by convention


class Body(httpx2.SyncByteStream):
    """One response's body as it arrives; `close()` may come from any thread or greenlet."""

    def __init__(self, response: urllib3.BaseHTTPResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request
        self._lock = threading.Lock()
        self._closed = False
        self._ended = False  # read to its end: urllib3 has put the connection back
        self._chunks = self._read()  # the one reader of the body, here and in finish()

    @property
    def complete(self) -> bool:
        """The whole body has been read, and its connection kept for the next request."""
        return self._ended

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._chunks
        while True:
            try:
                data = next(chunks, b"")
            except ReadTimeoutError:
                raise httpx2.ReadTimeout("timed out reading the response body",
                                         request=self._request) from None
            except Exception as exc:  # after an abort anything may break underneath
                if self._closed:
                    raise httpx2.ReadError("the response was closed while its body was read",
                                           request=self._request) from None
                raise _read_error(exc, self._request) from None
            if not data:
                if self._closed:
                    raise httpx2.ReadError("the response was closed while its body was read",
                                           request=self._request)
                self._ended = True
                return
            yield data

    def _read(self) -> Iterator[bytes]:
        """The body's bytes as they come: one HTTP chunk at a time through urllib3's
        `read_chunked()` when the body is chunked (the usual streamed answer: an SSE event is
        one chunk, read whole, for less work than `read1()`'s), else each socket read. Either
        way at most READ_SIZE bytes at a time, however large a chunk the upstream announces."""
        response = self._response
        if response.chunked:
            for data in response.read_chunked(READ_SIZE, decode_content=False):
                if data:
                    yield data
            return
        read1 = response.read1
        while data := read1(READ_SIZE):
            yield data

    def finish(self, timeout: float, limit: int = READ_SIZE) -> bool:
        """Read what is left of the body for at most `timeout` seconds and `limit` bytes, so
        that its connection is kept; True if it got to the end. Never raises."""
        response = self._response
        if self._ended or self._closed:
            return self._ended
        with suppress(Exception):  # a timeout or a broken body: urllib3 drops the connection
            sock = _socket(response)
            if sock is not None:
                sock.settimeout(timeout)
            while limit > 0:
                data = next(self._chunks, b"")
                if not data:
                    self._ended = not self._closed
                    break
                limit -= len(data)
        return self._ended

    def close(self) -> None:
        """Release the connection if the body was read to its end, else drop it at once,
        waking whoever is blocked reading it and sending the upstream a FIN."""
        with self._lock:
            if self._closed:
                return
            if self._ended:
                return  # urllib3 put the connection back when the body ended
            self._closed = True
        # Shutdown wakes a recv() in progress (close() alone does not, in another thread);
        # urllib3's own shutdown() only stops reading, so no FIN would leave before close.
        sock = _socket(self._response)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with suppress(Exception):
            self._response.close()


def body_of(response: httpx2.Response) -> Body | None:
    """The `Body` under a response this transport answered; None for any other."""
    body = response.extensions.get(_BODY_EXTENSION)
    return body if isinstance(body, Body) else None


class Urllib3Transport(httpx2.BaseTransport):
    """HTTP/1.1 through urllib3's connection pools, keeping at most `max_idle` idle
    connections per host.

    The request's read timeout bounds the wait for the response's headers, and each read of
    the body too unless `body_read_timeout` is False: under gevent a timed read arms a timer
    each time, and a caller that keeps its own clocks (and kills the reading greenlet, or
    closes the body) has no use for it.
    """

    def __init__(self, *, max_idle: int = 32, ssl_context: ssl.SSLContext | None = None,
                 body_read_timeout: bool = True) -> None:
        self._max_idle = max_idle
        pool_log = logging.getLogger("urllib3.connectionpool")
        if _FULL_POOL_FILTER not in pool_log.filters:
            pool_log.addFilter(_FULL_POOL_FILTER)
        self._ssl_context = ssl_context
        self._body_read_timeout = body_read_timeout
        # One pool per origin, looked up by a plain key: urllib3's PoolManager normalises a
        # key per request at a cost comparable to the rest of the request.
        self._pools: dict[tuple[str, str, int | None], urllib3.HTTPConnectionPool] = {}
        self._timeouts: dict[tuple[Any, Any], urllib3.Timeout] = {}
        self._lock = threading.Lock()

    def _pool(self, url: httpx2.URL) -> urllib3.HTTPConnectionPool:
        key = (url.scheme, url.host, url.port)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = self._pools[key] = self._new_pool(*key)
        return pool

    def _new_pool(self, scheme: str, host: str, port: int | None) -> urllib3.HTTPConnectionPool:
        # maxsize is how many idle connections are kept for reuse; block=False: past it, a
        # request opens a connection of its own and closes it when done. So after a burst of
        # thousands of streams the worker keeps a few idle sockets, not thousands (open
        # streams are bounded by MAX_STREAMS and WORKER_CONNECTIONS). urllib3 checks only the
        # connection it takes for staleness, so idle ones cost nothing per request.
        if scheme == "https":
            return urllib3.HTTPSConnectionPool(
                host, port, maxsize=self._max_idle, block=False, retries=False,
                ssl_context=self._ssl_context)
        if scheme != "http":
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        return urllib3.HTTPConnectionPool(host, port, maxsize=self._max_idle, block=False,
                                          retries=False)

    def _timeout(self, connect: Any, read: Any) -> urllib3.Timeout:
        timeout = self._timeouts.get((connect, read))
        if timeout is None:  # a handful of distinct values: the SDK's and the probe's
            timeout = self._timeouts[(connect, read)] = urllib3.Timeout(connect=connect,
                                                                         read=read)
        return timeout

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        url = request.url
        try:
            response = self._pool(url).urlopen(
                request.method, url.raw_path.decode("ascii"), body=request.read() or None,
                headers=_fields(request.headers.raw),
                retries=False, redirect=False, assert_same_host=False,
                timeout=self._timeout(timeouts.get("connect"), timeouts.get("read")),
                pool_timeout=timeouts.get("pool"),
                preload_content=False, decode_content=False,
            )
        except EmptyPoolError:
            raise httpx2.PoolTimeout("no free connection in time", request=request) from None
        except NewConnectionError as exc:  # a subclass of ConnectTimeoutError: first
            raise httpx2.ConnectError(_reason(exc), request=request) from None
        except ConnectTimeoutError:
            raise httpx2.ConnectTimeout("timed out connecting", request=request) from None
        except ReadTimeoutError:
            raise httpx2.ReadTimeout("timed out waiting for the response",
                                     request=request) from None
        except ProtocolError as exc:
            raise httpx2.RemoteProtocolError(_reason(exc), request=request) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise httpx2.ConnectError(_reason(exc), request=request) from None
        if not self._body_read_timeout:
            sock = _socket(response)
            if sock is not None:  # urllib3 sets the timeout again for the next request
                sock.settimeout(None)
        body = Body(response, request)
        return httpx2.Response(
            response.status, headers=list(response.headers.items()), stream=body,
            extensions={"http_version": b"HTTP/1.1",
                        "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
                        _BODY_EXTENSION: body},
        )

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def _fields(raw: list[tuple[bytes, bytes]]) -> Any:
    """Request header fields for urllib3: a plain dict when no name repeats (the usual case,
    and the cheaper one), else a multi-dict that keeps every field."""
    fields = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw}
    if len({k.lower() for k in fields}) == len(raw):
        return fields
    return urllib3.HTTPHeaderDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw])


def _socket(response: urllib3.BaseHTTPResponse) -> socket.socket | None:
    connection = response.connection
    # urllib3's connections are the standard library's, whose socket is public as `sock`.
    if isinstance(connection, http.client.HTTPConnection):
        sock = connection.sock
        return sock if isinstance(sock, socket.socket) else None
    return None


def _read_error(exc: Exception, request: httpx2.Request) -> httpx2.TransportError:
    if isinstance(exc, ProtocolError):
        return httpx2.RemoteProtocolError(_reason(exc), request=request)
    return httpx2.ReadError(_reason(exc), request=request)


def _reason(exc: BaseException) -> str:
    # The type only: urllib3's messages name the pool object and sometimes the URL.
    return type(exc).__name__
