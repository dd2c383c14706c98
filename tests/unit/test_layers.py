"""The import rules hold at run time: the pure core imports with zmq, requests, psutil and mpi4py absent.

The pure modules are read from the import-linter contract in pyproject.toml, so the static check
(`lint-imports`) and this one always cover the same modules.
"""

from __future__ import annotations

import fnmatch
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import simvue_hpc

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("zmq", "requests", "psutil", "mpi4py")


def _contract() -> dict[str, Any]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "forbidden"]
    return contract


def pure_modules() -> list[str]:
    """Every module the forbidden contract covers, wildcards expanded, ignored importers left out."""
    contract = _contract()
    shells = {rule.split(" -> ")[0] for rule in contract.get("ignore_imports", ())}
    every = [m.name for m in pkgutil.walk_packages(simvue_hpc.__path__, "simvue_hpc.")]
    found: list[str] = []
    for pattern in contract["source_modules"]:
        matches = [m for m in every if fnmatch.fnmatchcase(m, pattern)] if "*" in pattern else [pattern]
        assert matches, f"{pattern} names no module"
        found += [m for m in matches if m not in shells]
    return sorted(set(found))


def test_the_contract_forbids_the_io_packages() -> None:
    forbidden = set(_contract()["forbidden_modules"])
    assert set(BLOCKED) <= forbidden
    assert {"simvue_hpc.transport", "simvue_hpc.store", "simvue_hpc.server", "simvue_hpc.upload"} <= forbidden
    assert {"simvue_hpc.protocol", "simvue_hpc.aggregator.state", "simvue_hpc.aggregator.reduce"} <= set(pure_modules())


BLOCKER = textwrap.dedent(
    """
    import importlib, sys

    BLOCKED = {blocked!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: the pure core must not import it")
            return None

    sys.meta_path.insert(0, Blocker())
    for module in {modules!r}:
        importlib.import_module(module)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("imported", len({modules!r}))
    """
)


def _import_blocked(modules: list[str]) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=BLOCKED, modules=modules)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_pure_modules_import_with_io_packages_blocked() -> None:
    modules = pure_modules()
    proc = _import_blocked(modules)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"imported {len(modules)}"


def test_the_blocker_does_block() -> None:
    """The same harness fails on a module that does need zmq, so the test above can fail."""
    proc = _import_blocked(["simvue_hpc.transport"])
    assert proc.returncode != 0 and "zmq is blocked" in proc.stderr
