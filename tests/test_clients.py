"""The SSE client libraries people use, each as its README shows, against the real service on
the OpenAI-wire simulator (issue 7, "Kind to the client libraries people use").

Python: httpx-sse, sseclient-py, requests-sse. Node (tests/js/sse_clients.mjs): npm
`eventsource` (v5), `eventsource-parser` (v4) over fetch, `@microsoft/fetch-event-source`.
Chromium: its own `EventSource`, on the demo page's origin.

For each: the events the application is handed are exactly the stream's events (none empty
from the opening `retry:` line or the `: ping` heartbeats, none twice), across a cut and a
resume; an EventSource that is never closed stops at the 204 after the end; a library that
re-sends a dropped POST costs a second generation unless the POST carries an Idempotency-Key.
`test_old_wire_*` shows what the blank line after a heartbeat did to each library, so the
comparisons here are known to catch it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests
from browser import CHROMIUM, launch
from conftest import ROOT, TESTS, Service, openai_env, sim_prompt
from httpx_sse import connect_sse
from requests_sse import EventSource, InvalidStatusCodeError
from sseclient import collect, open_stream, request
from tcpproxy import TCPProxy

NODE = shutil.which("node") or "node"
KEY = "client-lib-key-0123456789"
WORDS = [f"w{i} " for i in range(30)]
TEXT = "".join(WORDS)
# Pings before the first token (HEARTBEAT_INTERVAL below is 0.1 s), then one token event a
# delta: about two seconds a stream, long enough to cut it in the middle.
SCRIPT: dict[str, Any] = {"tokens": WORDS, "first_delay": 0.6, "delay": 0.04}
CUT_AFTER = 5  # token events seen before the connection is cut
DROPPED = (httpx.TransportError, requests.RequestException)  # what a cut raises


def _sseclient_py() -> ModuleType:
    """sseclient-py's `sseclient` module: tests/sseclient.py (our strict client) holds that
    import name here, so load the package from where it is installed."""
    path = importlib.metadata.distribution("sseclient-py").locate_file("sseclient/__init__.py")
    spec = importlib.util.spec_from_file_location("sseclient_py", str(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SSEClient = _sseclient_py().SSEClient


def chat_body(**script: Any) -> dict[str, Any]:
    return {"messages": sim_prompt(**{**SCRIPT, **script})}


# --- the service, and what it saw -----------------------------------------------------------


@pytest.fixture(scope="module")
def service(upstream: Any) -> Iterator[Service]:
    svc = Service(openai_env(upstream, HEARTBEAT_INTERVAL=0.1, RESUME_GRACE=10, STREAM_TTL=60))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def keyed_service(upstream: Any) -> Iterator[Service]:
    svc = Service(openai_env(upstream, API_KEYS=KEY, HEARTBEAT_INTERVAL=0.1, RESUME_GRACE=10,
                             STREAM_TTL=60))
    yield svc
    svc.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # the service updates its log and metrics when a response ends


def heartbeats(base: str) -> float:
    _, _, body = request(base, "GET", "/metrics")
    match = re.search(rb"^llm_heartbeats_total (\S+)$", body, re.M)
    return float(match.group(1)) if match else 0.0


def stream_gets(svc: Service, stream_id: str) -> list[int]:
    """The statuses of the GETs on the stream's path, from the service's access log."""
    pattern = rf'"GET /api/chat/stream/{re.escape(stream_id)} HTTP/1\.1" (\d+)'
    return [int(status) for status in re.findall(pattern, svc.log())]


def wire(base: str, stream_id: str) -> list[tuple[str | None, str]]:
    """The stream's events as they are on the wire (our strict client, from seq 0)."""
    return [(e.id, e.data) for e in collect(open_stream(f"{base}/api/chat/stream/{stream_id}"))]


def start_stream(base: str, body: dict[str, Any], headers: dict[str, str] | None = None,
                 ) -> dict[str, Any]:
    """POST a chat and leave once the start event is in (the stream runs on): for the
    EventSources, which cannot POST."""
    stream = open_stream(f"{base}/api/chat/stream", "POST", body, headers)
    try:
        assert stream.status == 200
        start = next(stream.events()).json
    finally:
        stream.close()
    assert start["type"] == "start"
    return start


