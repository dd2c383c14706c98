"""What a new run is made of: its record, the system and job blocks, and how child processes join it.

Used by the process that hosts a run's aggregator (``Simvue.init`` on the host rank, ``simvue-hpc
run``) and by every rank that starts children (``attach_environment``). Importing this module is
cheap: the aggregator and the server client are imported only when a run is actually made.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import roles
from .config import HPCSettings, ServerSettings
from .names import check_folder, check_metadata, check_run_name, check_tags, generate_name

if TYPE_CHECKING:
    from .aggregator.loop import AggregatorSpec

log = logging.getLogger(__name__)


def run_fields(
    name: str | None,
    metadata: Mapping[str, Any] | None,
    tags: Sequence[str] | None,
    description: str | None,
    folder: str | None,
) -> dict[str, Any]:
    """The user's fields of a new run, checked (ValueError naming the field); ``folder=None`` is ``/``."""
    return {
        "name": check_run_name(name) if name is not None else None,
        "metadata": check_metadata(metadata),
        "tags": check_tags(tags),
        "description": description if description is None else str(description),
        "folder": check_folder("/" if folder is None else folder),
    }


def host_spec(
    run: Mapping[str, Any],
    job: Mapping[str, Any],
    settings: HPCSettings,
    reductions: Mapping[str, list[str]] | None = None,
    *,
    expected_ranks: int | None,
    host_rank: int | None,
) -> AggregatorSpec:
    """A new run's aggregator spec: a fresh id and secret, the RUN record (``run``'s checked fields, a
    generated name if none, the system block and ``job``) and the server settings after one check of
    the server (None offline). Used by the host's ``init`` and by ``simvue-hpc run``."""
    from . import transport
    from .aggregator.loop import AggregatorSpec
    from .store import default_root, new_run_id

    run_id = new_run_id()
    secret, curve_secret = transport.new_credentials()  # the ranks' credential holds their CURVE keys
    name = run["name"] or generate_name()
    record = {
        "id": run_id,
        **run,
        "name": name,
        "created_us": time.time_ns() // 1000,
        "system": system_info(),
        "job": dict(job),
    }
    return AggregatorSpec(
        run_id=run_id,
        run_name=name,
        secret=secret,
        root=str(default_root()),
        run=record,
        expected_ranks=expected_ranks,
        host_rank=host_rank,
        settings=settings,
        reductions=dict(reductions or {}),
        server=checked_server(),
        curve_secret=curve_secret,
    )


def checked_server() -> ServerSettings | None:
    """The server settings for the aggregator, after one check of the server; None when offline.

    An unreachable server is not an error: the run is recorded locally and uploaded when the
    server is back (or by ``simvue-hpc sync``). A rejected token or an unsupported server is."""
    settings = ServerSettings.load()
    if not settings.online:
        return None
    from .errors import ServerUnavailable
    from .server import RetryPolicy, SimvueClient

    client = SimvueClient(settings, policy=RetryPolicy(total=1, backoff_max=1.0))
    try:
        client.check()
    except ServerUnavailable as exc:
        log.warning(
            "%s; the run is recorded locally and uploaded when the server answers (or later with `simvue-hpc sync`)",
            exc,
        )
    finally:
        client.close()
    return settings


def system_info() -> dict[str, Any]:
    """The aggregator host's system block, in the server's format."""
    uname = platform.uname()
    return {
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "pythonversion": platform.python_version(),
        "platform": {"system": uname.system, "release": uname.release, "version": uname.version},
        "cpu": {"arch": uname.machine, "processor": platform.processor() or uname.machine},
        "gpu": None,
    }


def job_info(ranks: int | None, launcher: str, settings: HPCSettings) -> dict[str, Any]:
    """The job's shape, recorded in the run."""
    env = os.environ
    return {
        "ranks": ranks,
        "launcher": launcher,
        "aggregator": settings.aggregator,
        "transport": settings.transport,
        "host": socket.gethostname(),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_nodelist": env.get("SLURM_JOB_NODELIST"),
        "argv": list(sys.argv),
    }


def attach_environment(endpoint: str, secret: str, run_id: str, owner: str) -> dict[str, str]:
    """The variables that make a child process join this run (``roles.detect`` reads them):
    ``owner`` is ``parent`` for pools and subprocesses of a rank, ``sidecar`` under ``simvue-hpc run``."""
    return {roles.ENDPOINT_VAR: endpoint, roles.SECRET_VAR: secret, roles.RUN_VAR: run_id, roles.OWNER_VAR: owner}
