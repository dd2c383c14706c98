"""A rank's sent-but-unacknowledged messages, resent to an aggregator that restarted.

The aggregator acknowledges (protocol ``ACK``) the highest sequence of a link whose messages are all in
the store; until then the rank keeps them here. After a restart the rank connects again, says HELLO
with ``resume`` and resends what is left, in order, under new sequence numbers. The buffer is bounded
(``resend_buffer_points``, a message without points costing one): past it the oldest messages are
forgotten, counted in :attr:`ResendBuffer.forgotten_points` and reported once, never silently; a restart
may then lose them. Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections import deque

from .protocol import (
    AlertDefinition,
    AlertState,
    Event,
    FolderDetails,
    Goodbye,
    Message,
    MetricBatch,
    RunUpdate,
    Status,
)

SEQ_MASK = 0xFFFFFFFF
# What is stored and so worth resending; heartbeats, resource samples and file transfers are not
# (a save in flight when the aggregator dies fails, and may be tried again).
RESENT = (MetricBatch, Event, RunUpdate, FolderDetails, AlertDefinition, AlertState, Status, Goodbye)


def resendable(message: Message) -> bool:
    return isinstance(message, RESENT)


class ResendBuffer:
    """Messages sent on the current link and not acknowledged yet, oldest first."""

    def __init__(self, max_points: int) -> None:
        if max_points < 1:
            raise ValueError("resend_buffer_points must be at least 1")
        self.max_points = max_points
        self._items: deque[tuple[int, Message, int]] = deque()  # (seq, message, points)
        self._cost = 0
        self.points = 0  # points held
        self.acked_points = 0  # points acknowledged in all, over every link
        self.forgotten_points = 0  # points forgotten unacknowledged because the buffer was full
        self.forgotten_messages = 0
        self.overflowed = False  # set the first time the bound is passed (the caller reports it once)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, seq: int, message: Message, points: int) -> str | None:
        """Message ``seq`` was queued for the aggregator. Returns, the first time the bound is passed,
        what to report (logged and recorded by the caller)."""
        self._items.append((seq, message, points))
        self._cost += max(points, 1)
        self.points += points
        while self._cost > self.max_points and len(self._items) > 1:
            _, _, old = self._items.popleft()
            self._cost -= max(old, 1)
            self.points -= old
            self.forgotten_points += old
            self.forgotten_messages += 1
            if not self.overflowed:
                self.overflowed = True
                return (
                    f"more than {self.max_points} point(s) sent and not yet acknowledged as stored "
                    "(resend_buffer_points): the oldest are no longer kept for resending, and a restart "
                    "of the aggregator may lose them"
                )
        return None

    def ack(self, seq: int) -> int:
        """The aggregator stored every message up to ``seq``: forget them; returns their points."""
        freed = 0
        while self._items and ((seq - self._items[0][0]) & SEQ_MASK) < 0x80000000:
            _, _, points = self._items.popleft()
            self._cost -= max(points, 1)
            self.points -= points
            freed += points
        self.acked_points += freed
        return freed

    def take(self) -> list[tuple[Message, int]]:
        """Everything held, oldest first, to resend on a new link (where it gets new sequence numbers
        and is added again)."""
        items = [(message, points) for _, message, points in self._items]
        self._items.clear()
        self._cost = self.points = 0
        return items
