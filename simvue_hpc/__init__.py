"""simvue_hpc: every process of an HPC job records into one Simvue run through one aggregator.

>>> from simvue_hpc import Simvue
>>> with Simvue() as run:                                  # doctest: +SKIP
...     run.init(name="heat-2d", folder="/studies/heat")
...     run.log({"residual": 1e-3})

The names below are loaded lazily (PEP 562), so that importing the pure core
(``simvue_hpc.protocol``, the reductions, the state machine) or running ``simvue-hpc list``
needs neither zmq nor the uploader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import AggregatorUnreachable, ConfigurationError, RunAborted, SimvueHPCError

if TYPE_CHECKING:
    from .api import Simvue, attach, current_run, init_worker

_LAZY = {"Simvue": ".api", "attach": ".api", "current_run": ".api", "init_worker": ".api"}

__all__ = [
    "AggregatorUnreachable",
    "ConfigurationError",
    "RunAborted",
    "Simvue",
    "SimvueHPCError",
    "__version__",
    "attach",
    "current_run",
    "init_worker",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simvue_hpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