def assert_same_events(app: list[tuple[str | None, str]],
                       on_wire: list[tuple[str | None, str]]) -> None:
    """What the application was handed is the stream's events, in order, each once, with its
    id; `[DONE]` may be missing (an app that closes on the terminal event never sees it)."""
    datas = [data for _, data in app]
    expected = [data for _, data in on_wire]
    assert "" not in datas, "an empty event reached the application"
    if datas and datas[-1] == "[DONE]":
        datas = datas[:-1]
    assert datas == expected[:-1] and expected[-1] == "[DONE]"
    wire_ids = [event_id for event_id, _ in on_wire[:-1]]
    assert [event_id for event_id, data in app if data != "[DONE]"] == wire_ids
    events = [json.loads(data) for data in datas]  # every event but [DONE] is JSON
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert "".join(e["token"] for e in events if e["type"] == "token") == TEXT


def token_count(app: list[tuple[str | None, str]]) -> int:
    return sum(1 for _, data in app if '"type":"token"' in data)


# --- Python: each library's basic usage, yielding (id, data) as the app gets them -----------


def iter_httpx_sse(url: str, body: Any = None, headers: dict[str, str] | None = None,
                   ) -> Iterator[tuple[str | None, str]]:
    with httpx.Client(timeout=10) as client, connect_sse(
            client, "GET" if body is None else "POST", url, json=body,
            headers=dict(headers or {})) as source:
        for sse in source.iter_sse():
            yield sse.id, sse.data


def iter_sseclient_py(url: str, body: Any = None, headers: dict[str, str] | None = None,
                      ) -> Iterator[tuple[str | None, str]]:
    response = requests.request("GET" if body is None else "POST", url, json=body, stream=True,
                                timeout=10, headers={"Accept": "text/event-stream",
                                                     **(headers or {})})
    client = SSEClient(response)
    try:
        for event in client.events():
            yield event.id, event.data
    finally:
        client.close()


def iter_requests_sse(url: str, body: Any = None, headers: dict[str, str] | None = None,
                      ) -> Iterator[tuple[str | None, str]]:
    # An EventSource: it reconnects by itself (with Last-Event-Id) when the response breaks or
    # ends, re-sending the same request, POST and body included.
    with EventSource(url, method="GET" if body is None else "POST", json=body, timeout=10,
                     headers=dict(headers or {})) as source:
        for event in source:
            yield event.last_event_id, event.data


PY_LIBS = {"httpx-sse": iter_httpx_sse, "sseclient-py": iter_sseclient_py,
           "requests-sse": iter_requests_sse}


def read_to_done(events: Iterator[tuple[str | None, str]], cut: Callable[[], Any] | None = None,
                 app: list[tuple[str | None, str]] | None = None,
                 ) -> list[tuple[str | None, str]]:
    """Every event until [DONE] (included) into `app`; `cut()` once CUT_AFTER token events are
    in; then the library is closed."""
    app = [] if app is None else app
    with contextlib.closing(events):  # type: ignore[type-var]
        for event in events:
            app.append(event)
            if cut is not None and '"type":"token"' in event[1] and token_count(app) == CUT_AFTER:
                cut()
            if event[1] == "[DONE]":
                break
    return app


@pytest.mark.parametrize("lib", list(PY_LIBS))
def test_python_library_gets_exactly_the_streams_events(service: Service, sim: Any,
                                                        lib: str) -> None:
    pings = heartbeats(service.url)
    app = read_to_done(PY_LIBS[lib](f"{service.url}/api/chat/stream", chat_body()))
    stream_id = json.loads(app[0][1])["stream_id"]
    # The stream carried its opening retry line and heartbeats (no blank line after them).
    wait_until(lambda: heartbeats(service.url) - pings >= 3)
    assert_same_events(app, wire(service.url, stream_id))
    assert len(sim.requests) == 1


