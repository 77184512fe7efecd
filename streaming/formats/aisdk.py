"""The AI SDK's UI message stream (PROTOCOL.md, "AI SDK UI message stream: /api/chat"): what
`useChat` and `DefaultChatTransport` of the `ai` package (major 7) send and read. Pure.

The request: the body `DefaultChatTransport` sends (chat id, the whole chat as UI messages)
becomes the common upstream request. The stream: one typed event becomes several parts, each
an SSE event with its own id: text and reasoning arrive as start/delta/end runs, tool calls as
input start/deltas and, at the end, the parsed input. Part names and fields are those of the
package's own schema (`uiMessageChunkSchema`). Everything that identifies a part is derived
from the stream alone, so the stored bytes, and so every replay, are the same for every reader.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ApiError
from ..events import Done, Event, Failed, Reasoning, Start, Token, ToolCall
from ..settings import Settings
from ..validation import parse_chat_request
from .sse import json_event

if TYPE_CHECKING:
    from ..stores.base import StreamMeta

# The contract's finish reasons in the SDK's spelling (`cancelled` is an `abort` instead).
FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool-calls",
                  "content_filter": "content-filter"}

# The SSE response header that tells the SDK which protocol it reads.
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}


def message_id(meta: StreamMeta) -> str:
    """The assistant message's id: the one the request continues, else one of the stream's own.

    The SDK replaces or appends a message by this id, so it must never drift between replays.
    Derived from the stream id rather than equal to it: UI messages are persisted and shared,
    and a stream id lets whoever holds it cancel the stream when API_KEYS is unset.
    """
    given = meta.options.get("message_id")
    if isinstance(given, str) and given:
        return given
    return "msg-" + hashlib.sha256(b"aisdk-message:" + meta.stream_id.encode()).hexdigest()[:32]


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class AISDKEncoder:
    """One stream's parts. Stateful (the open text or reasoning run, the tool calls so far);
    a fresh one, as a lost producer's terminal event gets on another worker, encodes a Failed
    without any of that state."""

    __slots__ = ("_calls", "_message_id", "_open", "_runs", "seq")

    def __init__(self, message_id: str, seq: int = 0) -> None:
        self.seq = seq
        self._message_id = message_id
        self._open: tuple[str, str] | None = None  # ("text" | "reasoning", part id)
        self._runs = 0  # text and reasoning runs so far: their part ids
        self._calls: dict[int, _Call] = {}

    def encode(self, events: Sequence[Event]) -> list[bytes]:
        parts: list[dict[str, Any]] = []
        for event in events:
            self._parts(event, parts)
        # Numbered only once every part is built: a failure above leaves no seq gap.
        out = [json_event(self.seq + i, part) for i, part in enumerate(parts)]
        self.seq += len(out)
        return out

    def _parts(self, event: Event, out: list[dict[str, Any]]) -> None:
        if isinstance(event, Token):
            self._delta("text", event.text, out)
        elif isinstance(event, Reasoning):
            self._delta("reasoning", event.text, out)
        elif isinstance(event, ToolCall):
            self._tool_fragment(event, out)
        elif isinstance(event, Start):
            out.append({"type": "start", "messageId": self._message_id})
            out.append({"type": "start-step"})
        elif isinstance(event, Done):
            self._close(out)
            if event.finish_reason == "cancelled":
                # The SDK's own shape of a stopped answer: `abort` and no `finish`.
                out.append({"type": "abort", "reason": "cancelled"})
                return
            out.extend(self._tool_inputs())
            out.append({"type": "finish-step"})
            out.append({"type": "finish",
                        "finishReason": FINISH_REASONS.get(event.finish_reason, "other")})
        elif isinstance(event, Failed):
            self._close(out)
            out.append({"type": "error", "errorText": event.message})
        else:
            raise TypeError(f"not an event: {event!r}")

    def _delta(self, kind: str, text: str, out: list[dict[str, Any]]) -> None:
        if self._open is None or self._open[0] != kind:
            self._close(out)
            self._open = (kind, f"{kind}-{self._runs}")
            self._runs += 1
            out.append({"type": f"{kind}-start", "id": self._open[1]})
        out.append({"type": f"{kind}-delta", "id": self._open[1], "delta": text})

    def _close(self, out: list[dict[str, Any]]) -> None:
        if self._open is not None:
            out.append({"type": f"{self._open[0]}-end", "id": self._open[1]})
            self._open = None

    def _tool_fragment(self, event: ToolCall, out: list[dict[str, Any]]) -> None:
        call = self._calls.get(event.index)
        if call is None:
            self._close(out)
            # The upstream names the call on its first fragment; ids stay unique if it does not.
            call = self._calls[event.index] = _Call(event.id or f"call-{event.index}",
                                                    event.name or "unknown")
            out.append({"type": "tool-input-start", "toolCallId": call.id,
                        "toolName": call.name})
        if event.arguments:
            call.arguments.append(event.arguments)
            out.append({"type": "tool-input-delta", "toolCallId": call.id,
                        "inputTextDelta": event.arguments})

    def _tool_inputs(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for _, call in sorted(self._calls.items()):
            text = "".join(call.arguments)
            try:
                value = orjson.loads(text) if text.strip() else {}
            except orjson.JSONDecodeError:
                # The SDK's part for input the model got wrong: the UI shows it as failed.
                parts.append({"type": "tool-input-error", "toolCallId": call.id,
                              "toolName": call.name, "input": text,
                              "errorText": "the model's tool arguments are not valid JSON"})
                continue
            parts.append({"type": "tool-input-available", "toolCallId": call.id,
                          "toolName": call.name, "input": value})
        return parts


class AISDKFormat:
    name = "aisdk"

    def encoder(self, meta: StreamMeta, seq: int = 0) -> AISDKEncoder:
        return AISDKEncoder(message_id(meta), seq)


FORMAT = AISDKFormat()


# -- the request ----------------------------------------------------------------------------

_CHAT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# The request's fields that the native request also takes; the transport's own (`trigger`,
# `messageId`) and whatever else a client's `body` adds are not the upstream's business.
_OPTIONS = ("model", "temperature", "max_tokens")


def check_chat_id(value: Any) -> str:
    # "stream" would make /api/chat/stream/... the native resume path.
    if not isinstance(value, str) or not _CHAT_ID.fullmatch(value) or value == "stream":
        raise ApiError(422, "invalid_request",
                       "id: a chat id is 1 to 128 letters, digits, '_' or '-', not 'stream'")
    return value


def parse_request(raw: Any, settings: Settings) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The chat id, the upstream parameters and the stream's options of a POST /api/chat."""
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    if "id" not in raw:
        raise ApiError(422, "invalid_request", "id: is required (the chat id)")
    chat_id = check_chat_id(raw["id"])
    ui = raw.get("messages")
    if not isinstance(ui, list) or not ui:
        # The service keeps no history: the transport's default body carries the whole chat.
        raise ApiError(422, "invalid_request", "messages: the chat's UI messages are required")
    request = {k: raw[k] for k in _OPTIONS if k in raw}
    request["messages"] = chat_messages(ui)
    params = parse_chat_request(request, settings)
    options: dict[str, Any] = {"chat_id": chat_id}
    last = ui[-1]
    # A request that continues an assistant message (a client-side tool result) gets its
    # parts added to that message: the SDK matches the message by this id.
    if last.get("role") == "assistant" and isinstance(last.get("id"), str) \
            and 0 < len(last["id"]) <= 256:
        options["message_id"] = last["id"]
    return chat_id, params, options


