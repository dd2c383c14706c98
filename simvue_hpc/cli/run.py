"""``simvue-hpc run``: host a run's aggregator around a job's command (the sidecar)."""

from __future__ import annotations

import argparse
import os

from .app import arg, command


@command(
    "run",
    arg("--name", help="the run's name (default: rank 0's init() name, else a generated one)"),
    arg("--folder", default="/", help="the run's folder (default /)"),
    arg("--tag", action="append", default=[], metavar="TAG", help="a tag (repeatable)"),
    arg(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata entry (repeatable); a JSON VALUE (number, true, list) is kept as such",
    ),
    arg("--description", help="the run's description"),
    arg("--ranks", type=int, metavar="N", help="how many ranks will join (recorded missing if they do not)"),
    arg("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the job's command, after --"),
)
def cmd_run(args: argparse.Namespace) -> int:
    """Run COMMAND (srun ./app, mpiexec -n 8 python sim.py...) as one run that its ranks join.

    Hosts the run's aggregator, gives COMMAND the run's endpoint in its environment, forwards its
    output and SIGTERM/SIGINT, records the last lines of its output and sets the run's status from
    its exit code, which is also this command's."""
    from ..sidecar import parse_metadata, run

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    os.environ["SIMVUE_OFFLINE_DIRECTORY"] = str(args.root)  # the run's store, for COMMAND's ranks too
    return run(
        command,
        name=args.name,
        metadata=parse_metadata(args.metadata),
        tags=args.tag,
        description=args.description,
        folder=args.folder,
        ranks=args.ranks,
    )
