"""The chat-completions stream as bytes in, items out: SSE framing and chunk mapping.

Pure (no I/O, no SDK): the upstream boundary feeds it the raw body, because building the SDK's
typed chunk per delta costs several times more CPU than this.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import UpstreamError
from .provider import CONTENT, FINISH, REASONING, TOOL_CALL, USAGE, Item

_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# An upstream line or event past these is a fault, not a reason to hold unbounded memory: a
# chat-completion chunk is a few hundred bytes, a large tool-call fragment a few kilobytes.
MAX_LINE_BYTES = 1 << 20
MAX_EVENT_BYTES = 1 << 20


class UpstreamCutError(UpstreamError):
    """The stream broke off or made no sense: retried only if no delta was relayed yet."""

    code = "upstream_error"
    retryable = True


def iter_sse_data(chunks: Iterator[bytes], *, max_line: int = MAX_LINE_BYTES,
                  max_event: int = MAX_EVENT_BYTES) -> Iterator[bytes]:
    """Yield the data of each SSE event in a byte stream (WHATWG rules, as bytes).

    Lines end at CRLF, LF or a lone CR; several `data` lines join with LF; comments and other
    fields are skipped. A line longer than `max_line` bytes, or an event whose data lines add
    up to more than `max_event`, raises `UpstreamError` (`upstream_error`).
    """
    for batch in iter_sse_batches(chunks, max_line=max_line, max_event=max_event):
        yield from batch


def iter_sse_batches(chunks: Iterator[bytes], *, max_line: int = MAX_LINE_BYTES,
                     max_event: int = MAX_EVENT_BYTES) -> Iterator[list[bytes]]:
    """`iter_sse_data`, a list per chunk read: the events that chunk completed (never an empty
    list), so that events arriving together are handled together."""
    pending = b""
    data: list[bytes] = []
    size = 0  # of the data lines in `data`
    skip_lf = False
    for chunk in chunks:
        if skip_lf and chunk:
            # The previous chunk ended with a CR, already taken as a line end: a LF now is
            # the second half of that CRLF, not an empty line.
            skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if not chunk:
            continue
        buf = pending + chunk if pending else chunk
        if b"\r" in buf:
            skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        pending = lines.pop()
        batch: list[bytes] = []
        fault = None  # raised after the events before it go on
        for line in lines:
            if not line:
                if data:
                    batch.append(b"\n".join(data))
                    data.clear()
                    size = 0
            elif line.startswith(b"data:"):
                value = line[5:]
                size += len(value)
                if len(line) > max_line or size > max_event:
                    fault = _oversized("line" if len(line) > max_line else "event")
                    break
                data.append(value[1:] if value.startswith(b" ") else value)
        if fault is None and len(pending) > max_line:
            fault = _oversized("line")
        if batch:
            yield batch
        if fault is not None:
            raise fault
    if data:
        yield [b"\n".join(data)]


def _oversized(what: str) -> UpstreamError:
    # Not retryable: the same request would most likely get the same answer.
    return UpstreamError(f"the upstream sent an oversized {what}")


def parse_chunk(data: bytes) -> list[Item]:
    """Map one chunk of the chat-completions stream to items; raise on an error payload.

    The upstream is not trusted to send the shapes it should: anything else is a malformed
    chunk (`upstream_error`), never an exception of ours.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _malformed() from None
    if not isinstance(obj, dict):
        raise _malformed()
    if obj.get("error") is not None or obj.get("object") == "error":
        raise _in_stream_error(obj)
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise _malformed()
    items: list[Item] = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise _malformed()
        if choice.get("index", 0) != 0:
            continue  # n > 1 is not relayed: only the first choice
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _malformed()
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            items.append((REASONING, reasoning))
        content = delta.get("content")
        if content and isinstance(content, str):
            items.append((CONTENT, content))
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _malformed()
        items.extend((TOOL_CALL, _tool_call(call)) for call in calls)
        reason = choice.get("finish_reason")
        if reason:
            if not isinstance(reason, str):
                raise _malformed()
            items.append((FINISH, reason))
    usage = obj.get("usage")
    if usage and isinstance(usage, dict):
        items.append((USAGE, usage))
    return items


def _malformed() -> UpstreamCutError:
    return UpstreamCutError("the upstream sent a malformed chunk")


def _tool_call(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise _malformed()
    function = call.get("function") or {}
    index = call.get("index", 0)
    if not isinstance(function, dict) or isinstance(index, bool) or not isinstance(index, int):
        raise _malformed()
    fragment: dict[str, Any] = {"index": index}
    for key, value in (("id", call.get("id")), ("name", function.get("name"))):
        if value:
            if not isinstance(value, str):
                raise _malformed()
            fragment[key] = value
    arguments = function.get("arguments")
    if arguments is not None:
        if not isinstance(arguments, str):
            raise _malformed()
        fragment["arguments"] = arguments
    return fragment


def _in_stream_error(obj: dict[str, Any]) -> UpstreamError:
    error = obj.get("error")
    detail = error if isinstance(error, dict) else obj
    # The upstream's message may quote the request or a key: name only its code or type.
    label = next(
        (str(v) for v in (detail.get("code"), detail.get("type"))
         if v is not None and _SAFE_CODE.match(str(v))),
        None,
    )
    suffix = f" ({label})" if label else ""
    return UpstreamError(f"the upstream reported an error in the stream{suffix}")
