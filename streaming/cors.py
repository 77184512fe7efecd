"""CORS for the streaming endpoints (PROTOCOL.md, "Endpoints"): only with CORS_ORIGINS set,
only for the origins listed, only on routes of this package's blueprints (a host app's own
routes are left as they are).

No cookies are involved (the API takes bearer keys), so credentials are never allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

# What a browser must be allowed to send: the key, the JSON body, a resume cursor set by hand
# (fetch-based clients), and the idempotency key of a start.
ALLOW_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key")
# Response headers that page scripts may read beyond the CORS-safelisted ones.
EXPOSE_HEADERS = "X-Stream-Id, x-vercel-ai-ui-message-stream, Retry-After"
# The OpenAI SDKs add their own telemetry headers (x-stainless-lang, ...-retry-count, ...): a
# browser that uses one against `/v1` asks for them in the preflight.
_SDK_HEADER = re.compile(r"^x-stainless-[a-z0-9-]+$")
# Browsers cap it (Chromium at 2 h); 10 minutes keeps a changed CORS_ORIGINS from lingering.
MAX_AGE = "600"


class Cors:
    """Request hooks answering preflights and marking responses for the allowed origins."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def install(self, app: Flask) -> None:
        # App-level hooks: a preflight for a route that refuses OPTIONS never reaches a
        # blueprint's hooks, and the routes of every wire format get the same treatment.
        app.before_request(self._preflight)
        app.after_request(self._mark)

    def _preflight(self) -> Response | None:
        if not _is_preflight():
            return None
        origin = request.headers.get("Origin")
        rule = _match(request.headers["Access-Control-Request-Method"])
        if origin not in self.origins or rule is None or not _ours(rule):
            return None  # not a preflight we answer: the app's own answer stands
        response = Response(status=204)
        del response.headers["Content-Type"]
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ", ".join(
            sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        response.headers["Access-Control-Allow-Headers"] = ", ".join(
            ALLOW_HEADERS + _sdk_headers(request.headers.get("Access-Control-Request-Headers")))
        response.headers["Access-Control-Max-Age"] = MAX_AGE
        response.vary.update(("Origin", "Access-Control-Request-Method",
                              "Access-Control-Request-Headers"))
        return response

    def _mark(self, response: Response) -> Response:
        rule = request.url_rule
        if (rule is None or not _ours(rule) or _is_preflight()
                or "Access-Control-Allow-Origin" in response.headers):
            # A preflight we did not answer (a method the path does not take) gets nothing:
            # half a CORS answer would only make the browser's error message misleading.
            return response
        # The answer depends on Origin for every request to these routes: shared caches
        # must not hand one origin's answer to another.
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        return response


def _is_preflight() -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _match(method: str) -> Rule | None:
    """The route this request's path would reach with `method`, if any."""
    # The request's own match was made for OPTIONS, which a route may not accept.
    adapter = current_app.url_map.bind_to_environ(request.environ)
    try:
        rule, _ = adapter.match(method=method, return_rule=True)
    except HTTPException:  # not found, method not allowed, or a redirect
        return None
    return rule


def _ours(rule: Rule) -> bool:
    name, dot, _ = rule.endpoint.rpartition(".")
    blueprint = current_app.blueprints.get(name) if dot else None
    if blueprint is None:
        return False
    # The blueprints of this package, wherever the package is installed or vendored.
    return blueprint.import_name == __package__ or blueprint.import_name.startswith(
        f"{__package__}.")


def _sdk_headers(requested: str | None) -> tuple[str, ...]:
    if not requested:
        return ()
    names = (name.strip().lower() for name in requested.split(","))
    return tuple(dict.fromkeys(name for name in names if _SDK_HEADER.match(name)))
