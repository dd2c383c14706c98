"""One process holding its own aggregator, over real ZeroMQ, in both aggregator modes."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from simvue_hpc import ConfigurationError, Simvue
from simvue_hpc.store import load_run
from tests.helpers import assert_store_matches, expected, only_run

MODES = ["process", "thread"]


@pytest.mark.parametrize("mode", MODES)
def test_seed_api_round_trip(store: Path, tmp_path: Path, mode: str) -> None:
    result = tmp_path / "result.h5"
    result.write_bytes(b"\x89HDF\r\n" + bytes(range(256)) * 100)
    points = []
    with Simvue(aggregator=mode) as run:
        run.init(name="heat-2d", metadata={"nx": 512}, tags=["mpi"], description="2D heat", folder="/studies/heat")
        for step in range(500):
            r, e = 1.0 / (step + 1), step * 0.25
            run.log({"residual": r, "energy": e})
            points += [("residual", step, r), ("energy", step, e)]
        run.log({"late_metric": 7}, step=10_000)
        points.append(("late_metric", 10_000, 7.0))
        run.event("converged")
        run.save(result, "output")
        run.folder_details("/studies/heat", metadata={"owner": "me"}, tags=["heat"], description="studies")
        run.add_alert("residual high", "is above", "residual", frequency=1, window=2, threshold=10)
    assert run.status == "completed"

    view = only_run(store)
    assert (view.name, view.folder, view.description) == ("heat-2d", "/studies/heat", "2D heat")
    assert view.metadata == {"nx": 512} and view.tags == ["mpi"]
    assert view.status == "completed"
    assert_store_matches(view, expected([points]))
    assert [e["message"] for e in view.events] == ["converged"]
    assert view.events[0]["rank"] == 0 and view.events[0]["host"]
    (saved,) = view.files
    sha = hashlib.sha256(result.read_bytes()).hexdigest()
    assert (saved["name"], saved["category"], saved["sha256"]) == ("result.h5", "output", sha)
    assert (view.run_dir / "files" / sha).read_bytes() == result.read_bytes()
    assert view.alerts[0]["alert"]["threshold"] == 10 and view.alerts[0]["alert"]["rule"] == "is above"
    assert view.folder_details[0]["metadata"] == {"owner": "me"}
    assert view.ranks[0]["state"] == "closed"
    assert view.ranks[0]["sent_points"] == view.ranks[0]["received_points"] == len(points)


def test_generated_name_and_official_aliases(store: Path, tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("x")
    run = Simvue(aggregator="thread")
    run.init()
    assert run.name and "-" in run.name
    run.log_metrics({"a": 1})
    run.log_event("hello")
    run.save_file(src, "input")
    run.close()
    view = only_run(store)
    assert view.name == run.name and view.folder == "/"
    assert [e["message"] for e in view.events] == ["hello"] and view.files[0]["category"] == "input"


def test_exception_marks_run_failed_with_traceback(store: Path) -> None:
    with pytest.raises(ZeroDivisionError), Simvue(aggregator="thread") as run:
        run.init(name="doomed")
        run.log({"x": 1.0})
        1 / 0  # noqa: B018
    view = only_run(store)
    assert view.status == "failed"
    (event,) = [e for e in view.events if e["level"] == "error"]
    assert "ZeroDivisionError" in event["message"] and "Traceback" in event["message"]
    assert event["rank"] == 0


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"bad name!": 1.0}, "metric name 'bad name!'"),
        ({"ok": "1.5"}, "metric 'ok': value must be a real number"),
        ({"ok": None}, "metric 'ok': value must be a real number"),
        ({"ok": 1j}, "metric 'ok': value must be a real number"),
        ({3: 1.0}, "metric names must be strings"),
        ([("a", 1.0)], "metrics must be a mapping"),
    ],
)
def test_bad_log_input_is_a_value_error_and_all_or_nothing(store: Path, metrics: object, message: str) -> None:
    run = Simvue(aggregator="thread")
    run.init(name="validation")
    run.log({"good": 1.0, "ok": 2.0})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run.log({"good": 5.0, **metrics} if isinstance(metrics, dict) else metrics)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        run.log({"good": 1.0}, step=-1)
    run.close()
    view = only_run(store)
    assert view.metrics["good"].value.tolist() == [1.0]  # the bad call stored nothing


def test_special_values_bools_and_numpy_scalars(store: Path) -> None:
    np = pytest.importorskip("numpy")
    run = Simvue(aggregator="thread")
    run.init(name="values")
    run.log({"nan": math.nan, "inf": math.inf, "flag": True, "np32": np.float32(1.5), "np64": np.int64(7),
             "huge": 10**400})  # fmt: skip
    run.close()
    m = load_run(only_run(store).run_dir).metrics
    assert math.isnan(m["nan"].value[0]) and m["inf"].value[0] == math.inf
    assert (m["flag"].value[0], m["np32"].value[0], m["np64"].value[0]) == (1.0, 1.5, 7.0)
    assert m["huge"].value[0] == math.inf


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.save("/nonexistent/file", "output"), "is not a readable file"),
        (lambda r: r.save(__file__, "results"), "category must be one of code, input, output"),
        (lambda r: r.add_alert("a", "is above", "x", 1, 1), "needs a threshold"),
        (lambda r: r.add_alert("a", "is sideways", "x", 1, 1, threshold=1), "rule 'is sideways'"),
        (lambda r: r.add_alert("a", "is inside range", "x", 1, 1, range_low=2, range_high=1), "must be below"),
        (lambda r: r.add_alert("a", "is below", "x", 1, 0, threshold=1), "window must be a positive integer"),
        (lambda r: r.folder_details("relative"), "must be a path starting with '/'"),
    ],
)
def test_bad_input_to_other_calls(store: Path, call: object, message: str) -> None:
    run = Simvue(aggregator="thread")
    run.init(name="validation")
    with pytest.raises(ConfigurationError, match=message):
        call(run)  # type: ignore[operator]
    run.close()


def test_bad_init_and_settings() -> None:
    with pytest.raises(ValueError, match="flush_interval must be a positive number"):
        Simvue(flush_interval=0)
    with pytest.raises(ValueError, match="aggregator must be one of process, thread"):
        Simvue(aggregator="fork")
    with pytest.raises(ValueError, match="reductions\\['x'\\]: 'median' is not one of"):
        Simvue(reductions={"x": "median"})
    run = Simvue()
    with pytest.raises(ValueError, match="name 'a\\*b'"):
        run.init(name="a*b")
    with pytest.raises(ValueError, match="tags: 'no,commas'"):
        run.init(tags=["no,commas"])


def test_reductions_are_configurable(store: Path) -> None:
    with Simvue(aggregator="thread", reductions={"e": ["sum", "count"], "t": "per_rank"}) as run:
        run.init(name="custom")
        for step in range(5):
            run.log({"e": float(step), "t": 2.0 * step})
    view = only_run(store)
    # one rank: logged as is, whatever the reduction (per_rank keeps the rank's name)
    assert view.metrics["e"].value.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert view.metrics["t/rank_0"].value.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_log_after_close_and_init_twice(store: Path) -> None:
    run = Simvue(aggregator="thread")
    run.init(name="once")
    with pytest.raises(Exception, match="already called"):
        run.init(name="twice")
    run.close()
    with pytest.raises(Exception, match="closed"):
        run.log({"x": 1.0})
    assert run.close() is False  # idempotent


def test_steps_are_int64(store: Path) -> None:
    """A step past int64 used to kill the sending thread: every later point was lost silently."""
    with Simvue(aggregator="thread") as run:
        run.init(name="int64")
        run.log({"a": 1.0}, step=5)
        with pytest.raises(ValueError, match="int64"):
            run.log({"a": 2.0}, step=2**63)
        with pytest.raises(ValueError, match="int64"):
            run.log({"a": 2.5}, step=2**63 - 1)  # the aggregator's marker for "every step"
        run.log({"a": 3.0}, step=2**63 - 2)
        with pytest.raises(ValueError, match="int64"):
            run.log({"a": 4.0})  # the default step would be 2**63 - 1
        run.log({"b": 5.0}, step=6)
    assert run.status == "completed"
    view = only_run(store)
    assert view.metrics["a"].step.tolist() == [5, 2**63 - 2] and view.metrics["b"].value.tolist() == [5.0]


def test_seed_api_to_the_letter(store: Path, tmp_path: Path) -> None:
    """event(obj) records str(obj), an exception with its traceback while handled; messages are
    stored verbatim; save(filename=...); init(folder=None) is the default folder."""
    src = tmp_path / "in.txt"
    src.write_text("x")
    with Simvue(aggregator="thread") as run:
        run.init(name="letter", folder=None)
        run.event("starting")
        run.event(42)
        try:
            raise RuntimeError("solver diverged")
        except RuntimeError as exc:
            run.event(exc)
        run.event(KeyError("k"))  # not being handled: type and message only
        run.save(filename=src, category="input")
    view = only_run(store)
    assert view.folder == "/"
    messages = [e["message"] for e in view.events if e["level"] == "info"]
    assert messages[:2] == ["starting", "42"]
    assert messages[2].startswith("RuntimeError: solver diverged\nTraceback (most recent call last):")
    assert messages[3] == "KeyError: 'k'"
    assert all(e["rank"] == 0 and e["host"] for e in view.events)
    assert view.files[0]["name"] == "in.txt"


def test_alert_minutes_and_redefinitions_are_checked_at_the_call(store: Path) -> None:
    with Simvue(aggregator="thread") as run:
        run.init(name="alerts")
        for bad in ({"frequency": 0.5, "window": 1}, {"frequency": 1, "window": 0}, {"frequency": True, "window": 1}):
            with pytest.raises(ValueError, match="must be a positive integer \\(minutes\\)"):
                run.add_alert("a", "is above", "x", threshold=1, **bad)
        assert run.add_alert("a", "is above", "x", frequency=1, window=2, threshold=1)
        assert run.add_alert("a", "is above", "x", frequency=1, window=2, threshold=1)  # the same again: fine
        with pytest.raises(ValueError, match="'a' is already defined differently"):
            run.add_alert("a", "is above", "x", frequency=1, window=2, threshold=5)
    view = only_run(store)
    assert len(view.alerts) == 1 and view.alerts[0]["alert"]["threshold"] == 1
