"""``simvue-hpc sync``: upload runs from the local store, each within a retry budget, with progress.

Every run ends in one of a few outcomes, one line each in the summary:

* uploaded (or already uploaded); items the server refused are listed as dead letters;
* uploaded up to what the store holds, when the run has no END: still being recorded (its writer
  is alive), or closed with the status that is known (``failed``/``terminated`` with the reason, else
  ``lost``);
* skipped: its aggregator is uploading it live; or another ``sync`` held it for longer than ``wait``;
* failed: the server refused the run, the token, or the server stayed unavailable for the run's retry
  budget (``retry_attempts`` per request, ``retry_budget`` seconds).

Exit codes: 0 when every run is on the server as far as the store allows (skipped live runs
included); 1 when a run failed; :data:`EXIT_UNAVAILABLE` (75, "try again later") when the server
was unavailable.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ServerSettings
from ..errors import OutcomeUnknown, ServerUnavailable, SimvueHPCError
from ..server import RetryPolicy, SimvueClient
from ..store import find_run, list_runs
from .replay import Uploader
from .state import upload_lock, writer_alive

EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: the server was unavailable; run sync again later
LIVE_ROLE = "the live upload of its aggregator"


@dataclass
class Outcome:
    """What happened to one run."""

    name: str
    message: str
    code: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


def sync(root: Path, keys: Sequence[str], quiet: bool = False, wait: float = 600.0) -> int:
    """Upload the runs named by ``keys`` (every run when empty); print a summary; return the exit code."""
    settings = ServerSettings.load()
    if not settings.online:
        print(
            "simvue-hpc: no server configured: set SIMVUE_URL and SIMVUE_TOKEN, or write simvue.toml", file=sys.stderr
        )
        return 1
    policy = RetryPolicy(
        total=settings.retry_attempts - 1,
        deadline=settings.retry_budget,
        backoff_max=max(1.0, settings.retry_budget / 4),
    )
    run_dirs = [find_run(root, key) for key in keys] or [v.run_dir for v in list_runs(root)]
    outcomes: list[Outcome] = []
    with SimvueClient(settings, policy) as client:
        try:
            client.check()
        except ServerUnavailable as exc:
            print(f"simvue-hpc: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        with _progress(quiet) as bar:
            for run_dir in run_dirs:
                outcome = _sync_run(run_dir, client, settings, wait, bar)
                outcomes.append(outcome)
                if outcome.code == EXIT_UNAVAILABLE:
                    break  # the next runs would spend their budgets on the same outage
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.message}", file=sys.stderr if outcome.code else sys.stdout)
        for dead in outcome.dead_letters:
            print(f"{outcome.name}: not uploaded (refused by the server): {dead['what']}: {dead['reason']}")
    left = len(run_dirs) - len(outcomes)
    if left:
        print(f"simvue-hpc: {left} more run(s) not tried; run sync again when the server is back", file=sys.stderr)
    return max((o.code for o in outcomes), default=0)


def _sync_run(run_dir: Path, client: SimvueClient, settings: ServerSettings, wait: float, bar: Any) -> Outcome:
    name = run_dir.name
    try:
        holder = _holder(run_dir)
        if LIVE_ROLE in holder and writer_alive(run_dir):
            return Outcome(name, "skipped: still being recorded, and uploaded live by its aggregator")
        with upload_lock(run_dir, role="simvue-hpc sync", wait=wait):
            return _upload(Uploader(run_dir, client, settings), bar)
    except ServerUnavailable as exc:
        return Outcome(name, f"the server stayed unavailable: {exc}", EXIT_UNAVAILABLE)
    except SimvueHPCError as exc:
        return Outcome(name, str(exc), 1)


def _upload(uploader: Uploader, bar: Any) -> Outcome:
    name = uploader.run_dir.name
    state = uploader.state
    if state.done:
        return Outcome(name, "already uploaded")
    task = bar.add_task(name, total=uploader.progress()[1]) if bar is not None else None
    try:
        while not _poll(uploader, unknown_left=uploader.settings.retry_attempts - uploader.unknown_outcomes):
            if task is not None:
                bar.update(task, completed=uploader.progress()[0], total=uploader.progress()[1])
            if uploader.caught_up() and not uploader.ended:
                if writer_alive(uploader.run_dir):
                    message = f"uploaded what the store holds as {state.run_id}; the run is still being recorded"
                else:
                    status = uploader.close_unended()
                    message = f"uploaded what the store holds as {state.run_id}; it has no end: marked {status}"
                return Outcome(name, message, dead_letters=state.dead_letters)
            time.sleep(0.05)
        if task is not None:
            done, total = uploader.progress()
            bar.update(task, completed=done, total=total)
    finally:
        if task is not None:
            bar.remove_task(task)
    return Outcome(name, f"uploaded as {state.run_id} ({uploader.requests} requests)", dead_letters=state.dead_letters)


def _poll(uploader: Uploader, unknown_left: int) -> bool:
    """One round; a request whose outcome is unknown is reconciled in the next round, a few times at most."""
    try:
        return uploader.poll()
    except OutcomeUnknown:
        if unknown_left <= 1:
            raise
        uploader.unknown_outcomes += 1
        return False


def _holder(run_dir: Path) -> str:
    with contextlib.suppress(OSError):
        return (run_dir / "upload.lock").read_text()
    return ""


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    """A rich progress display on stderr (bytes of each run's log, summed over its three streams)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn())
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        yield bar
