"""Helpers shared by the benchmark scripts (not a benchmark itself).

Every benchmark runs in an isolated environment: a fresh temporary HOME and store
(``SIMVUE_OFFLINE_DIRECTORY``), no inherited ``SIMVUE_HPC_*`` variables, so that no user
configuration is read and nothing is written outside the temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def fmt_ns(ns: float) -> str:
    if ns != ns:  # NaN
        return "n/a"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def fmt_rate(per_s: float) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f} k/s"
    return f"{per_s:.1f} /s"


def isolated_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with HOME and the store moved under ``tmp`` and no simvue_hpc run inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE")}
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["XDG_DATA_HOME"] = str(home / ".local" / "share")
    env["SIMVUE_OFFLINE_DIRECTORY"] = str(tmp / "store")
    env["SIMVUE_HPC_MPI"] = "0"  # never pick up an MPI world by accident
    # numpy/OpenBLAS: the machine's tuning variables are not wanted by these benchmarks
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
    return env


def isolate_this_process(tmp: Path) -> None:
    """Apply :func:`isolated_env` to this process (call it before simvue_hpc starts any run)."""
    for key in [k for k in os.environ if k.startswith("SIMVUE")]:
        del os.environ[key]
    env = isolated_env(tmp)
    for key in ("HOME", "XDG_DATA_HOME", "SIMVUE_OFFLINE_DIRECTORY", "SIMVUE_HPC_MPI"):
        os.environ[key] = env[key]
    os.chdir(env["HOME"])  # no simvue.toml of the working directory or its parents is read either


class TempRoot:
    """A temporary directory removed on exit unless ``keep``."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: Any) -> None:
        if self.keep:
            print(f"(kept {self.path})")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} | {platform.node()} | {cpu} | {os.cpu_count()} cores | "
        f"Python {platform.python_version()} | {platform.system()} {platform.release()}"
    )


def code_version() -> str:
    """The commit of the working tree, and whether simvue_hpc/ differs from it (read-only git)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "simvue_hpc"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (f" + {len(dirty.splitlines())} uncommitted change(s) in simvue_hpc/" if dirty else "")


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   {machine_line()}")
    print(f"   simvue_hpc: {code_version()}")
    load = _loadavg()
    if load:
        print(f"   load average at start: {load}")


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return ""


def table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> None:
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for j, row in enumerate(cells):
        cols = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print("   " + "  ".join(cols))
        if j == 0:
            print("   " + "  ".join("-" * w for w in widths))


def emit_json(obj: dict[str, Any]) -> None:
    """One machine-readable line (prefixed so it is easy to grep out of the output)."""
    print("RESULT " + json.dumps(obj, sort_keys=True), flush=True)


def fake_jwt(ttl_s: int = 86400) -> str:
    """A JWT-shaped token that the official client's offline mode accepts (it only decodes ``exp``)."""
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "benchmark", "exp": int(time.time()) + ttl_s}).encode())
    return f"{head}.{body}.{b64(os.urandom(32))}"


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["step_timeout=1", "transport=ipc"]`` -> keyword arguments for ``Simvue(...)``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants NAME=VALUE, got {item!r}")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def add_settings_args(ap: argparse.ArgumentParser) -> None:
    """``--set NAME=VALUE`` (repeatable, read by :func:`parse_settings`) and ``--keep``."""
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a simvue_hpc setting for the run, e.g. --set step_timeout=1 (repeatable)",
    )
    ap.add_argument("--keep", action="store_true")


def metric_payloads(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The payloads of a stored run's metric records, in the order they were written."""
    from simvue_hpc.records import RecordType
    from simvue_hpc.store import RECORDS_NAME, read_records

    for rec in read_records(run_dir / RECORDS_NAME):
        if rec.type == RecordType.METRICS:
            yield rec.payload


def python() -> str:
    return sys.executable
