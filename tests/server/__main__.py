"""Run the test server standalone: `python -m tests.server --port 0` prints its URL and a token."""

from __future__ import annotations

import argparse
import contextlib
import threading

from .common import Settings
from .server import SimvueTestServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    parser.add_argument("--version", dest="server_version", default=Settings.version, help="server version to report")
    args = parser.parse_args(argv)
    server = SimvueTestServer(args.db, host=args.host, port=args.port, settings=Settings(version=args.server_version))
    with server:
        print(f"SIMVUE_URL={server.url}", flush=True)
        print(f"SIMVUE_TOKEN={server.token}", flush=True)
        print("Fault hooks: POST/GET/DELETE /_test/faults; Ctrl-C stops.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
