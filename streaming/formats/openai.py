"""OpenAI Chat Completions (PROTOCOL.md, "Other wire formats"): `chat.completion.chunk` events,
and the whole `chat.completion` assembled back from them for clients that do not stream.

Pure, like the native format: the relay's typed events in, SSE bytes out; stored bytes in, one
completion out. What OpenAI's own SDKs parse is the reference for every shape here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..events import Done, Event, Failed, Reasoning, Start, Token, ToolCall
from .sse import json_event

if TYPE_CHECKING:
    from ..stores.base import StreamMeta

# What a non-streamed answer's status is for each way a stream can end (PROTOCOL.md). A
# cancel is 409: the request was sound but its stream was stopped on purpose (see `CANCELLED`).
STATUS = {
    "timeout": 504, "rate_limited": 429, "upstream_auth": 502, "upstream_error": 502,
    "upstream_unavailable": 503, "store_unavailable": 503, "producer_lost": 503,
    "internal": 500, "cancelled": 409,
}
CANCELLED = "cancelled"


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status: its two broad kinds, plus rate limits."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_object(code: str, message: str) -> dict[str, Any]:
    """The error of a stream that ended in one; `code` is the native one, or `cancelled`."""
    kind = CANCELLED if code == CANCELLED else error_type(STATUS.get(code, 500))
    return {"message": message, "type": kind, "code": code}


class OpenAIEncoder:
    """One stream's chunks. Every chunk repeats the completion's id, created time and model."""

    __slots__ = ("_head", "_include_usage", "seq")

    def __init__(self, meta: StreamMeta, seq: int = 0) -> None:
        self.seq = seq
        self._head = {"id": f"chatcmpl-{meta.stream_id}", "object": "chat.completion.chunk",
                      "created": int(meta.created), "model": meta.model}
        self._include_usage = bool(meta.options.get("include_usage"))

    def encode(self, events: Sequence[Event]) -> list[bytes]:
        out = []
        for event in events:
            for payload in self._payloads(event):
                # Encoded before the seq is taken: a failure here leaves no gap.
                data = json_event(self.seq, payload)
                self.seq += 1
                out.append(data)
        return out

    def _payloads(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, Token):
            return [self._chunk({"content": event.text})]
        if isinstance(event, Reasoning):
            # The field DeepSeek and vLLM use, which OpenAI-compatible clients look for.
            return [self._chunk({"reasoning_content": event.text})]
        if isinstance(event, ToolCall):
            return [self._chunk({"tool_calls": [tool_call(event)]})]
        if isinstance(event, Start):
            # OpenAI's first chunk: the role, and content "" (some clients expect the key).
            return [self._chunk({"role": "assistant", "content": ""})]
        if isinstance(event, Done) and event.finish_reason != CANCELLED:
            chunks = [self._chunk({}, event.finish_reason)]
            if self._include_usage:
                chunks.append({**self._head, "choices": [], "usage": event.usage})
            return chunks
        if isinstance(event, Done):
            # OpenAI has no cancelled finish reason: an error, as the contract says.
            return [{"error": error_object(CANCELLED, "the answer was cancelled")}]
        if isinstance(event, Failed):
            return [{"error": error_object(event.code, event.message)}]
        raise TypeError(f"not an event: {event!r}")

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head, "choices": [choice]}


def tool_call(event: ToolCall) -> dict[str, Any]:
    call: dict[str, Any] = {"index": event.index}
    if event.id is not None:
        call["id"] = event.id
        call["type"] = "function"  # OpenAI names the type with the id, on the first fragment
    function = {}
    if event.name is not None:
        function["name"] = event.name
    if event.arguments is not None:
        function["arguments"] = event.arguments
    if function:
        call["function"] = function
    return call


class OpenAIFormat:
    name = "openai"

    def encoder(self, meta: StreamMeta, seq: int = 0) -> OpenAIEncoder:
        return OpenAIEncoder(meta, seq)


FORMAT = OpenAIFormat()


# -- the whole answer, for a request without "stream": true ----------------------------------


@dataclass
class Completion:
    """What a stream's chunks add up to. `error` is set when it ended in an error or a cancel."""

    head: dict[str, Any] = field(default_factory=dict)
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, Any] | None = None

    def status(self) -> int:
        if self.error is not None:
            return STATUS.get(str(self.error.get("code")), 500)
        return 200 if self.finish_reason is not None else 500

    def body(self) -> dict[str, Any]:
        """The `chat.completion` object (status 200), or OpenAI's error body."""
        if self.error is not None or self.finish_reason is None:
            error = self.error or error_object("internal", "the answer ended without a finish")
            return {"error": {**error, "param": None}}
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(self.content) or None, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        choice = {"index": 0, "message": message, "finish_reason": self.finish_reason,
                  "logprobs": None}
        return {**self.head, "object": "chat.completion", "choices": [choice],
                "usage": self.usage}


def assemble(body: Iterable[bytes]) -> Completion:
    """Add up the chunks of a stream's SSE body (as this module wrote it) into one answer."""
    done = Completion()
    for line in b"".join(body).split(b"\n"):
        if not line.startswith(b"data: {"):
            continue  # ids, the blank lines, comments, `retry:` and `[DONE]`
        chunk = orjson.loads(line[6:])
        if "error" in chunk:
            done.error = chunk["error"]
            continue
        if not done.head:
            done.head = {k: chunk[k] for k in ("id", "created", "model")}
        if "usage" in chunk:
            done.usage = chunk["usage"]
        for choice in chunk["choices"]:
            _add(done, choice)
    return done


def _add(done: Completion, choice: dict[str, Any]) -> None:
    delta = choice["delta"]
    if delta.get("content"):
        done.content.append(delta["content"])
    if delta.get("reasoning_content"):
        done.reasoning.append(delta["reasoning_content"])
    for fragment in delta.get("tool_calls", ()):
        call = done.tool_calls.setdefault(
            fragment["index"],
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if "id" in fragment:
            call["id"] = fragment["id"]
        function = fragment.get("function", {})
        if "name" in function:
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments", "")
    if choice["finish_reason"] is not None:
        done.finish_reason = choice["finish_reason"]
