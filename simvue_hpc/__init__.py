"""simvue_hpc: every process of an HPC job records into one Simvue run through one aggregator.

>>> from simvue_hpc import Simvue
>>> with Simvue() as run:                                  # doctest: +SKIP
...     run.init(name="heat-2d", folder="/studies/heat")
...     run.log({"residual": 1e-3})
"""

__version__ = "0.1.0"

from .api import Simvue, attach, current_run, init_worker
from .errors import (
    AggregatorUnreachable,
    ConfigurationError,
    RunAborted,
    SimvueHPCError,
)

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
