"""Request validation: what is accepted, and the status, type and field named otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Service, openai_env, sim_prompt
from sseclient import collect, request, start, text_of

from streaming.errors import ApiError
from streaming.settings import Settings
from streaming.validation import (
    check_max_tokens,
    check_messages,
    parse_chat_request,
    parse_json,
    parse_last_event_id,
)

USER = {"role": "user", "content": "Hi"}


def parse(raw: Any, allowed: list[str] | None = None, **settings: Any) -> dict[str, Any]:
    return parse_chat_request(raw, Settings(LLM_MODEL="default-model",
                                            ALLOWED_MODELS=",".join(allowed or []), **settings))


def refusal(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


def test_minimal_request_gets_the_default_model() -> None:
    assert parse({"messages": [USER]}) == {"model": "default-model", "messages": [USER]}


def test_messages_pass_through_exactly() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "No emoji."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}},
        ], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1"},
    ]
    out = parse({"messages": messages, "model": "m", "temperature": 0, "max_tokens": 5})
    assert out == {"model": "m", "messages": messages, "temperature": 0, "max_tokens": 5}
    assert out["messages"] is messages


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param([], "JSON object", id="not-an-object"),
        pytest.param({}, "messages", id="no-messages"),
        pytest.param({"messages": []}, "messages", id="empty-messages"),
        pytest.param({"messages": "hi"}, "messages", id="messages-not-list"),
        pytest.param({"messages": [USER], "stream": True}, "'stream'", id="unknown-top-field"),
        pytest.param({"messages": [USER], "temperature": 2.5}, "temperature", id="temp-high"),
        pytest.param({"messages": [USER], "temperature": -0.1}, "temperature", id="temp-low"),
        pytest.param({"messages": [USER], "temperature": "1"}, "temperature", id="temp-string"),
        pytest.param({"messages": [USER], "temperature": True}, "temperature", id="temp-bool"),
        pytest.param({"messages": [USER], "max_tokens": 0}, "max_tokens", id="max-tokens-0"),
        pytest.param({"messages": [USER], "max_tokens": 1.5}, "max_tokens", id="max-tokens-float"),
        pytest.param({"messages": [USER], "model": ""}, "model", id="model-empty"),
        pytest.param({"messages": [USER], "model": 3}, "model", id="model-number"),
        pytest.param({"messages": [{"role": "root", "content": "x"}]}, "messages.0.role",
                     id="bad-role"),
        pytest.param({"messages": [{"content": "x"}]}, "messages.0.role", id="no-role"),
        pytest.param({"messages": [{"role": "user"}]}, "messages.0.content", id="no-content"),
        pytest.param({"messages": [{"role": "user", "content": None}]}, "content",
                     id="null-content-user"),
        pytest.param({"messages": [{"role": "assistant", "content": None}]}, "content",
                     id="null-content-no-tool-calls"),
        pytest.param({"messages": [{"role": "user", "content": []}]}, "messages.0.content",
                     id="empty-parts"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
                     "messages.0.content", id="unknown-part"),
        pytest.param({"messages": [{"role": "user", "content": 5}]}, "messages.0.content",
                     id="content-number"),
        pytest.param({"messages": [{"role": "user", "content": "x", "extra": 1}]},
                     "messages.0.extra", id="unknown-message-field"),
        pytest.param({"messages": [USER, {"role": "user", "content": "x", "name": 1}]},
                     "messages.1.name", id="name-not-string"),
    ],
)
def test_schema_violations_are_422_naming_the_field(raw: Any, names: str) -> None:
    with pytest.raises(ApiError) as info:
        parse(raw)
    assert info.value.status == 422
    assert info.value.type == "invalid_request"
    assert names in info.value.message


def test_allowed_models() -> None:
    assert parse({"messages": [USER], "model": "a"}, allowed=["a", "b"])["model"] == "a"
    with pytest.raises(ApiError) as info:
        parse({"messages": [USER], "model": "c"}, allowed=["a", "b"])
    assert info.value.status == 422 and "model" in info.value.message
    # The default model is checked too.
    with pytest.raises(ApiError):
        parse({"messages": [USER]}, allowed=["a"])


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b"NaN", b"\xff\xfe"])
def test_invalid_json_is_400(body: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_json(body)
    assert (info.value.status, info.value.type) == (400, "invalid_json")


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        (None, None, None),
        ("0", None, 0),
        ("41", None, 41),
        (" 7 ", None, 7),
        (None, "3", 3),
        ("5", "9", 5),  # the header wins, as a browser's EventSource sends it
        ("9" * 40, None, 2**62),  # still a whole number: past the end of any stream
        ("0" * 40 + "7", None, 7),  # leading zeros change nothing
        ("0" * 19, None, 0),
    ],
)
def test_last_event_id(header: str | None, query: str | None, expected: int | None) -> None:
    assert parse_last_event_id(header, query) == expected


@pytest.mark.parametrize("value", ["", "-1", "1.5", "abc", "1e3", "+3", "0x10", "١٢"])
def test_last_event_id_must_be_a_whole_number(value: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_last_event_id(value, None)
    assert info.value.status == 400


# --- Limits (PROTOCOL.md, "Starting a stream": MAX_MESSAGES, MAX_OUTPUT_TOKENS, depth 32,
# IMAGE_URL_SCHEMES).


def image(url: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                        {"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("raw", "settings", "status", "names"),
    [
        pytest.param({"messages": [USER] * 3}, {"MAX_MESSAGES": 3}, None, None,
                     id="messages-at-max"),
        pytest.param({"messages": [USER] * 4}, {"MAX_MESSAGES": 3}, 422, "messages: at most 3",
                     id="messages-over-max"),
        pytest.param({"messages": [USER] * 501}, {}, 422, "messages: at most 500",
                     id="messages-over-default-max"),
        # Counted before the schema: an oversized list of junk is refused for its length.
        pytest.param({"messages": [7] * 4}, {"MAX_MESSAGES": 3}, 422, "messages: at most 3",
                     id="messages-over-max-before-schema"),
        pytest.param({"messages": [USER], "max_tokens": 100}, {"MAX_OUTPUT_TOKENS": 100}, None,
                     None, id="max-tokens-at-cap"),
        pytest.param({"messages": [USER], "max_tokens": 101}, {"MAX_OUTPUT_TOKENS": 100}, 422,
                     "max_tokens: at most 100", id="max-tokens-over-cap"),
        pytest.param({"messages": [USER], "max_tokens": 10**9}, {}, None, None,
                     id="max-tokens-uncapped-by-default"),
        pytest.param({"messages": [USER]}, {"MAX_OUTPUT_TOKENS": 1}, None, None,
                     id="max-tokens-absent-with-cap"),
    ],
)
def test_request_caps(raw: Any, settings: dict[str, Any], status: int | None,
                      names: str | None) -> None:
    if status is None:
        assert parse(raw, **settings)["messages"] == raw["messages"]
        return
    error = refusal(parse, raw, **settings)
    assert (error.status, error.type) == (status, "invalid_request")
    assert names is not None and names in error.message


IMAGE_FIELD = "messages.0.content.1.image_url.url"


@pytest.mark.parametrize(
    ("url", "schemes", "allowed"),
    [
        pytest.param("https://img.example/a.png", None, True, id="https"),
        pytest.param("HTTPS://img.example/a.png", None, True, id="https-upper-case"),
        pytest.param("data:image/png;base64,AAAA", None, True, id="data"),
        pytest.param("DaTa:image/png;base64,AAAA", None, True, id="data-mixed-case"),
        pytest.param("http://169.254.169.254/latest/meta-data", None, False, id="http"),
        pytest.param("file:///etc/passwd", None, False, id="file"),
        pytest.param("ftp://img.example/a.png", None, False, id="ftp"),
        pytest.param("gopher://127.0.0.1:6379/_FLUSHALL", None, False, id="gopher"),
        pytest.param("javascript:alert(1)", None, False, id="javascript"),
        pytest.param("//img.example/a.png", None, False, id="scheme-relative"),
        pytest.param("/etc/passwd", None, False, id="path-only"),
        pytest.param("a.png", None, False, id="no-scheme"),
        pytest.param("", None, False, id="empty"),
        pytest.param(" https://img.example/a.png", None, False, id="leading-space"),
        pytest.param("https", None, False, id="scheme-word-without-colon"),
        pytest.param("http://img.example/a.png", "http,https", True, id="http-when-allowed"),
        pytest.param("data:image/png;base64,AAAA", "https", False, id="data-when-not-allowed"),
        pytest.param("https://img.example/a.png", "HTTPS", True, id="setting-upper-case"),
    ],
)
def test_image_url_schemes(url: str, schemes: str | None, allowed: bool) -> None:
    settings = {} if schemes is None else {"IMAGE_URL_SCHEMES": schemes}
    raw = {"messages": [image(url)]}
    if allowed:
        assert parse(raw, **settings)["messages"] == raw["messages"]
        return
    error = refusal(parse, raw, **settings)
    assert (error.status, error.type) == (422, "invalid_request")
    assert error.message.startswith(IMAGE_FIELD + ": ")


def test_image_url_field_names_the_message_and_part() -> None:
    messages = [USER, {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://ok.example/a.png"}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": "file:///x"}},
    ]}]
    error = refusal(parse, {"messages": messages})
    assert "messages.1.content.2.image_url.url: scheme 'file'" in error.message


def nest(depth: int, inner: bytes = b"1", kinds: bytes = b"[") -> bytes:
    """`depth` containers around `inner`, cycling through arrays and objects."""
    opened = b""
    closed = b""
    for i in range(depth):
        if kinds[i % len(kinds)] == ord("["):
            opened += b"["
            closed = b"]" + closed
        else:
            opened += b'{"k":'
            closed = b"}" + closed
    return opened + inner + closed


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(nest(32), None, id="arrays-32"),
        pytest.param(nest(33), 422, id="arrays-33"),
        pytest.param(nest(32, kinds=b"{"), None, id="objects-32"),
        pytest.param(nest(33, kinds=b"{"), 422, id="objects-33"),
        pytest.param(nest(33, kinds=b"[{"), 422, id="mixed-33"),
        # Past orjson's own limit (1024), which would otherwise be a 400.
        pytest.param(nest(5000), 422, id="arrays-5000"),
        # Depth is the deepest point, not the number of containers.
        pytest.param(b"[" + b",".join([nest(20)] * 50) + b"]", None, id="many-shallow"),
        pytest.param(b'{"a":' + nest(31) + b',"b":' + nest(32) + b"}", 422,
                     id="deep-second-member"),
        # Brackets inside strings are text, also after escaped quotes and backslashes.
        pytest.param(b'["' + b"[" * 100 + b'"]', None, id="brackets-in-string"),
        pytest.param(b'["\\\\\\"' + b"{" * 100 + b'"]', None, id="brackets-after-escapes"),
        pytest.param(b'["\\\\"' + b"," + nest(33) + b"]", 422, id="deep-after-escaped-backslash"),
        pytest.param(b'["\\u005b' + b"[" * 40 + b'"]', None, id="brackets-after-unicode-escape"),
        # Not JSON: too deep is still named as such, else it is a 400.
        pytest.param(b"[" * 33, 422, id="unclosed-33"),
        pytest.param(b"[" * 10, 400, id="unclosed-10"),
        pytest.param(b'"' + b"[" * 40, 400, id="unclosed-string"),
    ],
)
def test_json_depth(body: bytes, status: int | None) -> None:
    if status is None:
        parse_json(body)
        return
    error = refusal(parse_json, body)
    assert error.status == status
    if status == 422:
        assert error.type == "invalid_request"
        assert "deeper than 32" in error.message


def test_json_depth_is_checked_before_anything_else_is_parsed() -> None:
    # Bodies over MAX_BODY_BYTES of brackets: a recursive check would overflow the stack, a
    # quadratic one would take minutes.
    assert refusal(parse_json, b"[" * 300_000 + b"]" * 300_000).status == 422
    assert refusal(parse_json, b'{"a":' * 100_000).status == 422


@pytest.mark.parametrize(
    ("messages", "names"),
    [
        pytest.param(None, "input: must be a list", id="not-a-list"),
        pytest.param({"role": "user"}, "input: must be a list", id="an-object"),
        pytest.param([], "input: must hold at least one", id="empty"),
        pytest.param([USER] * 3, "input: at most 2 messages", id="too-many"),
        pytest.param([USER, {"role": "bot", "content": "x"}], "input.1.role", id="bad-role"),
        pytest.param([image("file:///x")], "input.0.content.1.image_url.url", id="bad-image"),
    ],
)
def test_check_messages_names_the_callers_field(messages: Any, names: str) -> None:
    # Other wire formats call it on their own field (PROTOCOL.md, "Other wire formats").
    error = refusal(check_messages, messages, Settings(MAX_MESSAGES=2), field="input")
    assert (error.status, error.type) == (422, "invalid_request")
    assert error.message.startswith(names)


def test_check_messages_accepts_what_the_native_request_accepts() -> None:
    check_messages([USER, image("https://img.example/a.png")], Settings())


def test_check_max_tokens_names_the_callers_field() -> None:
    settings = Settings(MAX_OUTPUT_TOKENS=10)
    check_max_tokens(10, settings, field="max_completion_tokens")
    check_max_tokens(None, settings)
    check_max_tokens(10**6, Settings())
    error = refusal(check_max_tokens, 11, settings, field="max_completion_tokens")
    assert (error.status, error.message) == (422, "max_completion_tokens: at most 10")


# --- The same limits over the wire: refused before the upstream is asked.


@pytest.fixture(scope="module")
def limited(upstream: Any) -> Iterator[Service]:
    service = Service(openai_env(upstream, MAX_MESSAGES=3, MAX_OUTPUT_TOKENS=100,
                                 IMAGE_URL_SCHEMES="https"))
    yield service
    service.stop()


def http_image(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param(json.dumps({"messages": sim_prompt(tokens=["x"]) * 4}).encode(),
                     "messages: at most 3", id="too-many-messages"),
        pytest.param(json.dumps({"messages": sim_prompt(tokens=["x"]), "max_tokens": 101}).encode(),
                     "max_tokens: at most 100", id="max-tokens"),
        pytest.param(json.dumps({"messages": http_image("http://169.254.169.254/")}).encode(),
                     "messages.0.content.0.image_url.url", id="image-http"),
        pytest.param(json.dumps({"messages": http_image("data:image/png;base64,AA")}).encode(),
                     "messages.0.content.0.image_url.url", id="image-data-not-listed"),
        pytest.param(b'{"messages":' + nest(40) + b"}", "deeper than 32", id="deep-json"),
        pytest.param(b'{"messages":' + nest(5000) + b"}", "deeper than 32", id="very-deep-json"),
    ],
)
def test_limits_over_the_wire(limited: Service, sim: Any, body: bytes, names: str) -> None:
    status, _, answer = request(limited.url, "POST", "/api/chat/stream", body=body)
    assert status == 422
    error = json.loads(answer)["error"]
    assert error["type"] == "invalid_request" and names in error["message"]
    assert sim.requests == []


def test_within_the_limits_over_the_wire(limited: Service, sim: Any) -> None:
    messages = sim_prompt(tokens=["fine"]) * 3
    messages[0] = {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://img.example/a.png"}}]}
    events = collect(start(limited.url, {"messages": messages, "max_tokens": 100}))
    assert text_of(events) == "fine"
    assert len(sim.requests) == 1
