"""CORS (PROTOCOL.md, "Endpoints"): with CORS_ORIGINS, the listed origins get preflights
answered and responses they may read; other origins, and every origin without CORS_ORIGINS,
get no CORS header at all. Over real sockets against the service under gunicorn."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from browser import CHROMIUM, launch
from conftest import Service
from flask import Flask
from sseclient import collect, request, start, text_of

from app import create_app
from streaming import LLMStream, Settings

ORIGIN = "https://app.example"
LOCAL_ORIGIN = "http://127.0.0.1:8080"
OTHER = "https://evil.example"
KEY = "cors-key-0123456789"
ALLOWED_HEADERS = {"authorization", "content-type", "last-event-id", "idempotency-key"}
BODY = {"messages": [{"role": "user", "content": "hi"}]}

# Every API path of every wire format, with a method it takes (PROTOCOL.md's tables).
API_PATHS = [
    pytest.param("POST", "/api/chat/stream", id="native-start"),
    pytest.param("GET", "/api/chat/stream/s0", id="native-attach"),
    pytest.param("POST", "/api/chat/stream/s0/cancel", id="native-cancel"),
    pytest.param("POST", "/v1/chat/completions", id="openai-start"),
    pytest.param("GET", "/v1/chat/completions/s0/stream", id="openai-resume"),
    pytest.param("POST", "/v1/chat/completions/s0/cancel", id="openai-cancel"),
    pytest.param("GET", "/v1/models", id="openai-models"),
    pytest.param("POST", "/api/chat", id="aisdk-start"),
    pytest.param("GET", "/api/chat/c0/stream", id="aisdk-resume"),
    pytest.param("POST", "/api/chat/c0/stop", id="aisdk-stop"),
]


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    # The key makes sure a preflight (which never carries one) is not refused for lack of it;
    # the second origin is written as an operator might, and normalised.
    svc = Service({"CORS_ORIGINS": f"{ORIGIN}, HTTP://127.0.0.1:8080", "API_KEYS": KEY,
                   "SIMULATED_TOKENS_PER_SECOND": 2000})
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def plain_service() -> Iterator[Service]:
    svc = Service({"SIMULATED_TOKENS_PER_SECOND": 2000})
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def routes() -> Any:
    """What this build mounts: the other formats may not be there yet."""
    adapter = create_app(Settings()).url_map.bind("127.0.0.1")

    def mounted(method: str, path: str) -> bool:
        try:
            adapter.match(path, method)
        except Exception:
            return False
        return True

    return mounted


def preflight(base: str, path: str, method: str, origin: str = ORIGIN,
              headers: str = "authorization, content-type") -> tuple[int, dict[str, str], bytes]:
    return request(base, "OPTIONS", path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


def vary(headers: dict[str, str]) -> set[str]:
    return {v.strip().lower() for v in headers.get("vary", "").split(",") if v.strip()}


def names(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",")}


@pytest.mark.parametrize(("method", "path"), API_PATHS)
def test_preflight_from_an_allowed_origin(service: Service, routes: Any, method: str,
                                          path: str) -> None:
    if not routes(method, path):
        pytest.skip(f"{method} {path} is not mounted in this build")
    status, headers, body = preflight(service.url, path, method)
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == ORIGIN
    assert method.lower() in names(headers["access-control-allow-methods"])
    assert names(headers["access-control-allow-headers"]) >= ALLOWED_HEADERS
    assert int(headers["access-control-max-age"]) > 0
    assert "origin" in vary(headers)
    # Bearer keys, not cookies: credentials are never allowed.
    assert "access-control-allow-credentials" not in headers


def test_preflight_for_a_normalised_origin(service: Service) -> None:
    status, headers, _ = preflight(service.url, "/api/chat/stream", "POST", origin=LOCAL_ORIGIN)
    assert status == 204
    assert headers["access-control-allow-origin"] == LOCAL_ORIGIN


def test_preflight_allows_the_openai_sdks_own_headers(service: Service) -> None:
    # The OpenAI JS SDK in a browser asks for its x-stainless-* headers.
    _, headers, _ = preflight(service.url, "/api/chat/stream", "POST",
                              headers="authorization,content-type,x-stainless-os,"
                                      "x-stainless-retry-count,x-other")
    allowed = names(headers["access-control-allow-headers"])
    assert {"x-stainless-os", "x-stainless-retry-count"} <= allowed
    assert "x-other" not in allowed


@pytest.mark.parametrize(
    ("origin", "method", "path"),
    [
        pytest.param(OTHER, "POST", "/api/chat/stream", id="other-origin"),
        pytest.param("null", "POST", "/api/chat/stream", id="null-origin"),
        pytest.param(ORIGIN + ":443", "POST", "/api/chat/stream", id="not-as-a-browser-writes"),
        pytest.param(ORIGIN, "DELETE", "/api/chat/stream", id="method-the-path-does-not-take"),
        pytest.param(ORIGIN, "POST", "/api/chat/stream/s0", id="attach-is-get-only"),
        pytest.param(ORIGIN, "POST", "/nowhere", id="unknown-path"),
    ],
)
def test_preflights_not_answered(service: Service, plain_service: Service, origin: str,
                                 method: str, path: str) -> None:
    status, headers, _ = preflight(service.url, path, method, origin=origin)
    assert cors_headers(headers) == {}
    # The app's own answer stands, the same as without CORS_ORIGINS.
    assert status == preflight(plain_service.url, path, method, origin=origin)[0]
    assert status != 204


def test_a_stream_from_an_allowed_origin_is_readable(service: Service) -> None:
    stream = start(service.url, BODY, headers={"Origin": ORIGIN,
                                               "Authorization": f"Bearer {KEY}"})
    headers = {k.lower(): v for k, v in stream.headers.items()}
    events = collect(stream)
    assert stream.status == 200
    assert headers["access-control-allow-origin"] == ORIGIN
    assert {"x-stream-id", "x-vercel-ai-ui-message-stream"} <= names(
        headers["access-control-expose-headers"])
    assert "origin" in vary(headers)
    assert events[-1].data == "[DONE]" and text_of(events)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        pytest.param("/api/chat/stream", {"messages": []}, 422, id="refused-start"),
        pytest.param("/api/chat/stream/nope/cancel", None, 404, id="unknown-stream"),
    ],
)
def test_refusals_to_an_allowed_origin_are_readable(service: Service, path: str, body: Any,
                                                    status: int) -> None:
    got, headers, _ = request(service.url, "POST", path, body=body if body is not None else b"",
                              headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}",
                                       "Content-Type": "application/json"})
    assert got == status
    assert headers["access-control-allow-origin"] == ORIGIN


def test_a_missing_key_is_a_readable_401(service: Service) -> None:
    status, headers, _ = request(service.url, "POST", "/api/chat/stream", body=BODY,
                                 headers={"Origin": ORIGIN})
    assert status == 401
    assert headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize("origin", [OTHER, None], ids=["other-origin", "no-origin"])
def test_other_origins_get_no_cors_headers(service: Service, origin: str | None) -> None:
    sent = {"Authorization": f"Bearer {KEY}"}
    if origin is not None:
        sent["Origin"] = origin
    stream = start(service.url, BODY, headers=sent)
    headers = {k.lower(): v for k, v in stream.headers.items()}
    events = collect(stream)
    assert stream.status == 200 and events[-1].data == "[DONE]"
    assert cors_headers(headers) == {}
    # The answer still depends on Origin: caches must keep them apart.
    assert "origin" in vary(headers)


def test_the_host_apps_own_pages_are_left_alone(service: Service) -> None:
    status, headers, _ = request(service.url, "GET", "/", headers={"Origin": ORIGIN})
    assert status == 200
    assert cors_headers(headers) == {}


@pytest.mark.parametrize(("method", "path"), API_PATHS)
def test_without_cors_origins_nothing_is_ever_sent(plain_service: Service, routes: Any,
                                                   method: str, path: str) -> None:
    if not routes(method, path):
        pytest.skip(f"{method} {path} is not mounted in this build")
    status, headers, _ = preflight(plain_service.url, path, method)
    assert cors_headers(headers) == {}
    assert status != 204
    status, headers, _ = request(plain_service.url, method, path,
                                 body=b"{}" if method == "POST" else None,
                                 headers={"Origin": ORIGIN})
    assert cors_headers(headers) == {}


def test_mounted_in_another_app_under_a_prefix() -> None:
    app = Flask(__name__)

    @app.post("/own")
    def own() -> str:
        return "own"

    LLMStream(settings=Settings(CORS_ORIGINS=ORIGIN)).init_app(app, url_prefix="/llm")
    client = app.test_client()
    answer = client.options("/llm/api/chat/stream", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    # The host's routes keep whatever CORS policy the host has (here: none).
    for response in (client.options("/own", headers={"Origin": ORIGIN,
                                                     "Access-Control-Request-Method": "POST"}),
                     client.post("/own", headers={"Origin": ORIGIN})):
        assert "Access-Control-Allow-Origin" not in response.headers


# --- In Chromium: what a page on an allowed origin can do, and one elsewhere cannot.

BROWSER_SCRIPT = """async ([base, key]) => {
  const auth = {Authorization: `Bearer ${key}`};
  const out = {};
  try {
    // Every header a client may send, plus an OpenAI SDK's own: the preflight allows them.
    const started = await fetch(`${base}/api/chat/stream`, {method: "POST", body: JSON.stringify(
      {messages: [{role: "user", content: "hi"}]}), headers: {...auth,
      "Content-Type": "application/json", "Idempotency-Key": "cors-idem-1",
      "X-Stainless-OS": "Linux"}});
    out.status = started.status;
    out.id = started.headers.get("X-Stream-Id");
    out.text = await started.text();
    const resumed = await fetch(`${base}/api/chat/stream/${out.id}`,
                                {headers: {...auth, "Last-Event-ID": "0"}});
    out.resumedStatus = resumed.status;
    out.resumed = await resumed.text();
    // EventSource sends no key: the start event's resume token stands in for it.
    const start = JSON.parse(out.text.split("\\n").find(l => l.startsWith("data: ")).slice(6));
    out.eventSource = await new Promise(resolve => {
      const seen = [];
      const source = new EventSource(
        `${base}/api/chat/stream/${out.id}?token=${start.resume_token}`);
      source.onmessage = e => {
        seen.push(e.data);
        if (e.data === "[DONE]") { source.close(); resolve(seen); }
      };
      source.onerror = () => { source.close(); resolve(seen.concat(["error"])); };
    });
  } catch (error) {
    out.error = String(error);
  }
  return out;
}"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>app</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_origin() -> Iterator[str]:
    """An origin serving an empty page from loopback (Chromium lets a page reach loopback
    addresses only from loopback)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Debian's Chromium is needed at {CHROMIUM}")
def test_cross_origin_pages_in_chromium() -> None:
    from playwright.sync_api import sync_playwright

    with page_origin() as allowed, page_origin() as other:
        service = Service({"CORS_ORIGINS": allowed, "API_KEYS": KEY,
                           "SIMULATED_TOKENS_PER_SECOND": 2000})
        try:
            with sync_playwright() as p:
                browser = launch(p)
                try:
                    results = {}
                    for origin in (allowed, other):
                        page = browser.new_context().new_page()
                        page.goto(f"{origin}/")
                        results[origin] = page.evaluate(BROWSER_SCRIPT, [service.url, KEY])
                finally:
                    browser.close()
        finally:
            service.stop()

    ok = results[allowed]
    assert "error" not in ok, ok
    assert ok["status"] == 200 and ok["id"]
    assert ok["text"].endswith("data: [DONE]\n\n")
    assert ok["resumedStatus"] == 200
    assert "id: 0\n" not in ok["resumed"] and "id: 1\n" in ok["resumed"]
    assert ok["eventSource"][-1] == "[DONE]" and "error" not in ok["eventSource"]
    # Elsewhere the preflight fails: the request is never made, the page learns nothing.
    assert results[other] == {"error": "TypeError: Failed to fetch"}
