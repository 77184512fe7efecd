"""The baseline the benchmark measures against: the asyncio design most blog posts show.

FastAPI + uvicorn + `AsyncOpenAI`, iterating the SDK's typed chunks and writing one SSE event
per delta through a `StreamingResponse`. Same path and request body as the service's native
endpoint, so the load generator drives both alike:

    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 OPENAI_API_KEY=x \
        uvicorn --app-dir bench/baseline app:app --port 8001

One change from the blog posts: the SDK's connection pool (1000 connections by default) is
unbounded, so that the pool is not what limits it at thousands of concurrent streams.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx2
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pydantic import BaseModel

MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")

client = AsyncOpenAI(http_client=DefaultAsyncHttpxClient(
    limits=httpx2.Limits(max_connections=None, max_keepalive_connections=100)))
app = FastAPI()


class ChatRequest(BaseModel):
    messages: list[dict[str, Any]]
    model: str | None = None


@app.post("/api/chat/stream")
async def chat_stream(request: ChatRequest) -> StreamingResponse:
    async def iter_events() -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=request.model or MODEL, messages=cast(Any, request.messages), stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {json.dumps({'token': chunk.choices[0].delta.content})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(iter_events(), media_type="text/event-stream")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
