"""The command registry of the ``simvue-hpc`` console script, its parser and its entry point.

Each subcommand is one function decorated with :func:`command`, which registers its name, its
help (the docstring's first line) and its arguments; ``main`` builds the parser from that registry.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SimvueHPCError
from ..store import default_root

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class _Command:
    name: str
    handler: Handler
    arguments: tuple[tuple[tuple[str, ...], dict[str, Any]], ...]


_COMMANDS: list[_Command] = []


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argument of a subcommand, as given to ``ArgumentParser.add_argument``."""
    return flags, kwargs


def command(name: str, *arguments: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[Handler], Handler]:
    """Register a subcommand handler under name with its arguments."""

    def register(handler: Handler) -> Handler:
        _COMMANDS.append(_Command(name, handler, arguments))
        return handler

    return register


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="simvue-hpc",
        description="Inspect the simvue_hpc runs in the local store and upload them to a Simvue server.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="the local store (default: $SIMVUE_OFFLINE_DIRECTORY, else $XDG_DATA_HOME/simvue_hpc)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in _COMMANDS:
        doc = (cmd.handler.__doc__ or "").strip()
        p = sub.add_parser(cmd.name, help=doc.splitlines()[0] if doc else None, description=doc or None)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simvue-hpc``; returns the exit code (1 on a simvue_hpc error)."""
    args = build_parser().parse_args(argv)
    if args.root is None:
        args.root = default_root()
    try:
        code: int = args.handler(args)
        sys.stdout.flush()
    except SimvueHPCError as exc:
        print(f"simvue-hpc: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
