"""TokenBuffer decisions, with time injected."""

from __future__ import annotations

import pytest

from streaming.buffer import TokenBuffer


def test_first_delta_goes_out_at_once() -> None:
    buf = TokenBuffer(8, 0.025)
    assert buf.push("Hello", now=0.0) == "Hello"
    assert buf.deadline is None


def test_joins_until_max_tokens() -> None:
    buf = TokenBuffer(3, 10.0)
    buf.push("first", 0.0)
    assert buf.push("a", 0.0) is None
    assert buf.push("b", 0.0) is None
    assert buf.push("c", 0.0) == "abc"
    assert buf.deadline is None


@pytest.mark.parametrize("end", [".", "!", "?", "\n", "。", "！", "？", ". ", "?\t"])  # noqa: RUF001
def test_sentence_or_line_end_flushes(end: str) -> None:
    buf = TokenBuffer(8, 10.0)
    buf.push("first", 0.0)
    assert buf.push("one", 0.0) is None
    assert buf.push("two" + end, 0.0) == "one" + "two" + end


def test_no_delta_waits_longer_than_max_delay() -> None:
    buf = TokenBuffer(8, 0.025)
    buf.push("first", 0.0)
    assert buf.push("a", 1.000) is None
    assert buf.deadline == pytest.approx(1.025)
    assert buf.push("b", 1.010) is None
    # The deadline belongs to the oldest waiting delta, not the newest.
    assert buf.deadline == pytest.approx(1.025)
    assert buf.due(1.024) is None
    assert buf.due(1.025) == "ab"
    assert buf.due(2.0) is None


def test_a_push_past_the_deadline_flushes_itself() -> None:
    buf = TokenBuffer(8, 0.025)
    buf.push("first", 0.0)
    buf.push("a", 1.0)
    assert buf.push("b", 1.5) == "ab"


def test_max_tokens_one_turns_joining_off() -> None:
    buf = TokenBuffer(1, 10.0)
    assert [buf.push(t, 0.0) for t in ("a", "b", "c")] == ["a", "b", "c"]


def test_flush_and_empty_deltas() -> None:
    buf = TokenBuffer(8, 10.0)
    assert buf.push("", 0.0) is None
    assert buf.push("first", 0.0) == "first"
    assert buf.flush() is None
    buf.push("x", 0.0)
    buf.push("", 0.0)
    assert buf.flush() == "x"
    assert buf.flush() is None


def test_rejects_zero_max_tokens() -> None:
    with pytest.raises(ValueError):
        TokenBuffer(0, 0.025)


def test_nothing_lost_or_reordered() -> None:
    buf = TokenBuffer(4, 0.05)
    deltas = [f"w{i}" + (". " if i % 7 == 6 else " ") for i in range(100)]
    out: list[str] = []
    t = 0.0
    for d in deltas:
        t += 0.013
        due = buf.due(t)
        if due:
            out.append(due)
        sent = buf.push(d, t)
        if sent:
            out.append(sent)
    rest = buf.flush()
    if rest:
        out.append(rest)
    assert "".join(out) == "".join(deltas)
    assert len(out) < len(deltas)
