"""Server-Sent Events encoding (WHATWG HTML, "Server-sent events"), shared by every wire format.

No I/O. Every byte a client reads goes through here, so the rules that keep model text inert
live in one place: a data line never holds a raw line break (WHATWG: CRLF, LF, CR), nor one of
the characters that other line splitters break on (Python's `str.splitlines`, some JS code:
U+2028, U+2029, U+0085), so no text can add a field, end an event early or forge `[DONE]`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# WHATWG: a line ends at CRLF, a lone LF or a lone CR.
_LINE_END = re.compile(r"\r\n|\r|\n")
_ID_FORBIDDEN = re.compile(r"[\r\n\x00]")

DONE = b"data: [DONE]\n\n"
# A comment line alone, with no blank line after it: a blank line after a comment or `retry:`
# makes some client libraries (httpx-sse, @microsoft/fetch-event-source) hand the application
# an empty event.
PING = b": ping\n"

# The UTF-8 of U+2028, U+2029 and U+0085, which JSON may hold raw and orjson leaves raw; the
# control characters below U+0020 that `str.splitlines` also breaks on are escaped by JSON.
_SPLITTERS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"),
              (b"\xc2\x85", b"\\u0085"))


def retry_line(ms: int) -> bytes:
    """The reconnection delay as a field line of its own (applied at once, no event)."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise ValueError(f"retry must be a whole number of milliseconds, not {ms!r}")
    return b"retry: %d\n" % ms


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON for one data line: no raw line break of any line splitter."""
    data = orjson.dumps(payload)
    if b"\xe2\x80" in data or b"\xc2\x85" in data:
        for raw, escaped in _SPLITTERS:
            data = data.replace(raw, escaped)
    return data


def json_event(seq: int, payload: Any) -> bytes:
    """The hot path: event `seq` whose data is one JSON object."""
    return b"id: %d\ndata: %s\n\n" % (seq, dumps(payload))


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
        # WHATWG: a retry value with anything but ASCII digits is ignored; int() guarantees that.
        parts.append(retry_line(retry).decode())
    if data is not None:
        parts.extend(f"data: {line}\n" for line in _LINE_END.split(data))
    parts.append("\n")
    return "".join(parts).encode()


def comment(text: str = "") -> bytes:
    """Comment lines, no blank line after them: clients ignore them, proxies see traffic.
    Split at every line end `str.splitlines` knows, so none can start a field of its own."""
    lines = text.splitlines() or [""]
    if text and text[-1] in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
        lines.append("")  # a trailing line end ends an empty last line, as WHATWG reads it
    return "".join(f":{' ' if line else ''}{line}\n" for line in lines).encode()


def _single_line(value: str) -> str:
    return _LINE_END.sub("", value)
