"""The extension mounted in someone else's Flask app, in-process, under plain threads."""

from __future__ import annotations

import json

from flask import Flask

from streaming import LLMStream, Settings


def make_app(**settings: object) -> Flask:
    app = Flask("their_app")

    @app.get("/")
    def their_home() -> str:
        return "their page"

    LLMStream(app, Settings(SIMULATED_TOKENS_PER_SECOND=2000, **settings))  # type: ignore[arg-type]
    return app


def parse(body: bytes) -> list[dict[str, object] | str]:
    out: list[dict[str, object] | str] = []
    for block in body.decode().split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append("[DONE]" if data == ["[DONE]"] else json.loads("\n".join(data)))
    return out


def test_three_lines_mount_the_endpoints() -> None:
    app = make_app()
    client = app.test_client()
    assert client.get("/").data == b"their page"
    assert client.get("/healthz").json == {"status": "ok"}
    response = client.post("/api/chat/stream",
                           json={"messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 12})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = parse(response.get_data())
    assert events[-1] == "[DONE]"
    done = events[-2]
    assert isinstance(done, dict) and done["finish_reason"] == "length"
    tokens = [e for e in events if isinstance(e, dict) and e["type"] == "token"]
    assert len(tokens) >= 2
    stream_id = response.headers["X-Stream-Id"]
    again = client.get(f"/api/chat/stream/{stream_id}", headers={"Last-Event-ID": "0"})
    assert parse(again.get_data()) == events[1:]


def test_mounted_under_a_prefix_with_its_own_errors() -> None:
    app = Flask("their_app")
    LLMStream().init_app(app, url_prefix="/llm")
    client = app.test_client()
    response = client.post("/llm/api/chat/stream", data="{", content_type="application/json")
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["error"]["type"] == "invalid_json"
    assert client.post("/api/chat/stream").status_code == 404  # nothing outside the prefix


def test_the_simulated_provider_honours_max_completion_tokens() -> None:
    # The name OpenAI's SDK now sends; the older max_tokens still counts when it is alone.
    client = make_app().test_client()
    for field in ("max_completion_tokens", "max_tokens"):
        response = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], field: 5})
        assert response.status_code == 200, response.data
        body = response.json
        assert body is not None
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 5
