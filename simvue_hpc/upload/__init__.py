"""The uploader: replays a run's local store to a Simvue server, live (:mod:`.live`, a thread beside
the aggregator) or afterwards (``simvue-hpc sync``); :mod:`.replay` is the replay itself, :mod:`.items`
the pure conversion of store records into the server's, :mod:`.state` what has been uploaded."""

from __future__ import annotations

from .live import LiveUpload
from .replay import Uploader
from .state import LOCK_NAME, STATE_NAME, UploadState, upload_lock

__all__ = ["LOCK_NAME", "STATE_NAME", "LiveUpload", "UploadState", "Uploader", "upload_lock"]