def chat_messages(ui: list[Any]) -> list[dict[str, Any]]:
    """UI messages as chat messages: text parts to text, image files to `image_url` parts,
    finished tool parts to `tool_calls` and `tool` messages; every other part is dropped, and
    so is a message left with nothing."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(ui):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise ApiError(422, "invalid_request", f"{where}: must be an object")
        role, parts = message.get("role"), message.get("parts")
        if role not in ("system", "user", "assistant"):
            raise ApiError(422, "invalid_request",
                           f"{where}.role: must be 'system', 'user' or 'assistant'")
        if not isinstance(parts, list):
            raise ApiError(422, "invalid_request", f"{where}.parts: must be a list")
        if role == "assistant":
            out.extend(_assistant(parts, where))
            continue
        content: list[dict[str, Any]] = []
        for j, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") == "text":
                content.append({"type": "text", "text": _string(part, "text", where, j)})
            elif role == "user" and _is_image(part):
                content.append({"type": "image_url",
                                "image_url": {"url": _string(part, "url", where, j)}})
        if len(content) == 1 and content[0]["type"] == "text":
            out.append({"role": role, "content": content[0]["text"]})
        elif content:
            out.append({"role": role, "content": content})
    return out


def _assistant(parts: list[Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's steps (runs between `step-start` parts), each as the assistant
    turn (text and tool calls) and then its tool results, the order upstreams want."""
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def flush() -> None:
        if calls:
            out.append({"role": "assistant", "content": "".join(text) or None,
                        "tool_calls": list(calls)})
        elif text:
            out.append({"role": "assistant", "content": "".join(text)})
        out.extend(results)
        text.clear()
        calls.clear()
        results.clear()

    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            continue
        if kind == "step-start":
            flush()
        elif kind == "text":
            text.append(_string(part, "text", where, j))
        elif kind == "dynamic-tool" or kind.startswith("tool-"):
            call = _tool(part, kind, where, j)
            if call is not None:
                calls.append(call[0])
                results.append(call[1])
    flush()
    return out


def _tool(part: dict[str, Any], kind: str, where: str,
          j: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A tool part with a result as its call and its `tool` message; None without a result
    (an upstream refuses a call that has no result after it)."""
    state = part.get("state")
    if state == "output-available":
        output = part.get("output")
        result = output if isinstance(output, str) else orjson.dumps(output).decode()
    elif state == "output-error":
        error = part.get("errorText")
        result = error if isinstance(error, str) else "the tool failed"
    else:
        return None
    name = _string(part, "toolName", where, j) if kind == "dynamic-tool" else kind[5:]
    call_id = _string(part, "toolCallId", where, j)
    arguments = orjson.dumps(part.get("input") if part.get("input") is not None else {})
    return ({"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments.decode()}},
            {"role": "tool", "tool_call_id": call_id, "content": result})


def _is_image(part: Any) -> bool:
    if not isinstance(part, dict) or part.get("type") != "file":
        return False
    media = part.get("mediaType")
    return isinstance(media, str) and media.startswith("image/")


def _string(part: dict[str, Any], name: str, where: str, j: int) -> str:
    value = part.get(name)
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", f"{where}.parts.{j}.{name}: must be a string")
    return value
