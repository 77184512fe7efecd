"""Server-Sent Events encoding (WHATWG HTML, "Server-sent events"). No I/O."""

from __future__ import annotations

import re

# WHATWG: a line ends at CRLF, a lone LF or a lone CR.
_LINE_END = re.compile(r"\r\n|\r|\n")
_ID_FORBIDDEN = re.compile(r"[\r\n\x00]")

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def encode(
    data: str | None = None,
    *,
    id: str | int | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event; every field is optional, the blank line always ends it."""
    parts: list[str] = []
    if event is not None:
        parts.append(f"event: {_single_line(event)}\n")
    if id is not None:
        # WHATWG: an id containing NUL is ignored by the client; CR/LF would end the field.
        parts.append(f"id: {_ID_FORBIDDEN.sub('', str(id))}\n")
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"retry must be a whole number of milliseconds, not {retry!r}")
        # WHATWG: a retry value with anything but ASCII digits is ignored; int() guarantees that.
        parts.append(f"retry: {retry}\n")
    if data is not None:
        parts.extend(f"data: {line}\n" for line in _LINE_END.split(data))
    parts.append("\n")
    return "".join(parts).encode()


def encode_json_event(seq: int, payload: bytes) -> bytes:
    """The hot path: one JSON object (which never holds a raw line break) as event `seq`."""
    return b"id: %d\ndata: %s\n\n" % (seq, payload)


def comment(text: str = "") -> bytes:
    """Comment lines and a blank line; clients ignore them, proxies see traffic."""
    lines = "".join(f":{' ' if line else ''}{line}\n" for line in _LINE_END.split(text))
    return (lines + "\n").encode()


def _single_line(value: str) -> str:
    return _LINE_END.sub("", value)
