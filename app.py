"""The application factory: the streaming endpoints plus the demo page."""

from __future__ import annotations

import logging
import sys

from flask import Flask, render_template
from werkzeug.exceptions import HTTPException

from streaming import LLMStream, Settings
from streaming.views import EXTENSION, http_error


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    _configure_logging()
    app = Flask(__name__)
    LLMStream(app, settings)

    @app.get("/")
    def index() -> str:
        manager = app.extensions[EXTENSION]
        return render_template(
            "index.html",
            provider=manager.provider.name,
            default_model=settings.LLM_MODEL,
            requires_key=bool(settings.API_KEYS),
            heartbeat=f"{settings.HEARTBEAT_INTERVAL:g}",
        )

    # Routing errors (an unknown path, a wrong method) happen before any blueprint is chosen:
    # the service answers them in the contract's JSON shape too.
    app.register_error_handler(HTTPException, http_error)

    @app.after_request
    def _security_headers(response):  # type: ignore[no-untyped-def]
        # Model output is untrusted text rendered by the demo page: no inline script, nothing
        # loaded from elsewhere, no way to send data out through an image or a form.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    # The SDK's transport logs every request at INFO: one line per stream is noise at scale.
    for name in ("httpx2", "httpcore2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
