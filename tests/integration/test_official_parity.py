"""The official client (``simvue==2.6.2``) and simvue_hpc run the same script against the test server:
their write requests may differ only in additive fields (documented in the README's Simvue section).

"Additive": every request the official client writes has a counterpart from simvue_hpc with the same
method and path, whose body holds every field of the official one with the same value and type (ints
stay ints); simvue_hpc may send more fields, more metric values and more requests. Values that differ
by nature are compared by presence only: ids, times, the working directory, and the ``system`` block
(each client describes the machine its own way). The official client's ``metadata.python`` (its
capture of the Python environment) is the one documented exception.
"""

from __future__ import annotations

import pathlib
import re
from collections import Counter
from typing import Any

import pytest

from tests.server import SimvueTestServer

simvue = pytest.importorskip("simvue")

pytest_plugins = ["tests.server.fixtures"]
pytestmark = pytest.mark.timeout(120)

ID = re.compile(r"^[A-Za-z0-9]{22}$")
VOLATILE = {"timestamp", "time", "endtime", "started", "cwd", "original_path", "heartbeat_timeout"}
OFFICIAL_ONLY = {"metadata.python"}  # the official client's capture of the Python environment


def official_script(path: pathlib.Path) -> None:
    with simvue.Run() as run:
        run.config(abort_on_alert="ignore")
        run.init(name="same-script", folder="/compare", metadata={"nx": 64}, tags=["t1"], description="d")
        for step in range(3):
            run.log_metrics({"count": step * 10, "residual": 1.0 / (step + 1)})
        run.log_event("converged")
        run.save_file(path, category="input")
        run.create_metric_threshold_alert(
            name="too-high", metric="residual", threshold=5.0, rule="is above", frequency=1, window=1
        )


def simvue_hpc_script(path: pathlib.Path) -> None:
    from simvue_hpc import Simvue

    with Simvue() as run:
        run.init(name="same-script", folder="/compare", metadata={"nx": 64}, tags=["t1"], description="d")
        for step in range(3):
            run.log({"count": step * 10, "residual": 1.0 / (step + 1)})
        run.event("converged")
        run.save(path, "input")
        run.add_alert("too-high", "is above", "residual", frequency=1, window=1, threshold=5.0)


def writes(server: SimvueTestServer) -> list[tuple[str, str, Any]]:
    """(method, path with ids as {id}, decoded body) of every write request that was answered."""
    out = []
    for r in server.requests_log():
        if r.method in ("POST", "PUT") and r.status is not None and r.status < 300:
            path = "/".join("{id}" if ID.match(part) else part for part in r.path.split("/"))
            out.append((r.method, path, r.decoded()))
    return out


def additive(official: Any, ours: Any, where: str = "") -> list[str]:
    """Where ``ours`` is not ``official`` plus additions (empty: it is)."""
    key = where.rpartition(".")[2]
    if where.lstrip(".") in OFFICIAL_ONLY:
        return []
    if official is None:
        return []  # an absent value: anything may stand in for it
    if key in VOLATILE:
        return [] if ours is not None else [f"{where}: missing"]
    if key == "system":
        missing = set(official) - set(ours or {})
        return [f"{where}: missing {sorted(missing)}"] if missing else []
    if isinstance(official, str) and ID.match(official):
        return [] if isinstance(ours, str) and ID.match(ours) else [f"{where}: {ours!r} is not an id"]
    if isinstance(official, dict):
        if not isinstance(ours, dict):
            return [f"{where}: {ours!r} is not a map"]
        return [p for k, v in official.items() for p in additive(v, ours.get(k), f"{where}.{k}")]
    if isinstance(official, list):
        if not isinstance(ours, list) or len(ours) != len(official):
            return [f"{where}: {ours!r} is not like {official!r}"]
        return [p for i, (a, b) in enumerate(zip(official, ours, strict=True)) for p in additive(a, b, f"{where}[{i}]")]
    if type(official) is not type(ours) or official != ours:
        return [f"{where}: {ours!r} ({type(ours).__name__}) instead of {official!r} ({type(official).__name__})"]
    return []


def metric_points(requests: list[tuple[str, str, Any]]) -> dict[tuple[str, int], Any]:
    return {
        (name, m["step"]): value
        for method, path, body in requests
        if path == "/api/metrics"
        for m in body["metrics"]
        for name, value in m["values"].items()
    }


def events(requests: list[tuple[str, str, Any]]) -> Counter[tuple[str, str]]:
    return Counter(
        (e["message"], e["log_level"]) for _, path, body in requests if path == "/api/events" for e in body["events"]
    )


def test_official_client_and_simvue_hpc_differ_only_in_additive_fields(
    simvue_env: SimvueTestServer, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = simvue_env
    data = pathlib.Path("input.txt")
    data.write_text("alpha\n")
    official_script(data.absolute())
    theirs = writes(server)
    with SimvueTestServer(tmp_path / "second.sqlite") as second:  # a fresh server: nothing to deduplicate
        monkeypatch.setenv("SIMVUE_URL", second.url)
        monkeypatch.setenv("SIMVUE_TOKEN", second.token)
        monkeypatch.setenv("SIMVUE_OFFLINE_DIRECTORY", str(tmp_path / "store"))
        simvue_hpc_script(data.absolute())
        ours = writes(second)

    # every kind of write the official client makes, simvue_hpc makes too
    kinds = {(m, p) for m, p, _ in theirs}
    assert kinds <= {(m, p) for m, p, _ in ours}, kinds - {(m, p) for m, p, _ in ours}

    # each official body has a counterpart that holds it, plus additions
    for method, path, body in theirs:
        if path in ("/api/metrics", "/api/events") or not isinstance(body, dict):
            continue
        candidates = [b for m, p, b in ours if (m, p) == (method, path)]
        problems = [additive(body, b) for b in candidates]
        assert any(not p for p in problems), f"{method} {path}: {min(problems, key=len)}"

    # data: the same points with the same values and types, the same events, verbatim
    official_points, our_points = metric_points(theirs), metric_points(ours)
    for point, value in official_points.items():
        assert point in our_points, point
        assert (type(our_points[point]), our_points[point]) == (type(value), value), point
    assert events(theirs) == events(ours)
