"""Raw SSE framing and chat-completion chunk mapping, byte for byte."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streaming.errors import UpstreamError
from streaming.upstream.chunks import iter_sse_batches, iter_sse_data, parse_chunk


def split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


STREAM = (b'data: {"a":1}\n\n: keep-alive\n\ndata:{"b":2}\n\n'
          b"event: x\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n")
EXPECTED = [b'{"a":1}', b'{"b":2}', b"l1\nl2", b"[DONE]"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_iter_sse_data_any_framing_any_split(eol: bytes, size: int) -> None:
    data = STREAM.replace(b"\n", eol)
    assert list(iter_sse_data(iter(split_every(data, size)))) == EXPECTED


def test_batches_are_the_events_each_chunk_completes() -> None:
    chunks = [b"data: a\n\ndata: b\n\nda", b"ta: c", b"\n", b"\n: ping\n\n",
              b"data: d\n\ndata: e\n"]
    assert list(iter_sse_batches(iter(chunks))) == [[b"a", b"b"], [b"c"], [b"d"], [b"e"]]


def test_a_fault_in_a_chunk_comes_after_the_events_before_it() -> None:
    batches = iter_sse_batches(iter([b"data: a\n\ndata: " + b"x" * 200 + b"\n\n"]),
                               max_line=100)
    assert next(batches) == [b"a"]
    with pytest.raises(UpstreamError):
        next(batches)


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    chunks = [b'data: {"a":1}\r', b'\n\r', b"\n", b"data: x\r\n\r\n"]
    assert list(iter_sse_data(iter(chunks))) == [b'{"a":1}', b"x"]


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_a_line_at_the_bound_passes_and_one_past_it_fails(size: int) -> None:
    ok = b"data: " + b"x" * 94 + b"\n\n"  # a line of exactly 100 bytes
    assert list(iter_sse_data(iter(split_every(ok, size)), max_line=100)) == [b"x" * 94]
    with pytest.raises(UpstreamError) as info:
        list(iter_sse_data(iter(split_every(ok.replace(b"x", b"xx", 1), size)), max_line=100))
    assert info.value.code == "upstream_error" and "line" in info.value.message


def test_a_line_that_never_ends_fails_without_holding_it_all() -> None:
    def endless() -> Iterator[bytes]:
        yield b"data: "
        while True:  # were the bound missing, this test would never end
            yield b"x" * 4096

    with pytest.raises(UpstreamError):
        list(iter_sse_data(endless(), max_line=1 << 16))


@pytest.mark.parametrize("eol", [b"\n", b"\r"], ids=["lf", "cr"])
def test_many_data_lines_of_one_event_are_bounded_together(eol: bytes) -> None:
    event = (b"data: " + b"y" * 40 + eol) * 3  # 3 lines of 41 bytes of data, no blank line
    assert list(iter_sse_data(iter([event + eol]), max_event=150)) == [
        b"\n".join([b"y" * 40] * 3)]
    with pytest.raises(UpstreamError) as info:
        list(iter_sse_data(iter([event * 2 + eol]), max_event=150))
    assert "event" in info.value.message


def test_the_bounds_by_default_allow_a_large_event() -> None:
    big = b"z" * (512 * 1024)
    assert list(iter_sse_data(iter(split_every(b"data: " + big + b"\n\n", 65536)))) == [big]


def chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
    import json

    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("data", "items"),
    [
        pytest.param(chunk({"role": "assistant", "content": ""}), [], id="role-only"),
        pytest.param(chunk({}), [], id="empty"),
        pytest.param(chunk({"content": "Hi"}), [("content", "Hi")], id="content"),
        pytest.param(chunk({"reasoning_content": "hm"}), [("reasoning", "hm")],
                     id="reasoning_content"),
        pytest.param(chunk({"reasoning": "hm"}), [("reasoning", "hm")], id="reasoning"),
        pytest.param(chunk({}, "stop"), [("finish", "stop")], id="finish"),
        pytest.param(
            chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "f", "arguments": ""}}]}),
            [("tool_call", {"index": 0, "id": "call_1", "name": "f", "arguments": ""})],
            id="tool-call-first"),
        pytest.param(
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"a"'}}]}),
            [("tool_call", {"index": 1, "arguments": '{"a"'})], id="tool-call-fragment"),
        pytest.param(
            b'{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
            b'"total_tokens":5}}',
            [("usage", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})],
            id="usage"),
    ],
)
def test_parse_chunk(data: bytes, items: list[tuple[str, object]]) -> None:
    assert parse_chunk(data) == items


@pytest.mark.parametrize(
    "data",
    [
        b'{"error": {"message": "sk-live-LEAK", "type": "server_error"}}',
        b'{"object": "error", "message": "sk-live-LEAK", "type": "BadRequest", "code": 400}',
    ],
    ids=["openai", "vllm"],
)
def test_in_stream_error_payload_raises_without_the_upstream_text(data: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_chunk(data)
    assert info.value.code == "upstream_error"
    assert "LEAK" not in info.value.message


@pytest.mark.parametrize("data", [
    b"{", b"[1]", b"null", b'{"choices": "x"}', b'{"choices": ["x"]}',
    b'{"choices": [{"delta": "oops"}]}', b'{"choices": [{"delta": {"tool_calls": {"a": 1}}}]}',
    b'{"choices": [{"delta": {"tool_calls": [1]}}]}',
    b'{"choices": [{"delta": {"tool_calls": [{"index": "0"}]}}]}',
    b'{"choices": [{"delta": {"tool_calls": [{"function": {"arguments": 5}}]}}]}',
    b'{"choices": [{"delta": {}, "finish_reason": ["stop"]}]}',
])
def test_malformed_chunk(data: bytes) -> None:
    with pytest.raises(UpstreamError):
        parse_chunk(data)
