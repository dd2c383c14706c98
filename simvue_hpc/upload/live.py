"""The uploader as a thread beside the aggregator, while the run goes on."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .. import threads
from ..config import ServerSettings
from ..errors import ServerError, ServerUnavailable, StoreError, ValidationError
from ..server import RetryPolicy, SimvueClient
from .replay import Uploader
from .state import upload_lock

log = logging.getLogger(__name__)


class LiveUpload:
    """The uploader as a thread beside the aggregator, while the run goes on."""

    LIVE_POLICY = RetryPolicy(total=2, backoff_max=5.0)

    def __init__(self, run_dir: Path, settings: ServerSettings) -> None:
        self._run_dir = Path(run_dir)
        self._settings = settings
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock_cm = upload_lock(self._run_dir, role="the live upload of its aggregator")
        self._lock_cm.__enter__()
        self._uploader = Uploader(self._run_dir, SimvueClient(settings, policy=self.LIVE_POLICY), settings, live=True)
        self._thread = threads.start(self._main, "simvue_hpc-upload")

    @property
    def abort_requested(self) -> bool:
        return self._uploader.abort_requested

    def _main(self) -> None:
        delay = 0.0
        try:
            while not self._stop.wait(delay):
                try:
                    if self._uploader.poll():
                        self._done.set()
                        return
                    delay = 0.2
                except ServerUnavailable as exc:
                    delay = min(max(delay * 2, 1.0), 30.0)
                    log.warning("upload paused, the server is unavailable (%s); retrying in %.0f s", exc, delay)
                except (ValidationError, ServerError, StoreError) as exc:
                    log.error("upload of run %s stopped: %s; it stays in the local store", self._run_dir.name, exc)
                    return
        finally:
            self._uploader.client.close()

    def finish(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the upload to complete; True if it did."""
        self._thread.join(timeout)  # the thread ends when the upload is complete, or cannot go on
        done = self._done.is_set()
        self._stop.set()
        self._thread.join(5)
        self._lock_cm.__exit__(None, None, None)
        if not done:
            log.warning(
                "run %s: the upload did not finish within %.0f s; the rest stays in the local store: "
                "run `simvue-hpc sync %s` to finish it",
                self._run_dir.name,
                timeout,
                self._run_dir.name,
            )
        return done
