"""``simvue-hpc sync``: upload runs from the local store to a Simvue server."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import SimvueHPCError
from ..store import find_run, list_runs
from .app import arg, command


@command(
    "sync",
    arg("runs", nargs="*", metavar="RUN", help="runs to upload (id, id prefix or name); default: every run"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def cmd_sync(args: argparse.Namespace) -> int:
    """Upload runs from the local store to the Simvue server (resumes; never uploads twice)."""
    from ..config import ServerSettings
    from ..server import SimvueClient
    from ..upload import Uploader, upload_lock

    settings = ServerSettings.load()
    if not settings.online:
        print(
            "simvue-hpc: no server configured: set SIMVUE_URL and SIMVUE_TOKEN, or write simvue.toml", file=sys.stderr
        )
        return 1
    client = SimvueClient(settings)
    try:
        client.check()
        run_dirs = [find_run(args.root, key) for key in args.runs] or [v.run_dir for v in list_runs(args.root)]
        failed = 0
        for run_dir in run_dirs:
            try:
                with upload_lock(run_dir):
                    _sync_one(Uploader(run_dir, client, settings), quiet=args.quiet)
            except SimvueHPCError as exc:
                print(f"{run_dir.name}: {exc}", file=sys.stderr)
                failed += 1
    finally:
        client.close()
    return 1 if failed else 0


def _sync_one(uploader: Any, quiet: bool) -> None:
    name = uploader.run_dir.name
    if uploader.state.done:
        print(f"{name}: already uploaded")
        return
    total = max(1, uploader.pending_bytes())
    show = not quiet and sys.stderr.isatty()
    while not uploader.poll():
        left = uploader.pending_bytes()
        if left == 0:  # everything there is has gone, but the run has not ended (still running, or died)
            print(f"{name}: uploaded what there is; the run has not ended")
            return
        if show:
            _progress(name, 1 - left / total)
        time.sleep(0.05)
    if show:
        _progress(name, 1.0)
        print(file=sys.stderr)
    print(f"{name}: uploaded as {uploader.state.run_id} ({uploader.requests} requests)")


def _progress(name: str, fraction: float, width: int = 30) -> None:
    filled = round(fraction * width)
    print(f"\r{name}: [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}", end="", file=sys.stderr, flush=True)
