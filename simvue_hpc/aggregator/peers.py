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
    received_points: int = 0
    sent_points: int = 0
    dropped_points: int = 0
    start_time: int = 0  # the process's start (clock ticks since boot) and pid namespace; 0: unknown
    pid_ns: int = 0

    def sequence(self, seq: int) -> int:
        """Take the sequence number of the link's next message; returns how many messages went missing
        before it (the numbers wrap at 2**32)."""
        gap = (seq - self.next_seq) & 0xFFFFFFFF
        self.next_seq = (seq + 1) & 0xFFFFFFFF
        return gap if gap < 0x80000000 else 0


class Roster:
    """Every peer by identity and by rank; ``expected`` is the world size (None in a pool)."""

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.by_identity: dict[bytes, Peer] = {}
        self.by_rank: dict[int, Peer] = {}
        self.relayed: dict[int, int] = {}  # a node relay's rank -> the ranks joined behind it
        self.live_count = 0  # kept as links come, go and change state: O(1) to read

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.by_identity.values())

    def get(self, identity: bytes) -> Peer | None:
        return self.by_identity.get(identity)

    def add(self, peer: Peer) -> list[Peer]:
        """Register ``peer``, forgetting an older link of the same identity or of the same rank; returns
        the links forgotten."""
        gone = []
        old = self.by_identity.pop(peer.identity, None)
        if old is not None:
            self.by_rank.pop(old.rank, None)
            gone.append(old)
        existing = self.by_rank.get(peer.rank)
        if existing is not None:  # the rank reconnected after closing or being lost: forget the old link
            self.by_identity.pop(existing.identity, None)
            gone.append(existing)
        self.by_identity[peer.identity] = peer
        self.by_rank[peer.rank] = peer
        self.live_count += (peer.state == LIVE) - sum(p.state == LIVE for p in gone)
        return gone

    def set_state(self, peer: Peer, state: str) -> None:
        """A registered link becomes live, closed or lost."""
        self.live_count += (state == LIVE) - (peer.state == LIVE)
        peer.state = state

    def live(self) -> Iterator[Peer]:
        return (p for p in self.by_identity.values() if p.state == LIVE)

    def unfinished(self) -> tuple[list[int], list[int]]:
        """At the end: the ranks still live (no goodbye), and the expected ranks that never joined."""
        live = sorted(p.rank for p in self.live())
        never = [] if self.all_joined() else [r for r in range(self.expected or 0) if r not in self.by_rank]
        return live, never

    def all_joined(self) -> bool:
        """Every expected rank has joined (always true in a pool)."""
        joined = len(self.by_rank) - len(self.relayed) + sum(self.relayed.values())
        return self.expected is None or joined >= self.expected
