"""Dead letters: what the uploader skips and reports instead of stalling on it.

An item the server refuses for good (a 4xx other than 401/403/409, or a 404 that is not about the
run) and bytes of the local store that hold no readable record are recorded in ``upload.json``,
logged, posted once each as an ``error`` event in the run, and listed in ``sync``'s summary.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import ServerError
from ..server import SimvueClient, format_timestamp
from ..store import Damage
from .batches import is_rejection, stored_events
from .state import UploadState

log = logging.getLogger(__name__)


class DeadLetters:
    """The dead-letter part of :class:`~simvue_hpc.upload.replay.Uploader` (which provides these)."""

    run_dir: Path
    client: SimvueClient
    state: UploadState
    _state_path: Path

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _save(self) -> None:
        raise NotImplementedError

    def _note_pending(self, pending: dict[str, Any]) -> None:
        raise NotImplementedError

    def _reconcile_dead_letters(self, pending: dict[str, Any]) -> None:
        done = stored_events(self._call(self.client.event_count, self.state.run_id), pending["before"], pending["n"])
        self._send_dead_letters(pending, skip=done)

    def _note_damage(self, damage: list[Damage]) -> None:
        """Damaged bytes of the store are reported once each, like dead letters (a torn tail is not:
        it may be a record still being written)."""
        for d in damage:
            if not d.torn and d.start not in self.state.damage_seen:
                self.state.damage_seen.append(d.start)
                lost = f"{d.records} record(s)" if d.records else "records"
                self._dead_letter(f"{lost} in damaged bytes {d.start}-{d.end} of the local store", d.reason)

    def _rejected(self, exc: ServerError) -> bool:
        """Whether a refusal is of the item alone (a dead letter) rather than of the whole upload."""
        if exc.status == 404:
            self._check_run_exists()
        return is_rejection(exc.status)

    def _check_run_exists(self) -> None:
        """After a 404: a clear error if the run itself is gone from the server (deleted)."""
        if self.state.run_id is None:
            return
        try:
            self.client.get_run(self.state.run_id)
        except ServerError as gone:
            if gone.status == 404:
                raise ServerError(
                    f"run {self.state.run_id} no longer exists on the server (deleted?); the local store keeps "
                    f"run {self.run_dir.name}: remove {self._state_path} to upload it again as a new run",
                    404,
                ) from None
            raise

    def _dead_letter(self, what: str, reason: ServerError | str) -> None:
        if isinstance(reason, ServerError):
            reason = f"refused by the server: {reason}"
        log.warning("run %s: %s is skipped: %s", self.run_dir.name, what, reason)
        entry = {"what": what, "reason": reason, "time_us": time.time_ns() // 1000}
        self.state.dead_letters.append(entry)
        self._save()

    def _post_dead_letters(self) -> None:
        """Report new dead letters as events in the run (each once)."""
        todo = len(self.state.dead_letters) - self.state.dead_posted
        if todo and self.state.pending is None and self.state.run_id is not None:
            self._send_dead_letters({"kind": "dead", "n": todo, "before": self.state.events_sent}, skip=0)

    def _send_dead_letters(self, pending: dict[str, Any], skip: int) -> None:
        self._note_pending(pending)
        first = self.state.dead_posted
        todo = self.state.dead_letters[first : first + int(pending["n"])]
        events = [
            {
                "message": f"simvue_hpc: {d['what']} was not uploaded: {d['reason']}",
                "timestamp": format_timestamp(int(d["time_us"])),
                "log_level": "error",
            }
            for d in todo[skip:]
        ]
        refused = self._post_items_quietly(events)
        self.state.dead_posted = first + len(todo)
        self.state.events_sent = int(pending["before"]) + len(todo) - refused
        self.state.pending = None
        self._save()

    def _post_items_quietly(self, events: list[dict[str, Any]]) -> int:
        if not events:
            return 0
        try:
            self._call(self.client.post_events, self.state.run_id, events)
        except ServerError as exc:
            if not is_rejection(exc.status):
                raise
            log.warning("run %s: the server refused the dead-letter events too: %s", self.run_dir.name, exc)
            return len(events)
        return 0
