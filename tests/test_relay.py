"""One stream's producer in-process, on plain threads, with a scripted provider."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from streaming.errors import UpstreamRateLimitedError
from streaming.manager import StreamManager
from streaming.metrics import Metrics
from streaming.settings import Settings
from streaming.stores.memory import MemoryStore
from streaming.upstream.provider import CONTENT, FINISH, REASONING, TOOL_CALL, USAGE, Item


class Script:
    """An upstream stream: yields scripted chunks; `gate` holds it open until set."""

    def __init__(self, chunks: list[list[Item]], gate: threading.Event | None = None,
                 fail: BaseException | None = None) -> None:
        self.chunks = chunks
        self.gate = gate
        self.fail = fail
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def __iter__(self) -> Iterator[list[Item]]:
        yield from self.chunks
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail


class Provider:
    name = "scripted"

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.opened = 0

    @contextlib.contextmanager
    def open(self, request: dict[str, Any]) -> Iterator[Script]:
        script = self.scripts[min(self.opened, len(self.scripts) - 1)]
        self.opened += 1
        try:
            yield script
        finally:
            script.close()

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


def run(provider: Provider, store: Any = None, **settings: Any) -> list[dict[str, Any]]:
    store = MemoryStore(60) if store is None else store
    manager = StreamManager(Settings(**settings), store, provider, Metrics())
    generation, following = manager.start({"model": "m", "messages": []}, None)
    following.release()
    events: list[bytes] = []
    for _ in range(200):
        got, ended = store.read(generation.stream_id, len(events), 10)
        events += got
        if ended:
            break
    assert ended
    out = []
    for seq, raw in enumerate(events):
        head, data = raw.split(b"\n", 1)
        assert head == b"id: %d" % seq
        out.append(json.loads(data.removeprefix(b"data: ").rstrip(b"\n")))
    return out


USAGE_OK = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_items_become_events_in_order() -> None:
    events = run(Provider(Script([
        [(REASONING, "think")], [(CONTENT, "Hi")], [(CONTENT, " there.")],
        [(TOOL_CALL, {"index": 0, "id": "c1", "name": "f", "arguments": ""})],
        [(FINISH, "tool_calls"), (USAGE, USAGE_OK)],
    ])))
    assert [e["type"] for e in events] == ["start", "reasoning", "token", "token", "tool_call",
                                           "done"]
    assert events[-1] == {"type": "done", "finish_reason": "tool_calls", "usage": USAGE_OK}


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 10**30, "completion_tokens": 1}, None),
        ({"prompt_tokens": "2", "completion_tokens": 3}, None),
        ({"prompt_tokens": 2, "completion_tokens": 3}, USAGE_OK),
        ({"prompt_tokens": -1, "completion_tokens": 3}, None),
    ],
)
def test_usage_is_checked(usage: dict[str, Any], expected: Any) -> None:
    events = run(Provider(Script([[(CONTENT, "x")], [(FINISH, "stop"), (USAGE, usage)]])))
    assert events[-1] == {"type": "done", "finish_reason": "stop", "usage": expected}


@pytest.mark.parametrize(("reason", "expected"),
                         [("eos", "stop"), ("function_call", "tool_calls"), ("length", "length")])
def test_finish_reasons_map_to_the_contract(reason: str, expected: str) -> None:
    events = run(Provider(Script([[(CONTENT, "x")], [(FINISH, reason)]])))
    assert events[-1]["finish_reason"] == expected


def test_retry_before_the_first_delta_then_success() -> None:
    failing = Script([], fail=UpstreamRateLimitedError("slow down", retry_after=0.01))
    provider = Provider(failing, Script([[(CONTENT, "ok")], [(FINISH, "stop")]]))
    events = run(provider)
    assert provider.opened == 2
    assert [e.get("token") for e in events if e["type"] == "token"] == ["ok"]


def test_no_retry_after_the_first_delta() -> None:
    provider = Provider(Script([[(CONTENT, "part")]],
                               fail=UpstreamRateLimitedError("slow down", retry_after=0.01)))
    events = run(provider)
    assert provider.opened == 1
    assert events[-1] == {"type": "error", "code": "rate_limited", "message": "slow down",
                          "retry_after": 0.01}


def test_a_store_that_fails_still_ends_the_stream() -> None:
    class FlakyStore(MemoryStore):
        failed = False

        def append(self, stream_id: str, seq: int, events: list[bytes], *,
                   end: bool = False) -> None:
            if not self.failed and any(b'"b."' in e for e in events):
                self.failed = True
                raise OSError("store down")
            super().append(stream_id, seq, events, end=end)

    gate = threading.Event()
    store = FlakyStore(60)
    try:
        events = run(Provider(Script([[(CONTENT, "a")], [(CONTENT, "b.")]], gate=gate)),
                     store=store, BUFFER_MAX_TOKENS=1)
    finally:
        gate.set()
    # The batch that failed is written with the terminal event: no seq is skipped (run()
    # checks the ids), nothing already numbered is lost, and readers are released.
    assert [e["token"] for e in events if e["type"] == "token"] == ["a", "b."]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "internal"


def test_cancel_reaches_a_blocked_upstream() -> None:
    gate = threading.Event()
    script = Script([[(CONTENT, "a")]], gate=gate)
    store = MemoryStore(60)
    manager = StreamManager(Settings(), store, Provider(script), Metrics())
    generation, _ = manager.start({"model": "m", "messages": []}, None)
    got, _ = store.read(generation.stream_id, 0, 10)
    while len(got) < 2:
        got, _ = store.read(generation.stream_id, 0, 10)
    generation.cancel()
    assert script.closed.wait(5)
    gate.set()
    got, ended = store.read(generation.stream_id, 0, 10)
    while not ended:
        got, ended = store.read(generation.stream_id, 0, 10)
    assert json.loads(got[-1].split(b"data: ")[1]) == {
        "type": "done", "finish_reason": "cancelled", "usage": None}
    assert len(manager) == 0
