"""The uploader: replays a run's local store to a Simvue server, live or afterwards.

The store is the source of truth; uploading is a replay of it, the same code live (:mod:`.live`, a
thread next to the aggregator) and afterwards (``simvue-hpc sync``, :mod:`.sync`). The replay
(:mod:`.replay`) runs three streams, each with its own cursor in ``upload.json`` beside the records
(:mod:`.state`):

* ``run``: every record that is not a metric or an event, in order: folder, run creation,
  updates, files, alerts, and last the final status, which waits until the other two streams have
  passed it (so a run the server shows ``completed`` has all its data);
* ``metrics`` and ``events``: batched (:mod:`.batches`, :mod:`.items`), at most one POST per second
  each, within the size limits.

A cursor moves only after the server accepted what lies before it, and is saved at once
(atomically). Every stream makes progress or says why:

* **exactly once**: a request that is not safe to repeat (creating the run, a metrics or events
  batch) is noted in ``upload.json`` before it leaves. When its answer is lost (or the uploader
  crashed meanwhile) the next round first reads the server's state back — the run by the unique id
  in its metadata, the stored points of the batch's metrics, the run's event count — and sends only
  what is missing;
* **dead letters**: an item the server refuses for good (a 4xx other than 401/403/409, or a 404 that
  is not about the run) is skipped, recorded, and reported as an event in the run; the stream goes
  on;
* a run that ends without an END record (its aggregator died, the disk filled) is uploaded up to
  what the store holds and closed with the status that is known (``failed``/``terminated`` with
  the reason, else ``lost``).

The number of requests per second depends on the rates above, the heartbeat and the abort check,
never on the number of ranks: the aggregator has already reduced the ranks' values into the store.
"""

from __future__ import annotations

from .live import LiveUpload
from .replay import Uploader
from .state import LOCK_NAME, STATE_NAME, UploadState, upload_lock

__all__ = ["LOCK_NAME", "STATE_NAME", "LiveUpload", "UploadState", "Uploader", "upload_lock"]