@pytest.mark.parametrize("lib", ["httpx-sse", "sseclient-py"])
def test_python_library_resumes_with_last_event_id(service: Service, sim: Any,
                                                   lib: str) -> None:
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        app: list[tuple[str | None, str]] = []
        with pytest.raises(DROPPED):
            read_to_done(PY_LIBS[lib](f"{proxy.url}/api/chat/stream", chat_body()), proxy.cut,
                         app)
        stream_id = json.loads(app[0][1])["stream_id"]
        last_id = app[-1][0]
        assert last_id is not None and token_count(app) >= CUT_AFTER
        app += read_to_done(PY_LIBS[lib](f"{proxy.url}/api/chat/stream/{stream_id}",
                                         headers={"Last-Event-ID": last_id}))
    assert_same_events(app, wire(service.url, stream_id))
    assert len(sim.requests) == 1


def test_requests_sse_follows_a_get_and_resumes_by_itself(service: Service, sim: Any) -> None:
    start = start_stream(service.url, chat_body())
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        app = read_to_done(iter_requests_sse(f"{proxy.url}/api/chat/stream/{start['stream_id']}"),
                           proxy.cut)
        assert proxy.cuts == 1 and proxy.accepted == 2  # one reconnection, by the library
    assert_same_events(app, wire(service.url, start["stream_id"]))
    assert stream_gets(service, start["stream_id"])[:2] == [200, 200]


# --- Node -----------------------------------------------------------------------------------


