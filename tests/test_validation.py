"""Request validation: what is accepted, and the status, type and field named otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from streaming.errors import ApiError
from streaming.settings import Settings
from streaming.validation import parse_chat_request, parse_json, parse_last_event_id

USER = {"role": "user", "content": "Hi"}


def parse(raw: Any, allowed: list[str] | None = None) -> dict[str, Any]:
    settings = Settings(LLM_MODEL="default-model", ALLOWED_MODELS=",".join(allowed or []))
    return parse_chat_request(raw, settings)


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
    ],
)
def test_last_event_id(header: str | None, query: str | None, expected: int | None) -> None:
    assert parse_last_event_id(header, query) == expected


@pytest.mark.parametrize("value", ["", "-1", "1.5", "abc", "1e3", "+3", "0x10", "١٢"])
def test_last_event_id_must_be_a_whole_number(value: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_last_event_id(value, None)
    assert info.value.status == 400
