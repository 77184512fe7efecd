"""The app under Werkzeug's threaded server, without gevent: the layer must work on threads."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.serving import make_server

from app import create_app

if __name__ == "__main__":
    import gevent.monkey

    assert not gevent.monkey.is_module_patched("threading")
    server = make_server("127.0.0.1", int(sys.argv[1]), create_app(), threaded=True)
    server.serve_forever()
