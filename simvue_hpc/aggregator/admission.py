"""Who may join the run and how often anyone hears about a peer's mistakes.

:class:`Admission` checks a HELLO (the run's secret, a rank already connected elsewhere, the cap on
ranks), assigns ranks to those that ask for one, answers peers that skip the HELLO once, shares the
message-rate budget among the ranks (the flush interval of the WELCOME) and rate-limits the reports of
each peer's protocol errors. Pure: the state machine performs what it decides.
"""

from __future__ import annotations

import hmac

from ..config import HPCSettings
from ..protocol import Hello, Reject
from .actions import Action, Reply
from .peers import LIVE, Roster

COMPLAINT_INTERVAL = 60.0  # seconds between two reports of one peer's protocol errors
MAX_REMEMBERED = 10_000  # unknown or complaining peers remembered at once


class Admission:
    """The run's door: see the module docstring."""

    def __init__(
        self,
        secret: str,
        expected: int | None,
        host_rank: int | None,
        settings: HPCSettings,
        roster: Roster,
        counters: dict[str, int],
    ) -> None:
        self._secret = secret.encode()
        self._expected = expected
        self._host_rank = host_rank
        self._settings = settings
        self._roster = roster
        self._counters = counters
        self._rejected: set[bytes] = set()
        self._complaints: dict[bytes, tuple[float, int]] = {}  # peer -> (last reported, not reported since)
        self._refused_told = False
        self.notes: list[str] = []  # for the run's events: the first refusal past the cap

    def admit(self, identity: bytes, hello: Hello, out: list[Action]) -> int | None:
        """The rank ``identity`` will be known by, or None when refused (its REJECT is in ``out``)."""
        if not hmac.compare_digest(hello.secret.encode(), self._secret):
            out.append(Reply(identity, Reject("wrong secret for this run")))
            return None
        rank = hello.rank
        existing = self._roster.by_rank.get(rank) if rank >= 0 else None
        if existing is not None and existing.identity != identity and existing.state == LIVE:
            reason = (
                f"rank {rank} is already connected from {existing.host} (pid {existing.pid}): "
                "are all ranks of this job seeing a world of size 1?"
            )
            out.append(Reply(identity, Reject(reason)))
            return None
        if existing is None and self._full(identity, out):
            return None
        self._rejected.discard(identity)
        if rank >= 0:
            return rank
        # Past the world when there is one; from 1 in a pool (the parent is 0); from 0 under a
        # sidecar, which is no rank itself.
        floor = self._expected or (0 if self._host_rank is None else 1)
        return max([floor - 1, *self._roster.by_rank]) + 1

    def stranger(self, identity: bytes, out: list[Action]) -> None:
        """A message from a peer that has not said HELLO: one REJECT tells it so."""
        if identity in self._rejected:
            return
        if len(self._rejected) >= MAX_REMEMBERED:
            self._rejected.clear()  # a stray peer may then get a second REJECT: harmless
        self._rejected.add(identity)
        out.append(Reply(identity, Reject("send HELLO first")))

    def flush_interval(self) -> float:
        """The shortest interval at which a rank may send METRICS, so that all ranks together stay within
        ``message_rate_budget``: the world size shares it, or in a pool the ranks live now. 0.0 (the
        rank's own default) when that default is already slower."""
        ranks = self._expected or self._roster.live_count
        interval = ranks / self._settings.message_rate_budget
        return interval if interval > self._settings.flush_interval else 0.0

    def report(self, identity: bytes, now: float) -> str | None:
        """Whether to report a protocol error of ``identity`` now: None if one was reported less than
        ``COMPLAINT_INTERVAL`` ago, else a suffix saying how many went unreported since."""
        last, suppressed = self._complaints.get(identity, (None, 0))
        if last is not None and now - last < COMPLAINT_INTERVAL:
            self._complaints[identity] = (last, suppressed + 1)
            return None
        if len(self._complaints) >= MAX_REMEMBERED:
            self._complaints = {k: v for k, v in self._complaints.items() if now - v[0] < COMPLAINT_INTERVAL}
        self._complaints[identity] = (now, 0)
        return f" ({suppressed} more since the last report)" if suppressed else ""

    def _full(self, identity: bytes, out: list[Action]) -> bool:
        """Whether a new rank would pass the cap on ranks (refused and counted if so): the world size plus
        ``peer_margin``, or in a pool ``max_peers`` live at once."""
        if self._expected is not None:
            cap, bound = self._expected + self._settings.peer_margin, "peer_margin"
            full = len(self._roster.by_rank) >= cap
        else:
            cap, bound = self._settings.max_peers, "max_peers"
            full = self._roster.live_count >= cap
        if not full:
            return False
        self._counters["peers_refused"] += 1
        out.append(Reply(identity, Reject(f"the run accepts at most {cap} ranks")))
        if not self._refused_told:
            self._refused_told = True
            self.notes.append(f"a rank was refused: the run accepts at most {cap} ranks (the {bound} bound)")
        return True
