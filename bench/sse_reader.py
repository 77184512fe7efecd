"""Incremental reader of one HTTP/1.1 SSE response: head, chunked body, SSE data fields. No I/O.

The load generator feeds it whatever the socket gave; it answers the `data:` payloads of the
events completed so far. Kept apart from the I/O so it can be checked on exact bytes.
"""

from __future__ import annotations


class ResponseError(Exception):
    """The response is not a well-formed HTTP/1.1 response."""


class ResponseReader:
    """Feed bytes, get the `data:` payloads of every complete SSE event, in order."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ended = False  # the body's end was seen (last chunk, or Content-Length reached)
        self._head = b""
        self._in_body = False
        self._chunked = False
        self._left = -1  # bytes left in the current chunk (chunked) or the body (length); -1: ?
        self._raw = b""  # undecoded body bytes (chunked framing)
        self._text = b""  # decoded body bytes not yet split into events

    def feed(self, data: bytes) -> list[bytes]:
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > 65536:
                    raise ResponseError("response head too large")
                return []
            self._parse_head(self._head[:end])
            data, self._head, self._in_body = self._head[end + 4:], b"", True
        if self._chunked:
            self._raw += data
            self._dechunk()
        else:
            if self._left >= 0:
                data = data[:self._left]
                self._left -= len(data)
                self.ended = self._left == 0
            self._text += data
        return self._events()

    def body(self) -> bytes:
        """The decoded body not yet taken as events (a non-SSE answer: an error body)."""
        return self._text

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ResponseError(f"bad status line {lines[0]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if not self._chunked and "content-length" in self.headers:
            self._left = int(self.headers["content-length"])
            self.ended = self._left == 0

    def _dechunk(self) -> None:
        raw, pos, out = self._raw, 0, []
        while not self.ended:
            if self._left < 0:  # at a size line
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    size = int(raw[pos:eol].split(b";")[0], 16)
                except ValueError as exc:
                    raise ResponseError(f"bad chunk size {raw[pos:eol]!r}") from exc
                pos = eol + 2
                if size == 0:
                    self.ended = True  # trailers are not used by any server measured here
                    break
                self._left = size
            if len(raw) - pos < self._left + 2:  # the chunk and its CRLF are not all here
                break
            out.append(raw[pos:pos + self._left])
            pos += self._left + 2
            self._left = -1
        self._raw = raw[pos:]
        self._text += b"".join(out)

    def _events(self) -> list[bytes]:
        text = self._text
        if b"\r" in text:  # WHATWG: CRLF and a lone CR end lines too; every server here sends LF
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = text.split(b"\n\n")
        self._text = blocks.pop()
        out = []
        for block in blocks:
            data = [line[5:].removeprefix(b" ") for line in block.split(b"\n")
                    if line.startswith(b"data:")]
            if data:
                out.append(b"\n".join(data))
        return out
