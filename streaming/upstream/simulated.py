"""The built-in simulated provider: realistic pacing and Markdown, no key, no network.

It lets the demo page and a first deployment work out of the box, and it says plainly that it
is simulated, so nobody mistakes its answers for a model's.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .provider import CONTENT, FINISH, USAGE, Item

_ANSWER = """\
> **Simulated provider.** No model was called: set `OPENAI_API_KEY` (and `OPENAI_BASE_URL` \
for vLLM, Ollama, llama.cpp or LiteLLM) to stream real answers.

## What you asked

You said: *{prompt}*

## How this answer reached you

1. The service opened a stream and sent its first bytes at once.
2. A producer greenlet read the (simulated) upstream, delta by delta.
3. Deltas were joined into token events at sentence ends, or after {delay} ms at most.
4. Each event carries an `id`, so a dropped connection resumes where it was.

- Heartbeat comments keep proxies from closing a quiet stream.
- **Stop** cancels the generation on the server.

```python
def relay(deltas):
    for delta in deltas:
        yield f"data: {{delta}}\\n\\n"
```

| part | role |
| --- | --- |
| gunicorn + gevent | many streams per worker |
| buffer | fewer, fuller events |

That is all: this text is the same each time, only your words change.
"""

# Words with their trailing spaces, and line ends on their own: roughly how models tokenize.
_TOKEN = re.compile(r"\n|[^\S\n]*[^\s]+[^\S\n]*")


class SimulatedProvider:
    """Streams a fixed Markdown answer about the request at `tokens_per_second`."""

    name = "simulated"

    def __init__(self, tokens_per_second: float, buffer_delay_ms: float,
                 seed: int | None = None) -> None:
        self._interval = 1.0 / tokens_per_second
        self._delay_ms = buffer_delay_ms
        self._random = random.Random(seed)

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        pass

    @contextmanager
    def open(self, request: dict[str, Any]) -> Iterator[_SimulatedStream]:
        prompt = _last_user_text(request.get("messages", []))
        text = _ANSWER.format(prompt=_one_line(prompt) or "(nothing)",
                              delay=f"{self._delay_ms:g}")
        tokens = _TOKEN.findall(text)
        # The newer name wins, as OpenAI's API reads them.
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        finish = "stop"
        if limit is not None and limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        stream = _SimulatedStream(tokens, finish, self._interval, self._random,
                                  prompt_tokens=sum(len(_TOKEN.findall(str(m.get("content"))))
                                                    for m in request.get("messages", [])))
        try:
            yield stream
        finally:
            stream.close()


class _SimulatedStream:
    def __init__(self, tokens: list[str], finish: str, interval: float,
                 rng: random.Random, prompt_tokens: int) -> None:
        self._tokens = tokens
        self._finish = finish
        self._interval = interval
        self._random = rng
        self._prompt_tokens = prompt_tokens
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def __iter__(self) -> Iterator[list[Item]]:
        # A model thinks before its first token; then tokens come at a jittered pace.
        if self._closed.wait(self._interval * 6):
            return
        for token in self._tokens:
            yield [(CONTENT, token)]
            if self._closed.wait(self._interval * self._random.uniform(0.5, 1.5)):
                return
        usage = {
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": len(self._tokens),
            "total_tokens": self._prompt_tokens + len(self._tokens),
        }
        yield [(FINISH, self._finish), (USAGE, usage)]


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _one_line(text: str, limit: int = 200) -> str:
    # The prompt is echoed inside emphasis: keep it to one line of plain words.
    flat = " ".join(text.split())
    flat = re.sub(r"[*_`<>\[\]]", "", flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
