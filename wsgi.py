"""The WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py wsgi:app`."""

# gevent must patch the standard library before anything imports socket, ssl or threading:
# an `openai` client (an httpx2 pool) made with unpatched sockets fails every request.
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from app import create_app  # noqa: E402
from streaming.settings import SettingsError  # noqa: E402

try:
    app = create_app()
except SettingsError as exc:
    # One line naming the variable instead of a traceback; exit code 3 is gunicorn's "worker
    # failed to boot", on which the master stops rather than restarting workers forever.
    print(f"Error: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)
