"""The ``simvue-hpc`` console script: inspect, plot and upload the runs of the local store.

Each module registers its subcommands with :func:`.app.command`; importing them here builds
the registry that :func:`main` parses with.
"""

from __future__ import annotations

from . import run, runs, sync, view
from .app import build_parser, main

__all__ = ["build_parser", "main", "run", "runs", "sync", "view"]