class NodeClient:
    """tests/js/sse_clients.mjs in Node; its JSON lines read as they come."""

    def __init__(self, **config: Any) -> None:
        self.proc = subprocess.Popen([NODE, str(TESTS / "js" / "sse_clients.mjs"),
                                      json.dumps(config)], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(json.loads(line))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if item is None:
                raise AssertionError(f"node ended first: {self.close()}")
            self.lines.append(item)
            if predicate(item):
                return item

    def finish(self, timeout: float = 20.0) -> list[dict[str, Any]]:
        self.wait_for(lambda item: item["event"] == "end", timeout)
        assert self.proc.wait(10) == 0
        errors = self.close()
        assert "failed:" not in json.dumps(self.lines), errors
        return self.lines

    def close(self) -> str:
        """Its error output, once it has ended (killed if need be); closes its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        err = "" if self.proc.stderr.closed else self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err

    def messages(self) -> list[tuple[str | None, str]]:
        return [(m["id"], m["data"]) for m in self.lines if m["event"] == "message"]

    def requests(self) -> list[dict[str, Any]]:
        return [m for m in self.lines if m["event"] == "request"]

    def tokens_seen(self, n: int) -> Callable[[dict[str, Any]], bool]:
        return lambda item: item["event"] == "message" and token_count(self.messages()) >= n


@pytest.fixture
def node() -> Iterator[Callable[..., NodeClient]]:
    """Start Node clients; whatever the test's outcome, none outlives it."""
    clients: list[NodeClient] = []

    def start(**config: Any) -> NodeClient:
        clients.append(NodeClient(**config))
        return clients[-1]

    yield start
    for client in clients:
        client.close()


def node_config(lib: str, base: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    url = f"{base}/api/chat/stream"
    if lib == "eventsource":  # GET only: the app POSTs, the EventSource follows
        return {"lib": lib, "url": url, "start": {"url": url, "body": body}, **extra}
    return {"lib": lib, "url": url, "body": body, **extra}


def app_events(lib: str, messages: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    if lib == "fetch-event-source":  # it reports no id as "" (the others: None, or the last)
        return [(i if i != "" else None, d) for i, d in messages]
    return messages


JS_LIBS = ["eventsource", "eventsource-parser", "fetch-event-source"]


@pytest.mark.parametrize("lib", JS_LIBS)
def test_node_library_gets_exactly_the_streams_events(service: Service, sim: Any,
                                                      lib: str, node: Any) -> None:
    pings = heartbeats(service.url)
    client = node(**node_config(lib, service.url, chat_body()))
    lines = client.finish()
    app = app_events(lib, client.messages())
    stream_id = json.loads(app[0][1])["stream_id"]
    wait_until(lambda: heartbeats(service.url) - pings >= 3)
    assert_same_events(app, wire(service.url, stream_id))
    assert not [m for m in lines if m["event"] == "error"]
    assert len(client.requests()) == 1 and len(sim.requests) == 1


@pytest.mark.parametrize("lib", ["eventsource", "eventsource-parser"])
def test_node_library_resumes_with_last_event_id(service: Service, sim: Any, lib: str,
                                                 node: Any) -> None:
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        client = node(**node_config(lib, proxy.url, chat_body(), resume=True))
        client.wait_for(client.tokens_seen(CUT_AFTER))
        assert proxy.cut() >= 1
        client.finish()
    app = app_events(lib, client.messages())
    stream_id = json.loads(app[0][1])["stream_id"]
    assert_same_events(app, wire(service.url, stream_id))
    # The second request asked for what followed the last event the app had.
    first, resumed = client.requests()[-2:]
    assert first["lastEventId"] is None and first["url"].endswith("/api/chat/stream" + (
        f"/{stream_id}" if lib == "eventsource" else ""))
    before_cut = [m for m in client.lines[:client.lines.index(resumed)]
                  if m["event"] == "message"]
    assert resumed["method"] == "GET" and resumed["lastEventId"] == before_cut[-1]["id"]
    assert len(sim.requests) == 1


def test_npm_eventsource_never_closed_stops_at_the_204(service: Service, sim: Any,
                                                       node: Any) -> None:
    client = node(**node_config("eventsource", service.url, chat_body(first_delay=0),
                                closeOnEnd=False))
    lines = client.finish()
    app = client.messages()
    stream_id = json.loads(app[0][1])["stream_id"]
    assert_same_events(app, wire(service.url, stream_id))
    # After [DONE] it reconnected once with the terminal event's id, got 204 and closed.
    assert [r["lastEventId"] for r in client.requests()] == [None, app[-2][0]]
    errors = [m for m in lines if m["event"] == "error"]
    assert [(e["code"], e["readyState"]) for e in errors] == [(None, 0), (204, 2)]
    wait_until(lambda: len(stream_gets(service, stream_id)) == 3)  # and our wire() read
    assert stream_gets(service, stream_id)[:2] == [200, 204]


# --- Re-sent POSTs: fetch-event-source and requests-sse retry a dropped POST -----------------


def resent_post_fetch_event_source(url: str, body: dict[str, Any], headers: dict[str, str],
                                   proxy: TCPProxy, node: Any) -> list[tuple[str | None, str]]:
    client = node(lib="fetch-event-source", url=url, body=body, headers=headers)
    client.wait_for(client.tokens_seen(CUT_AFTER))
    assert proxy.cut() >= 1
    client.finish()
    posts = client.requests()
    assert [p["method"] for p in posts] == ["POST", "POST"]  # its onerror default: retry
    assert posts[1]["lastEventId"] is not None  # with the last id it had
    return app_events("fetch-event-source", client.messages())


def resent_post_requests_sse(url: str, body: dict[str, Any], headers: dict[str, str],
                             proxy: TCPProxy, node: Any) -> list[tuple[str | None, str]]:
    return read_to_done(iter_requests_sse(url, body, headers), proxy.cut)


RESENDERS = {"fetch-event-source": resent_post_fetch_event_source,
             "requests-sse": resent_post_requests_sse}


@pytest.mark.parametrize("lib", list(RESENDERS))
def test_a_resent_post_with_an_idempotency_key_attaches_to_its_stream(
        service: Service, sim: Any, lib: str, node: Any) -> None:
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        app = RESENDERS[lib](f"{proxy.url}/api/chat/stream", chat_body(),
                             {"Idempotency-Key": str(uuid.uuid4())}, proxy, node)
    assert_same_events(app, wire(service.url, json.loads(app[0][1])["stream_id"]))
    assert len(sim.requests) == 1  # one generation


@pytest.mark.parametrize("lib", list(RESENDERS))
def test_a_resent_post_without_a_key_pays_for_a_second_generation(
        service: Service, sim: Any, lib: str, node: Any) -> None:
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        app = RESENDERS[lib](f"{proxy.url}/api/chat/stream", chat_body(), {}, proxy, node)
    starts = [json.loads(d) for _, d in app if '"type":"start"' in d]
    assert len(starts) == 2 and starts[0]["stream_id"] != starts[1]["stream_id"]
    assert sim.wait_for_requests(2, 5)
    # The app got the first answer's beginning, then the second answer whole.
    text = "".join(json.loads(d)["token"] for _, d in app if '"type":"token"' in d)
    assert text != TEXT and text.endswith(TEXT)


def test_fetch_event_source_retries_a_refusal_by_default(service: Service, sim: Any,
                                                         node: Any) -> None:
    """Its default onopen takes any answer that is not an event stream (a 422 here, a 204 on a
    resume after the end) for a network error, and its default onerror retries every second,
    for ever: an app passes an onopen that throws a fatal error for those."""
    client = node(lib="fetch-event-source", url=f"{service.url}/api/chat/stream",
                  body={"messages": []}, maxErrors=2)
    lines = client.finish()
    assert [(m["event"], m.get("status")) for m in lines if m["event"] != "error"] == [
        ("request", None), ("response", 422), ("request", None), ("response", 422), ("end", None)]
    assert client.messages() == [] and sim.requests == []


def test_requests_sse_left_running_re_posts_and_the_key_gets_204(service: Service,
                                                                  sim: Any) -> None:
    """An app that does not stop at the terminal event: requests-sse reconnects when the
    response ends, with the POST; the Idempotency-Key turns that into a 204 (no new answer)."""
    body = chat_body(first_delay=0, delay=0)
    app: list[tuple[str | None, str]] = []
    with pytest.raises(InvalidStatusCodeError) as refused:
        for event in iter_requests_sse(f"{service.url}/api/chat/stream", body,
                                       {"Idempotency-Key": str(uuid.uuid4())}):
            app.append(event)
    assert refused.value.response is not None
    refused.value.response.close()  # requests-sse leaves a refused response open
    assert refused.value.status_code == 204
    assert app[-1][1] == "[DONE]" and len(sim.requests) == 1


# --- Chromium's EventSource, on the demo page's origin --------------------------------------

# Follows /api/chat/stream/<id> and records what the page is handed; window.rec is read by the
# test. closeOnEnd: close on the terminal event, as an app should.
RECORDER = """([path, closeOnEnd]) => {
  const rec = window.rec = {messages: [], errors: [], errorAfter: [], tokens: 0, over: false};
  const source = window.source = new EventSource(path);
  source.onmessage = (e) => {
    rec.messages.push([e.lastEventId, e.data]);
    if (e.data === "[DONE]") return;
    const type = JSON.parse(e.data).type;
    if (type === "token") rec.tokens += 1;
    if (closeOnEnd && (type === "done" || type === "error")) { source.close(); rec.over = true; }
  };
  source.onerror = () => {
    rec.errors.push(source.readyState);
    rec.errorAfter.push(rec.messages.length);
    if (source.readyState === EventSource.CLOSED) rec.over = true;
  };
}"""

# The README's browser example, run as it is printed there (see the module's end).
BROWSER_EXAMPLE = """\
// Start a chat with fetch, then follow it with an EventSource, which resumes a dropped
// connection by itself (Last-Event-ID). With API_KEYS, pass the Authorization header: the
// EventSource, which cannot send it, uses the start event's resume token instead.
async function chat(messages, { headers = {}, onToken = () => {} } = {}) {
  const started = await fetch("/api/chat/stream", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify({ messages }),
  });
  if (!started.ok) throw new Error(`refused: ${started.status}`);
  // The first event is `start`: the stream's id and resume token.
  const reader = started.body.pipeThrough(new TextDecoderStream()).getReader();
  let head = "";
  while (!head.includes("\\n\\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("no start event");
    head += value;
  }
  reader.cancel(); // the stream runs on: the EventSource follows it from the start
  const start = JSON.parse(head.match(/^data: (.*)$/m)[1]);
  const url = `/api/chat/stream/${start.stream_id}?token=${start.resume_token}`;
  return new Promise((resolve, reject) => {
    const source = new EventSource(url);
    source.onmessage = (message) => {
      if (message.data === "[DONE]") return; // the end marker, not JSON
      const event = JSON.parse(message.data);
      if (event.type === "token") onToken(event.token);
      if (event.type === "done" || event.type === "error") {
        source.close(); // else it reconnects once more (and gets 204)
        if (event.type === "done") resolve(event);
        else reject(new Error(event.message));
      }
    };
    source.onerror = () => {
      // CONNECTING: the browser is resuming by itself. CLOSED: refused (404, 429...).
      if (source.readyState === EventSource.CLOSED) reject(new Error("stream lost"));
    };
  });
}"""

# Runs the example; window.run holds the text so far and how it ended.
RUN_EXAMPLE = """([messages, headers]) => {
  const run = window.run = {text: "", tokens: 0, result: null};
""" + BROWSER_EXAMPLE + """
  chat(messages, {headers, onToken: (t) => { run.text += t; run.tokens += 1; }})
    .then((done) => { run.result = done.finish_reason; },
          (error) => { run.result = `error: ${error.message}`; });
}"""

PAGE_IDLE = "() => window.rec && window.rec.over"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's Chromium is needed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture
def page_at(chromium: Any) -> Iterator[Callable[[str], tuple[Any, Callable[[], list[Any]]]]]:
    """Open the demo page at a base URL in a fresh context; with it, a function listing the
    EventSource requests made so far, as (url, Last-Event-ID or None)."""
    contexts: list[Any] = []

    def open_at(base: str) -> tuple[Any, Callable[[], list[Any]]]:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        made: list[Any] = []

        def record(r: Any) -> None:
            if r.resource_type == "eventsource":
                made.append(r)

        page.on("request", record)

        def seen() -> list[Any]:
            # all_headers(): the plain `headers` leave out what the browser adds itself.
            return [(r.url, r.all_headers().get("last-event-id")) for r in made]

        page.goto(base + "/")
        return page, seen

    yield open_at
    for context in contexts:
        context.close()


@pytest.mark.browser
def test_browser_eventsource_gets_exactly_the_streams_events(service: Service, sim: Any,
                                                             page_at: Any) -> None:
    page, _seen = page_at(service.url)
    pings = heartbeats(service.url)
    start = start_stream(service.url, chat_body())
    page.evaluate(RECORDER, [f"/api/chat/stream/{start['stream_id']}", True])
    page.wait_for_function(PAGE_IDLE, timeout=20_000)
    rec = page.evaluate("window.rec")
    wait_until(lambda: heartbeats(service.url) - pings >= 3)
    assert rec["errors"] == []
    assert_same_events([tuple(m) for m in rec["messages"]], wire(service.url, start["stream_id"]))


@pytest.mark.browser
def test_browser_eventsource_resumes_a_cut_with_last_event_id(service: Service, sim: Any,
                                                              page_at: Any) -> None:
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        page, seen = page_at(proxy.url)
        start = start_stream(proxy.url, chat_body())
        page.evaluate(RECORDER, [f"/api/chat/stream/{start['stream_id']}", True])
        page.wait_for_function(f"() => window.rec.tokens >= {CUT_AFTER}", timeout=20_000)
        assert proxy.cut() >= 1
        page.wait_for_function(PAGE_IDLE, timeout=20_000)
    rec = page.evaluate("window.rec")
    assert rec["errors"] == [0]  # one error while CONNECTING: it reconnected by itself
    assert_same_events([tuple(m) for m in rec["messages"]], wire(service.url, start["stream_id"]))
    # It asked for what followed the last event it had been handed.
    (_, first), (_, resumed) = seen()
    had = rec["messages"][rec["errorAfter"][0] - 1]
    assert first is None and resumed == had[0]
    assert token_count([tuple(m) for m in rec["messages"][:rec["errorAfter"][0]]]) >= CUT_AFTER
    assert stream_gets(service, start["stream_id"])[:2] == [200, 200]


@pytest.mark.browser
def test_browser_eventsource_never_closed_stops_at_the_204(service: Service, sim: Any,
                                                           page_at: Any) -> None:
    page, seen = page_at(service.url)
    start = start_stream(service.url, chat_body(first_delay=0))
    page.evaluate(RECORDER, [f"/api/chat/stream/{start['stream_id']}", False])
    page.wait_for_function(PAGE_IDLE, timeout=20_000)
    rec = page.evaluate("window.rec")
    # Stream over, then a reconnection with the terminal event's id: 204, and CLOSED.
    assert rec["errors"] == [0, 2]
    messages = [tuple(m) for m in rec["messages"]]
    assert_same_events(messages, wire(service.url, start["stream_id"]))
    assert [last_id for _, last_id in seen()] == [None, messages[-2][0]]
    wait_until(lambda: len(stream_gets(service, start["stream_id"])) == 3)  # and wire()
    assert stream_gets(service, start["stream_id"])[:2] == [200, 204]
    # CLOSED is final: nothing more within well over its retry interval (1 s).
    page.wait_for_timeout(1500)
    assert len(seen()) == 2 and len(stream_gets(service, start["stream_id"])) == 3


@pytest.mark.browser
def test_browser_example_resumes_with_the_resume_token(keyed_service: Service, sim: Any,
                                                       page_at: Any) -> None:
    with TCPProxy(("127.0.0.1", keyed_service.port)) as proxy:
        page, seen = page_at(proxy.url)
        page.evaluate(RUN_EXAMPLE, [chat_body()["messages"], {"Authorization": f"Bearer {KEY}"}])
        page.wait_for_function(f"() => window.run.tokens >= {CUT_AFTER}", timeout=20_000)
        assert proxy.cut() >= 1
        page.wait_for_function("() => window.run.result !== null", timeout=20_000)
        run = page.evaluate("window.run")
        assert (run["result"], run["text"]) == ("stop", TEXT)
        urls = [url for url, _ in seen()]
        assert len(urls) == 2 and urls[0] == urls[1] and "?token=" in urls[0]
        assert seen()[1][1] is not None  # resumed after the last event it had
        # The token is what lets it in: without it, 401 and the EventSource gives up.
        stream_path = urls[0].removeprefix(proxy.url).split("?")[0]
        page.evaluate(RECORDER, [stream_path, True])
        page.wait_for_function(PAGE_IDLE, timeout=10_000)
        assert page.evaluate("window.rec") == {"messages": [], "errors": [2], "errorAfter": [0],
                                              "tokens": 0, "over": True}
    assert len(sim.requests) == 1
    assert stream_gets(keyed_service, stream_path.rsplit("/", 1)[1]) == [200, 200, 401]


@pytest.mark.browser
def test_browser_example_without_keys(service: Service, sim: Any, page_at: Any) -> None:
    page, _seen = page_at(service.url)
    page.evaluate(RUN_EXAMPLE, [chat_body(first_delay=0)["messages"], {}])
    page.wait_for_function("() => window.run.result !== null", timeout=20_000)
    assert page.evaluate("window.run")["result"] == "stop"
    assert page.evaluate("window.run")["text"] == TEXT


# --- Control: the old wire, with a blank line after `retry:` and after each `: ping` ----------

OLD_WIRE = (b"retry: 1000\n\n: ping\n\n"
            b'id: 0\ndata: {"type":"start","stream_id":"old"}\n\n: ping\n\n'
            b'id: 1\ndata: {"type":"token","token":"' + TEXT.encode() + b'","index":0}\n\n'
            b'id: 2\ndata: {"type":"done","finish_reason":"stop","usage":null}\n\n'
            b"data: [DONE]\n\n")
OLD_EVENTS: list[tuple[str | None, str]] = [
    ("0", '{"type":"start","stream_id":"old"}'),
    ("1", '{"type":"token","token":"' + TEXT + '","index":0}'),
    ("2", '{"type":"done","finish_reason":"stop","usage":null}'), (None, "[DONE]")]
# Empty events each library hands the application on the old wire: httpx-sse one for the
# retry line and one for each ping after the first id (its decoder keeps the last id and
# dispatches on it), fetch-event-source one for every blank line; the rest none.
OLD_WIRE_EMPTY = {"httpx-sse": 2, "sseclient-py": 0, "requests-sse": 0, "eventsource": 0,
                  "eventsource-parser": 0, "fetch-event-source": 3, "chromium": 0}


class _OldWire(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        if self.command == "POST":
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
        page = self.path == "/"
        body = b"<!doctype html><title>old</title>" if page else OLD_WIRE
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if page else "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def old_wire() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldWire)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("lib", [*PY_LIBS, *JS_LIBS])
def test_old_wire_gave_empty_events_to_two_libraries(old_wire: str, lib: str, node: Any) -> None:
    if lib in PY_LIBS:
        app = read_to_done(PY_LIBS[lib](f"{old_wire}/sse"))
    else:
        client = node(lib=lib, url=f"{old_wire}/sse")
        client.finish()
        app = client.messages()
    empty = [event for event in app if event[1] == ""]
    assert len(empty) == OLD_WIRE_EMPTY[lib]
    assert [d for _, d in app if d != ""][:3] == [d for _, d in OLD_EVENTS][:3]


@pytest.mark.browser
def test_old_wire_in_chromium(old_wire: str, page_at: Any) -> None:
    page, _seen = page_at(old_wire)
    page.evaluate(RECORDER, ["/sse", True])
    page.wait_for_function(PAGE_IDLE, timeout=10_000)
    messages = [tuple(m) for m in page.evaluate("window.rec")["messages"]]
    assert len([m for m in messages if m[1] == ""]) == OLD_WIRE_EMPTY["chromium"]
    assert [d for _, d in messages] == [d for _, d in OLD_EVENTS][:3]


# --- The README's httpx-sse example, as printed there ---------------------------------------


def iter_chat(base: str, messages: list[dict[str, Any]], headers: dict[str, str] | None = None,
              ) -> Iterator[str]:
    """Yield the answer's text as it streams; resume after a dropped connection."""
    headers = dict(headers or {})  # e.g. {"Authorization": "Bearer <key>"} with API_KEYS
    key = str(uuid.uuid4())  # Idempotency-Key: a POST sent again attaches to the same stream
    stream_id, last_id = None, None
    # A read timeout well above the heartbeat (HEARTBEAT_INTERVAL, 15 s by default).
    with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client:
        for attempt in range(5):
            if stream_id is None:  # POST once...
                method, url = "POST", f"{base}/api/chat/stream"
                kwargs: dict[str, Any] = {"json": {"messages": messages},
                                          "headers": {**headers, "Idempotency-Key": key}}
            else:  # ...then resume with GET and Last-Event-ID
                method, url = "GET", f"{base}/api/chat/stream/{stream_id}"
                after = {"Last-Event-ID": last_id} if last_id is not None else {}
                kwargs = {"headers": {**headers, **after}}
            try:
                with connect_sse(client, method, url, **kwargs) as source:
                    source.response.raise_for_status()
                    stream_id = source.response.headers["X-Stream-Id"]
                    for sse in source.iter_sse():
                        if sse.data == "[DONE]":  # the end marker, not JSON
                            return
                        event = json.loads(sse.data)
                        last_id = sse.id
                        if event["type"] == "token":
                            yield event["token"]
                        elif event["type"] == "done":  # terminal: stop here
                            return
                        elif event["type"] == "error":
                            raise RuntimeError(f"{event['code']}: {event['message']}")
            except httpx.TransportError:  # the connection dropped: resume
                time.sleep(0.5 * 2**attempt)
    raise RuntimeError("gave up after 5 connections")


@pytest.mark.parametrize("keyed", [False, True], ids=["no-keys", "api-keys"])
def test_httpx_sse_example_resumes_to_the_exact_text(request: Any, sim: Any,
                                                     keyed: bool) -> None:
    svc: Service = request.getfixturevalue("keyed_service" if keyed else "service")
    with TCPProxy(("127.0.0.1", svc.port)) as proxy:
        text = []
        for token in iter_chat(proxy.url, sim_prompt(**SCRIPT),
                               {"Authorization": f"Bearer {KEY}"} if keyed else None):
            text.append(token)
            if len(text) == CUT_AFTER:
                assert proxy.cut() >= 1
        assert proxy.accepted == 2
    assert "".join(text) == TEXT
    assert len(sim.requests) == 1
