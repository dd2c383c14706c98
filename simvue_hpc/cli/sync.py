"""``simvue-hpc sync``: upload runs from the local store to a Simvue server."""

from __future__ import annotations

import argparse

from .app import arg, command


@command(
    "sync",
    arg("runs", nargs="*", metavar="RUN", help="runs to upload (id, id prefix or name); default: every run"),
    arg("--quiet", action="store_true", help="no progress bar"),
    arg("--wait", type=float, default=600.0, metavar="S", help="how long to wait for another sync of a run (s)"),
)
def cmd_sync(args: argparse.Namespace) -> int:
    """Upload runs from the local store to the Simvue server (resumes; never uploads twice).

    Exit code 0 when everything the store holds is on the server, 1 when a run failed, 75 when the
    server was unavailable (try again later)."""
    from ..upload.sync import sync

    return sync(args.root, args.runs, quiet=args.quiet, wait=args.wait)
