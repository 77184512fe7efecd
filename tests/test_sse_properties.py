"""Properties (hypothesis) of the two places hostile input meets the service: the request
validator, and the SSE encoder that carries model text to every client.

The encoder is checked against two small parsers written here, independent of it: the WHATWG
one browsers use, and a `str.splitlines` one as some client code does it (which also breaks
lines on U+2028, U+2029, U+0085, VT, FF and FS/GS/RS). Any model text must reach both as the
same events with the same data: no added field, no early end, no forged `[DONE]`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.errors import ApiError
from streaming.formats import sse
from streaming.settings import Settings
from streaming.validation import (
    MAX_JSON_DEPTH,
    check_messages,
    parse_chat_request,
    parse_json,
    parse_last_event_id,
)

# Small runs: the whole file takes a few seconds; the strategies aim at the edges instead.
FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

SETTINGS = Settings(MAX_MESSAGES=8, MAX_OUTPUT_TOKENS=1000)

# --- Two SSE parsers, from the specs rather than from our encoder.


@dataclass(frozen=True)
class Parsed:
    id: str | None
    event: str
    data: str


def parse_lines(lines: list[str]) -> tuple[list[Parsed], list[str]]:
    """WHATWG HTML "Interpreting an event stream", from already split lines: the events
    dispatched, and the retry values set. An event not ended by a blank line is dropped."""
    events: list[Parsed] = []
    retries: list[str] = []
    data: list[str] = []
    event_type = ""
    last_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                events.append(Parsed(last_id, event_type or "message", "\n".join(data)))
            data, event_type = [], ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retries.append(value)
    return events, retries


def whatwg(stream: bytes) -> tuple[list[Parsed], list[str]]:
    text = stream.decode("utf-8")  # strict: the encoder must write valid UTF-8
    text = text.removeprefix("\ufeff")
    # A line ends at CRLF, a lone CR or a lone LF; the stream's end ends no line.
    *lines, _tail = re.split(r"\r\n|\r|\n", text)
    return parse_lines(lines)


def splitlines(stream: bytes) -> tuple[list[Parsed], list[str]]:
    lines = stream.decode("utf-8").splitlines()
    return parse_lines(lines)


# Text that has broken SSE encoders: every line break of every splitter, field names, a
# forged terminator, and the JSON characters that need escaping.
BREAKS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
          "\u2029", "\x00", "\ufeff"]
FORGERIES = ["data: [DONE]", "\n\ndata: [DONE]\n\n", "id: 99", "event: error", "retry: 1",
             ":", " ", '"', "\\", "\\u2028", "}", '{"type":"done"}']
model_text = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(BREAKS + FORGERIES)),
                      max_size=12).map("".join)


def token(text: str, index: int = 0) -> dict[str, Any]:
    return {"type": "token", "token": text, "index": index}


@FAST
@given(text=model_text, seq=st.integers(0, 2**53))
def test_any_model_text_is_one_event_for_both_parsers(text: str, seq: int) -> None:
    stream = sse.json_event(seq, token(text))
    for parse in (whatwg, splitlines):
        events, retries = parse(stream)
        assert retries == []
        assert len(events) == 1, parse.__name__
        (event,) = events
        assert (event.id, event.event) == (str(seq), "message")
        assert json.loads(event.data) == token(text)


@FAST
@given(texts=st.lists(model_text, min_size=1, max_size=6), ping_text=model_text)
def test_a_whole_stream_reads_the_same_in_both_parsers(texts: list[str], ping_text: str) -> None:
    # As a client reads it: retry and ping first, then the events, pings between, [DONE].
    payloads = [{"type": "start", "stream_id": "s", "model": "m", "resume_token": "t"}]
    payloads += [token(text, i) for i, text in enumerate(texts)]
    payloads.append({"type": "done", "finish_reason": "stop", "usage": None})
    stream = sse.retry_line(1000) + sse.PING
    for seq, payload in enumerate(payloads):
        stream += sse.json_event(seq, payload) + sse.PING
    stream += sse.DONE

    parsed_whatwg = whatwg(stream)
    assert parsed_whatwg == splitlines(stream)
    events, retries = parsed_whatwg
    assert retries == ["1000"]
    assert [e.data for e in events[:-1]] == [sse.dumps(p).decode() for p in payloads]
    assert [json.loads(e.data) for e in events[:-1]] == payloads
    assert [e.id for e in events[:-1]] == [str(seq) for seq in range(len(payloads))]
    # Exactly one [DONE], last; it carries the last id, as WHATWG keeps it.
    assert [e.data for e in events].count("[DONE]") == 1
    assert events[-1].data == "[DONE]"
    assert "".join(json.loads(e.data).get("token", "") for e in events[:-1]) == "".join(texts)


@FAST
@given(payload=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
              st.floats(allow_nan=False, allow_infinity=False), model_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(model_text, inner, max_size=4)),
    max_leaves=12))
def test_dumps_is_one_line_for_every_splitter(payload: Any) -> None:
    line = sse.dumps(payload)
    assert orjson.loads(line) == payload
    assert line.decode("utf-8").splitlines() == [line.decode("utf-8")]
    assert not re.search(rb"[\r\n]", line)


@FAST
@given(data=model_text, id=st.one_of(st.none(), model_text, st.integers(0, 2**63)),
       event=st.one_of(st.none(), model_text))
def test_encode_gives_one_event_with_the_data_for_a_whatwg_parser(
        data: str, id: str | int | None, event: str | None) -> None:
    # encode() takes any text: WHATWG clients get it back with its line breaks as LF.
    events, _ = whatwg(sse.encode(data, id=id, event=event))
    assert len(events) == 1
    assert events[0].data == re.sub(r"\r\n|\r", "\n", data)
    if id is not None:
        assert events[0].id == re.sub(r"[\r\n\x00]", "", str(id))
    expected_type = re.sub(r"[\r\n]", "", event) if event is not None else ""
    assert events[0].event == (expected_type or "message")


@FAST
@given(text=model_text, after=model_text)
def test_a_comment_is_never_an_event_for_a_whatwg_parser(text: str, after: str) -> None:
    events, retries = whatwg(sse.comment(text) + sse.json_event(0, token(after)))
    assert retries == []
    assert [json.loads(e.data) for e in events] == [token(after)]


# --- The request validator: hostile JSON gets an ApiError, never anything else.

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), model_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(model_text, st.sampled_from(
            ["messages", "model", "temperature", "max_tokens", "role", "content", "type",
             "text", "image_url", "url", "name", "tool_calls", "tool_call_id"])),
            inner, max_size=5)),
    max_leaves=20)

urls = st.one_of(model_text, st.sampled_from(
    ["https://a.example/x.png", "data:image/png;base64,AA", "http://10.0.0.1/",
     "file:///etc/passwd", "HTTPS://A", "//a.example", "a:b", ""]))
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(model_text, json_scalars)}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.one_of(st.fixed_dictionaries({"url": urls}),
                                                  json_values)}),
    json_values)
messages = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
                       json_scalars),
     "content": st.one_of(model_text, st.none(), st.lists(parts, max_size=3), json_scalars)},
    optional={"name": json_scalars, "tool_call_id": json_scalars,
              "tool_calls": st.one_of(st.lists(json_values, max_size=2), json_scalars),
              "extra": json_scalars})
# Near-valid requests too, so that the accepting path and the limits are reached often.
good_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": model_text}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": urls})}))
good_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
     "content": st.one_of(model_text, st.lists(good_parts, min_size=1, max_size=3))})
good_requests = st.fixed_dictionaries(
    {"messages": st.lists(good_messages, min_size=1, max_size=10)},
    optional={"model": st.text(min_size=1, max_size=10),
              "temperature": st.floats(-1, 3, allow_nan=False),
              "max_tokens": st.integers(-5, 2000)})
requests = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(messages, max_size=10), json_values)},
    optional={"model": st.one_of(st.text(max_size=300), json_scalars),
              "temperature": json_scalars, "max_tokens": st.one_of(
                  st.integers(-5, 2000), st.integers(), json_scalars),
              "stream": json_scalars})


@FAST
@given(raw=st.one_of(good_requests, requests, json_values))
def test_the_validator_only_ever_refuses_with_an_api_error(raw: Any) -> None:
    try:
        params = parse_chat_request(raw, SETTINGS)
    except ApiError as error:
        assert (error.status, error.type) == (422, "invalid_request")
        assert error.message and "\n" not in error.message
        return
    # Accepted: the messages pass as sent, and every limit held.
    assert params["messages"] is raw["messages"]
    assert 1 <= len(params["messages"]) <= SETTINGS.MAX_MESSAGES
    assert params.get("max_tokens", 1) <= 1000


@FAST
@given(raw=st.one_of(st.lists(good_messages, max_size=10), st.lists(messages, max_size=10),
                     json_values))
def test_check_messages_only_ever_refuses_with_an_api_error(raw: Any) -> None:
    try:
        check_messages(raw, SETTINGS, field="input")
    except ApiError as error:
        assert error.status == 422 and error.message.startswith("input")


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A JSON value whose depth is near the limit, with strings full of brackets."""
    def wrap(value: Any, kinds: list[bool], key: str) -> Any:
        for as_list in kinds:
            value = [key, value] if as_list else {key: value, "]": "{["}
        return value

    return st.builds(wrap, inner, st.lists(st.booleans(), min_size=MAX_JSON_DEPTH - 3,
                                           max_size=MAX_JSON_DEPTH + 3), model_text)


