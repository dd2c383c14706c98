"""The one exception tree of simvue_hpc.

Every error the package raises on purpose is a :class:`SimvueHPCError`; bad input is also a
:class:`ValueError`, so callers may catch either::

    SimvueHPCError
    ├── ConfigurationError (+ValueError)   invalid settings or input: names the field and the rule
    ├── ProtocolError                      a frame that does not follow docs/protocol.md
    │   └── ProtocolVersionError           the peer speaks another protocol version
    ├── TransportError                     ZeroMQ could not bind, connect or deliver in time
    │   └── AggregatorUnreachable          no answer from the aggregator within the timeout
    ├── RoleError                          the process cannot tell its place in the job
    ├── StoreError                         the local store is unreadable or not ours
    │   ├── RunNotFound                    no run in the store matches the given id or name
    │   └── StoreFull                      the disk under the store is full (ENOSPC, EDQUOT)
    ├── ServerError                        the Simvue server answered with an error
    │   ├── AuthenticationError            the token was rejected (401/403)
    │   ├── ValidationError (+ValueError)  the server refused a field (422): never retried
    │   └── ServerUnavailable              timeouts, connection errors, 5xx after all retries
    │       └── OutcomeUnknown             a request may or may not have been processed: reconcile first
    ├── MissingExtra (+ImportError)        an optional dependency is missing: names the extra to install
    ├── RunAborted                         the run was asked to stop
    └── RunStopped                         the run no longer accepts data from this process: the reason says why
        ├── AggregatorLost                 the aggregator died and could not be replaced
        └── ReporterDied                   this process's sending thread died (the cause is chained)

Foreign exceptions (zmq, requests, OSError of the store) are mapped into this tree once, at the
boundary of the module that owns the foreign library.
"""

from __future__ import annotations


class SimvueHPCError(Exception):
    """Base of every error raised by simvue_hpc."""


class ConfigurationError(SimvueHPCError, ValueError):
    """Invalid settings or input; the message names the field and the rule it broke."""


class ProtocolError(SimvueHPCError):
    """A message that does not follow the wire protocol."""


class ProtocolVersionError(ProtocolError):
    """The peer speaks a protocol version this side does not."""


class TransportError(SimvueHPCError):
    """ZeroMQ failed to bind, connect or deliver within its timeout."""


class AggregatorUnreachable(TransportError):
    """The aggregator did not answer within the timeout."""


class RoleError(SimvueHPCError):
    """The process cannot determine its role in the job (rank, size, aggregator endpoint)."""


class StoreError(SimvueHPCError):
    """The local store is unreadable, corrupt beyond its torn tail, or not a simvue_hpc store."""


class RunNotFound(StoreError):
    """No run in the store matches the given id or name."""


class ServerError(SimvueHPCError):
    """The Simvue server answered with an error; ``status`` is its HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(ServerError):
    """The server rejected the token."""


class ValidationError(ServerError, ValueError):
    """The server refused a field (HTTP 422); never retried."""


class ServerUnavailable(ServerError):
    """The server could not be reached or kept failing after every retry."""


class OutcomeUnknown(ServerUnavailable):
    """A request that is not safe to repeat failed after it may have been processed (a lost answer,
    a timeout, a gateway error): the caller reads the server's state back before sending again."""


class RunAborted(SimvueHPCError):
    """The run was asked to stop (abort flag on the server or an alert with abort)."""


class StoreFull(StoreError):
    """The disk under the store is full: what was written before stays readable."""


class RunStopped(SimvueHPCError):
    """The run no longer accepts data from this process; raised once, later calls drop and count."""


class AggregatorLost(RunStopped):
    """The aggregator died and could not be replaced."""


class ReporterDied(RunStopped):
    """This process's sending thread died; the original exception is chained as ``__cause__``."""


class MissingExtra(SimvueHPCError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, extra: str, package: str, purpose: str) -> None:
        super().__init__(f"{purpose} needs {package}, which is not installed: pip install 'simvue_hpc[{extra}]'")
        self.extra = extra
        self.package = package
