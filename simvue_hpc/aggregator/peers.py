"""The ranks the aggregator knows: one :class:`Peer` per link, indexed by ZeroMQ identity and by rank."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)
LIVE, CLOSED, LOST = "live", "closed", "lost"


@dataclass
class Peer:
    """One rank's link: who it is, its state and what it has sent."""

    identity: bytes
    rank: int
    host: str
    pid: int
    last_seen: float
    next_seq: int = 1
    state: str = LIVE
    progress: int = INT64_MIN  # the largest step it has sent
    received_points: int = 0
    sent_points: int = 0
    dropped_points: int = 0


class Roster:
    """Every peer by identity and by rank; ``expected`` is the world size (None in a pool)."""

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.by_identity: dict[bytes, Peer] = {}
        self.by_rank: dict[int, Peer] = {}

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.by_identity.values())

    def get(self, identity: bytes) -> Peer | None:
        return self.by_identity.get(identity)

    def add(self, peer: Peer) -> None:
        """Register ``peer``, forgetting an older link of the same identity or of the same rank."""
        old = self.by_identity.pop(peer.identity, None)
        if old is not None:
            self.by_rank.pop(old.rank, None)
        existing = self.by_rank.get(peer.rank)
        if existing is not None:  # the rank reconnected after closing or being lost: forget the old link
            self.by_identity.pop(existing.identity, None)
        self.by_identity[peer.identity] = peer
        self.by_rank[peer.rank] = peer

    def live(self) -> Iterator[Peer]:
        return (p for p in self.by_identity.values() if p.state == LIVE)

    def all_joined(self) -> bool:
        """Every expected rank has joined (always true in a pool)."""
        return self.expected is None or len(self.by_rank) >= self.expected