tricky_text = st.text(alphabet='[]{}"\\,:u0 ', max_size=12)


@FAST
@given(value=nested(st.recursive(st.one_of(tricky_text, st.integers(-9, 9)),
                                 lambda inner: st.lists(inner, max_size=3), max_leaves=6)))
def test_the_depth_limit_counts_exactly_the_nesting(value: Any) -> None:
    body = orjson.dumps(value)
    try:
        assert parse_json(body) == value
        assert depth(value) <= MAX_JSON_DEPTH
    except ApiError as error:
        assert error.status == 422
        assert depth(value) > MAX_JSON_DEPTH


@FAST
@given(body=st.one_of(st.binary(max_size=200),
                      st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":",
                                                b"1", b"\xff", b'"a"']),
                               max_size=80).map(b"".join)))
def test_parse_json_only_ever_refuses_with_an_api_error(body: bytes) -> None:
    try:
        parse_json(body)
    except ApiError as error:
        assert error.status in (400, 422)


@FAST
@given(value=st.one_of(
    model_text,
    st.builds(lambda pad, n, zeros, tail: f"{pad}{'0' * zeros}{n}{tail}",
              st.sampled_from(["", " ", "\t"]), st.integers(0, 10**30), st.integers(0, 30),
              st.sampled_from(["", " ", "\n", "x", "\u0663"]))))
def test_last_event_id_is_a_whole_number_or_a_400(value: str) -> None:
    try:
        cursor = parse_last_event_id(value, None)
    except ApiError as error:
        assert error.status == 400
        assert not (value.strip().isascii() and value.strip().isdigit())
        return
    assert cursor is not None and cursor >= 0
    assert cursor == int(value.strip()) or (cursor == 2**62 and int(value.strip()) >= 10**18)
