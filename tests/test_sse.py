"""The SSE encoder against the WHATWG rules, byte for byte."""

from __future__ import annotations

import pytest

from streaming.formats import sse


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({"data": "hello"}, b"data: hello\n\n", id="one-line"),
        pytest.param({"data": ""}, b"data: \n\n", id="empty-data"),
        pytest.param({"data": "a\nb"}, b"data: a\ndata: b\n\n", id="lf"),
        pytest.param({"data": "a\rb"}, b"data: a\ndata: b\n\n", id="lone-cr"),
        pytest.param({"data": "a\r\nb"}, b"data: a\ndata: b\n\n", id="crlf-is-one-break"),
        pytest.param({"data": "a\n\nb"}, b"data: a\ndata: \ndata: b\n\n", id="blank-line-kept"),
        pytest.param({"data": "a\n"}, b"data: a\ndata: \n\n", id="trailing-lf"),
        pytest.param({"data": "\r\n"}, b"data: \ndata: \n\n", id="only-crlf"),
        # The space after the colon is eaten by the parser: a leading space must survive it.
        pytest.param({"data": " lead"}, b"data:  lead\n\n", id="leading-space"),
        pytest.param({"data": "x", "id": 7}, b"id: 7\ndata: x\n\n", id="id"),
        pytest.param({"data": "x", "id": "a\nb\rc"}, b"id: abc\ndata: x\n\n", id="id-cr-lf"),
        pytest.param({"data": "x", "id": "a\x00b"}, b"id: ab\ndata: x\n\n", id="id-nul"),
        pytest.param({"retry": 1500}, b"retry: 1500\n\n", id="retry"),
        pytest.param({"data": "x", "event": "up\ndate"}, b"event: update\ndata: x\n\n",
                     id="event-one-line"),
        pytest.param({}, b"\n", id="nothing"),
        pytest.param({"data": "é€😀"}, "data: é€😀\n\n".encode(), id="utf-8"),
    ],
)
def test_encode(kwargs: dict[str, object], expected: bytes) -> None:
    assert sse.encode(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("retry", [-1, 1.5, "15", "1e3", True, None.__class__])
def test_retry_must_be_digits(retry: object) -> None:
    with pytest.raises(ValueError, match="retry"):
        sse.encode(retry=retry)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("ping", b": ping\n", id="simple"),
        pytest.param("", b":\n", id="empty"),
        pytest.param("a\r\nb", b": a\n: b\n", id="multi-line"),
        pytest.param("x\u2028data: [DONE]", b": x\n: data: [DONE]\n", id="line-separator"),
        pytest.param("x\x85y\u2029", b": x\n: y\n:\n", id="next-line-trailing"),
    ],
)
def test_comment(text: str, expected: bytes) -> None:
    assert sse.comment(text) == expected


def test_json_event_fast_path_matches_the_general_encoder() -> None:
    payload = {"type": "token", "token": "a\nb\r\u2028"}
    assert sse.json_event(12, payload) == sse.encode(sse.dumps(payload).decode(), id=12)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        pytest.param("a\u2028b", b"a\\u2028b", id="line-separator"),
        pytest.param("a\u2029b", b"a\\u2029b", id="paragraph-separator"),
        pytest.param("a\x85b", b"a\\u0085b", id="next-line"),
        pytest.param("a\x0bb\x0cc\x1cd", b"a\\u000bb\\fc\\u001cd", id="controls"),
        pytest.param("\u2027\u202a\x84\x86", "\u2027\u202a\x84\x86".encode(), id="neighbours"),
    ],
)
def test_data_never_holds_a_line_break_of_any_splitter(text: str, escaped: bytes) -> None:
    event = sse.json_event(0, {"t": text})
    assert event == b'id: 0\ndata: {"t":"' + escaped + b'"}\n\n'
    # Python's splitlines breaks on every line end Unicode knows: still two lines and a blank.
    assert event.decode().splitlines() == event.decode().split("\n")[:-1]


def test_constants() -> None:
    assert sse.encode("[DONE]") == sse.DONE
    assert sse.comment("ping") == sse.PING
    assert sse.retry_line(1000) == b"retry: 1000\n"
