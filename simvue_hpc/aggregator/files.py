"""Files sent by the ranks: offers, chunks in order, one transfer per content, waiters for the same content.

A file is known by its sha256. The first rank to offer new content sends it (``need``); ranks offering
the same content meanwhile wait and are answered when it is stored; content already stored is answered
``stored`` at once. Each (sha256, name, category) is recorded once. Pure: the bytes are written by the
loop (``FileWrite``), which reports the commit's outcome back through :meth:`FileTransfers.done`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..names import is_sha256
from ..protocol import FileChunk, FileOffer, FileReply
from ..records import RecordType
from .actions import Action, Append, FileDiscard, FileWrite, Reply


@dataclass(frozen=True, slots=True)
class _Sender:
    identity: bytes
    offer: FileOffer
    rank: int
    host: str


@dataclass
class _Transfer:
    owner: _Sender
    offset: int = 0
    complete: bool = False  # the final chunk has come; the commit is under way
    waiters: list[_Sender] = field(default_factory=list)


class FileTransfers:
    """The run's stored files and the transfers under way."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._records: set[tuple[str, str, str]] = set()
        self._transfers: dict[str, _Transfer] = {}

    def offer(self, identity: bytes, rank: int, host: str, offer: FileOffer, out: list[Action]) -> None:
        """A rank offers a file: ``need`` it, answer ``stored``, or queue the rank behind the sender."""
        sha = offer.sha256
        sender = _Sender(identity, offer, rank, host)
        if not is_sha256(sha):
            out.append(Reply(identity, FileReply(sha, "error", "sha256 must be 64 lowercase hex digits")))
        elif sha in self._files:
            self._record(sender, out)
            out.append(Reply(identity, FileReply(sha, "stored")))
        elif sha in self._transfers:
            self._transfers[sha].waiters.append(sender)
        else:
            self._transfers[sha] = _Transfer(sender)
            out.append(Reply(identity, FileReply(sha, "need")))

    def chunk(self, identity: bytes, chunk: FileChunk, out: list[Action]) -> None:
        """The next chunk of a transfer: written if in order, else the transfer fails."""
        transfer = self._transfers.get(chunk.sha256)
        if transfer is None or transfer.owner.identity != identity:
            out.append(Reply(identity, FileReply(chunk.sha256, "error", "no transfer of this file is open")))
            return
        if (
            transfer.complete
            or chunk.offset != transfer.offset
            or transfer.offset + len(chunk.data) > transfer.owner.offer.size
        ):
            out.append(FileDiscard(chunk.sha256))
            out.append(Reply(identity, FileReply(chunk.sha256, "error", "chunk out of order or past the size")))
            del self._transfers[chunk.sha256]
            self._promote_waiter(transfer, out)
            return
        transfer.offset += len(chunk.data)
        transfer.complete = chunk.final
        out.append(FileWrite(chunk.sha256, chunk.offset, chunk.data, chunk.final))

    def done(self, sha256: str, ok: bool, reason: str = "") -> list[Action]:
        """Outcome of committing a received file (after the ``FileWrite`` with ``final``)."""
        out: list[Action] = []
        transfer = self._transfers.pop(sha256, None)
        if transfer is None:
            return out
        if ok:
            self._files.add(sha256)
            for sender in (transfer.owner, *transfer.waiters):
                self._record(sender, out)
                out.append(Reply(sender.identity, FileReply(sha256, "stored")))
        else:
            out.append(Reply(transfer.owner.identity, FileReply(sha256, "error", reason)))
            self._promote_waiter(transfer, out)
        return out

    def forget(self, identity: bytes, out: list[Action]) -> None:
        """A rank closed or was lost: its transfers are discarded (the next waiter sends) and it waits no more."""
        for sha, transfer in list(self._transfers.items()):
            if transfer.owner.identity == identity:
                del self._transfers[sha]
                out.append(FileDiscard(sha))
                self._promote_waiter(transfer, out)
            else:
                transfer.waiters = [w for w in transfer.waiters if w.identity != identity]

    def discard_all(self, out: list[Action]) -> None:
        """The run ends: every open transfer is dropped."""
        out.extend(FileDiscard(sha) for sha in self._transfers)
        self._transfers.clear()

    def _promote_waiter(self, transfer: _Transfer, out: list[Action]) -> None:
        if transfer.waiters:
            first, *rest = transfer.waiters
            self._transfers[first.offer.sha256] = _Transfer(first, waiters=rest)
            out.append(Reply(first.identity, FileReply(first.offer.sha256, "need")))

    def _record(self, sender: _Sender, out: list[Action]) -> None:
        offer = sender.offer
        key = (offer.sha256, offer.name, offer.category)
        if key in self._records:
            return
        self._records.add(key)
        payload = {
            "name": offer.name,
            "category": offer.category,
            "sha256": offer.sha256,
            "size": offer.size,
            "original_path": offer.original_path,
            "mime_type": offer.mime_type,
            "rank": sender.rank,
            "host": sender.host,
            "time_us": offer.time_ns // 1000,
        }
        out.append(Append(RecordType.FILE, payload))
