"""The WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py wsgi:app`."""

# gevent must patch the standard library before anything imports socket, ssl or threading:
# an `openai` client (an httpx2 pool) made with unpatched sockets fails every request.
from gevent import monkey

monkey.patch_all()

from app import create_app  # noqa: E402

app = create_app()
