"""Alert definitions (builders, validation) and the pure AlertEvaluator, on an injected clock."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simvue_hpc.alerts import (
    AGGREGATIONS,
    RANGE_RULES,
    THRESHOLD_RULES,
    AlertEvaluator,
    Transition,
    event_alert,
    metric_alert,
    metric_range_alert,
    metric_threshold_alert,
    user_alert,
    validate_definition,
)
from simvue_hpc.errors import ConfigurationError

S = 1_000_000  # microseconds per second
MIN = 60 * S
T0 = 1_700_000_000 * S  # an arbitrary wall-clock start


class Evaluator(AlertEvaluator):
    """The evaluator, with each alert's state folded from the transitions it returns (what the aggregator
    sees of it)."""

    def __init__(self) -> None:
        super().__init__()
        self._states: dict[str, str] = {}

    def add(self, definition: Mapping[str, Any], now_us: int | None = None) -> bool:
        added = super().add(definition, now_us)
        self._states.setdefault(definition["name"], "ok")
        return added

    def evaluate(self, now_us: int) -> list[Transition]:
        return self._fold(super().evaluate(now_us))

    def set_user_state(self, name: str, state: str, now_us: int) -> list[Transition]:
        return self._fold(super().set_user_state(name, state, now_us))

    def _fold(self, transitions: list[Transition]) -> list[Transition]:
        for t in transitions:
            self._states[t.name] = t.status
        return transitions

    def states(self) -> dict[str, str]:
        return dict(self._states)


def kept_bytes(ev: AlertEvaluator) -> int:
    """The size of everything the evaluator holds (its kept points are 16 bytes each)."""
    return len(pickle.dumps(ev))


def feed(ev: AlertEvaluator, metric: str, times_us: list[int] | np.ndarray, values: list[float]) -> None:
    """One stored batch of a single metric."""
    t = np.asarray(times_us, dtype=np.int64)
    ev.observe_metrics([metric], np.zeros(len(t), np.uint32), t, np.asarray(values, dtype=np.float64))


# ============================================================================================ builders
def test_metric_threshold_alert_in_server_format() -> None:
    d = metric_threshold_alert(
        "residual high", "residual", 10, "is above", window=5, frequency=0.5, aggregation="sum",
        notification="email", description="too big", trigger_abort=True,
    )  # fmt: skip
    assert d == {
        "name": "residual high", "description": "too big", "notification": "email", "source": "metrics",
        "enabled": True, "abort": True,
        "alert": {"rule": "is above", "metric": "residual", "frequency": 0.5, "window": 5, "aggregation": "sum",
                  "threshold": 10},
    }  # fmt: skip


def test_window_defaults_to_frequency_and_official_defaults() -> None:
    d = metric_threshold_alert("x", "loss", 1.5, "is below")
    assert d["alert"]["frequency"] == 1 and d["alert"]["window"] == 1
    assert d["alert"]["aggregation"] == "average" and d["notification"] == "none"
    assert d["abort"] is False and d["description"] is None
    r = metric_range_alert("y", "loss", 0, 1, "is inside range", frequency=2.5)
    assert r["alert"]["window"] == 2.5


def test_metric_range_alert_in_server_format() -> None:
    d = metric_range_alert("band", "temp", -1.5, 3, "is outside range", window=2, frequency=1, aggregation="all")
    assert d["source"] == "metrics" and "threshold" not in d["alert"]
    assert d["alert"] == {"rule": "is outside range", "metric": "temp", "frequency": 1, "window": 2,
                          "aggregation": "all", "range_low": -1.5, "range_high": 3}  # fmt: skip


def test_event_alert_in_server_format() -> None:
    d = event_alert("div", "diverged", 0.25, notification="email", description="solver", abort=True)
    assert d == {"name": "div", "description": "solver", "notification": "email", "source": "events",
                 "enabled": True, "abort": True, "alert": {"pattern": "diverged", "frequency": 0.25}}  # fmt: skip
    assert event_alert("div", "diverged", 1, trigger_abort=True)["abort"] is True


def test_user_alert_has_no_alert_key() -> None:
    d = user_alert("manual", description="set by hand", abort=True)
    assert d == {"name": "manual", "description": "set by hand", "notification": "none", "source": "user",
                 "enabled": True, "abort": True}  # fmt: skip
    assert "alert" not in user_alert("m2")
    assert user_alert("m3", trigger_abort=True)["abort"] is True


def test_metric_alert_keeps_its_behaviour() -> None:
    params = list(inspect.signature(metric_alert).parameters)
    assert params == ["name", "rule", "metric", "frequency", "window", "threshold", "range_low", "range_high",
                      "aggregation", "notification", "description", "abort"]  # fmt: skip
    d = metric_alert("a", "is above", "m", 1, 2, 3.0)
    assert d["alert"] == {"rule": "is above", "metric": "m", "frequency": 1, "window": 2, "aggregation": "average",
                          "threshold": 3.0}  # fmt: skip
    assert metric_threshold_alert("a", "m", 3.0, "is above", window=2) == d


@pytest.mark.parametrize(
    ("ours", "official"),
    [
        (metric_threshold_alert, "create_metric_threshold_alert"),
        (metric_range_alert, "create_metric_range_alert"),
        (event_alert, "create_event_alert"),
        (user_alert, "create_user_alert"),
    ],
)
def test_parameter_names_of_the_official_client(ours: Any, official: str) -> None:
    simvue = pytest.importorskip("simvue")
    theirs = set(inspect.signature(getattr(simvue.Run, official)).parameters) - {"self", "attach_to_run"}
    assert theirs <= set(inspect.signature(ours).parameters)


BAD: list[tuple[Any, tuple[Any, ...], dict[str, Any], str]] = [
    # builder, args, kwargs, words the message must contain
    (metric_alert, ("a", "is greater", "m", 1, 1), {"threshold": 1}, "rule 'is greater'"),
    (metric_threshold_alert, ("a", "m", 1, "is inside range"), {}, "rule 'is inside range'"),
    (metric_range_alert, ("a", "m", 0, 1, "is above"), {}, "rule 'is above'"),
    (metric_alert, ("a", "is above", "m", 1, 1), {}, "needs a threshold"),
    (metric_threshold_alert, ("a", "m", None, "is above"), {}, "needs a threshold"),
    (metric_alert, ("a", "is inside range", "m", 1, 1), {"range_low": 0}, "needs range_low and range_high"),
    (metric_range_alert, ("a", "m", 2, 1, "is inside range"), {}, "range_low (2) must be below range_high (1)"),
    (metric_range_alert, ("a", "m", 1, 1, "is outside range"), {}, "must be below range_high"),
    (metric_threshold_alert, ("a", "m", float("nan"), "is above"), {}, "threshold must be a finite number"),
    (metric_range_alert, ("a", "m", 0, float("inf"), "is inside range"), {}, "range_high must be a finite"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"window": 0}, "window must be positive"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"window": -2.5}, "window must be positive"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"window": "5"}, "window must be a finite number"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"window": True}, "window must be a finite number"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"frequency": 0}, "frequency must be positive"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"frequency": -1}, "frequency must be positive"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"frequency": float("nan")}, "frequency must be a finite"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"aggregation": "mean"}, "aggregation must be one of"),
    (metric_range_alert, ("a", "m", 0, 1, "is inside range"), {"aggregation": "max"}, "aggregation must be one of"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"notification": "slack"}, "notification must be one of"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"description": 5}, "description must be a string"),
    (metric_threshold_alert, ("a", "m", 1, "is above"), {"trigger_abort": "yes"}, "trigger_abort must be True"),
    (metric_threshold_alert, ("", "m", 1, "is above"), {}, "alert name must be a non-empty string"),
    (metric_threshold_alert, ("  ", "m", 1, "is above"), {}, "alert name must be a non-empty string"),
    (metric_threshold_alert, ("a", "m!", 1, "is above"), {}, "metric name 'm!'"),
    (metric_threshold_alert, ("a", 3, 1, "is above"), {}, "metric names must be strings"),
    (event_alert, ("e", "", 1), {}, "pattern must be a non-empty string"),
    (event_alert, ("e", None, 1), {}, "pattern must be a non-empty string"),
    (event_alert, ("e", "x", 0), {}, "frequency must be positive"),
    (event_alert, ("e", "x", -0.5), {}, "frequency must be positive"),
    (event_alert, ("e", "x", 1), {"notification": "sms"}, "notification must be one of"),
    (event_alert, ("e", "x", 1), {"abort": 1}, "abort must be True or False"),
    (event_alert, ("e", "x", 1), {"abort": True, "trigger_abort": True}, "not both"),
    (event_alert, (None, "x", 1), {}, "alert name must be a non-empty string"),
    (user_alert, ("",), {}, "alert name must be a non-empty string"),
    (user_alert, ("u",), {"notification": "pager"}, "notification must be one of"),
    (user_alert, ("u",), {"description": ["x"]}, "description must be a string"),
    (user_alert, ("u",), {"trigger_abort": "no"}, "trigger_abort must be True"),
]


@pytest.mark.parametrize(("builder", "args", "kwargs", "words"), BAD)
def test_bad_definitions_are_refused_naming_field_and_rule(
    builder: Any, args: tuple[Any, ...], kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        builder(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    assert words in str(info.value)


# ============================================================================ validate_definition
@pytest.mark.parametrize(
    "definition",
    [
        metric_threshold_alert("t", "m", 1, "is below", window=3, frequency=0.5, aggregation="at least one"),
        metric_range_alert("r", "m", 0, 1, "is inside range", notification="email", trigger_abort=True),
        event_alert("e", "diverged", 2, description="d"),
        user_alert("u", abort=True),
    ],
)
def test_validate_definition_round_trips(definition: dict[str, Any]) -> None:
    assert validate_definition(definition) == definition


def test_validate_definition_fills_window_as_the_server_does() -> None:
    d = metric_threshold_alert("t", "m", 1, "is above", frequency=4)
    del d["alert"]["window"]
    assert validate_definition(d)["alert"]["window"] == 4


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(source="logs"), "source 'logs'"),
        (lambda d: d.update(colour="red"), "unknown field(s) colour"),
        (lambda d: d["alert"].update(when="now"), "unknown field(s) of a metrics alert: when"),
        (lambda d: d["alert"].update(range_low=0), "takes no range_low"),
        (lambda d: d["alert"].pop("threshold"), "needs a threshold"),
        (lambda d: d["alert"].pop("metric"), "metric names must be strings"),
        (lambda d: d["alert"].update(frequency=0), "frequency must be positive"),
        (lambda d: d.pop("alert"), "needs an 'alert' mapping"),
        (lambda d: d.update(enabled="yes"), "enabled must be True or False"),
        (lambda d: d.update(abort=None), "abort must be True or False"),
        (lambda d: d.update(name=""), "alert name must be a non-empty string"),
    ],
)
def test_validate_definition_refuses(change: Any, words: str) -> None:
    d = metric_threshold_alert("t", "m", 1, "is above")
    change(d)
    with pytest.raises(ConfigurationError) as info:
        validate_definition(d)
    assert words in str(info.value)


def test_validate_definition_refuses_shapes() -> None:
    with pytest.raises(ConfigurationError, match="must be a mapping"):
        validate_definition(["not", "a", "dict"])
    with pytest.raises(ConfigurationError, match="a user alert has no 'alert' field"):
        validate_definition(user_alert("u") | {"alert": {}})
    with pytest.raises(ConfigurationError, match="pattern must be a non-empty string"):
        validate_definition(event_alert("e", "x", 1) | {"alert": {"frequency": 1}})
    rng = metric_range_alert("r", "m", 0, 1, "is inside range")
    rng["alert"]["threshold"] = 1
    with pytest.raises(ConfigurationError, match="takes no threshold"):
        validate_definition(rng)


# ================================================================================= the evaluator
# values that satisfy each rule under every aggregation, then values that satisfy it under none
# (threshold 10, range [0, 10])
FIRE_RECOVER = {
    "is above": ([11.0, 12.0], [1.0, 2.0]),
    "is below": ([1.0, 2.0], [11.0, 12.0]),
    "is inside range": ([2.0, 3.0], [20.0, 30.0]),
    "is outside range": ([20.0, 30.0], [2.0, 3.0]),
}


def make(rule: str, aggregation: str = "average", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"frequency": 1, "window": 1, "aggregation": aggregation} | kw
    name = args.pop("name", "a")
    if rule in THRESHOLD_RULES:
        return metric_threshold_alert(name, args.pop("metric", "m"), args.pop("threshold", 10), rule, **args)
    return metric_range_alert(name, args.pop("metric", "m"), args.pop("range_low", 0), args.pop("range_high", 10),
                              rule, **args)  # fmt: skip


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("rule", THRESHOLD_RULES + RANGE_RULES)
def test_fires_and_recovers_for_every_rule_and_aggregation(rule: str, aggregation: str) -> None:
    fire, recover = FIRE_RECOVER[rule]
    ev = Evaluator()
    ev.add(make(rule, aggregation), now_us=T0)
    feed(ev, "m", [T0 + 10 * S, T0 + 20 * S], fire)
    [tr] = ev.evaluate(T0 + MIN)
    assert (tr.name, tr.status, tr.time_us, tr.abort) == ("a", "critical", T0 + MIN, False)
    assert tr.message.startswith("alert 'a' is critical: ")
    assert ev.states() == {"a": "critical"}
    feed(ev, "m", [T0 + 70 * S, T0 + 80 * S], fire)
    assert ev.evaluate(T0 + 2 * MIN) == []  # still critical: no transition
    feed(ev, "m", [T0 + 130 * S, T0 + 140 * S], recover)
    [tr] = ev.evaluate(T0 + 3 * MIN)
    assert (tr.status, tr.time_us, tr.abort) == ("ok", T0 + 3 * MIN, False)
    assert tr.message.startswith("alert 'a' is ok again: ")
    assert ev.states() == {"a": "ok"}


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    [
        # aggregation:  average, sum, at least one, all
        ("is above", [0.0, 0.0, 25.0], (False, True, True, False)),
        ("is above", [11.0, 12.0], (True, True, True, True)),
        ("is above", [6.0, 6.0], (False, True, False, False)),
        ("is below", [-50.0, 20.0, 20.0], (True, True, True, False)),
        ("is below", [4.0, 4.0, 4.0], (True, False, True, True)),
        ("is inside range", [-5.0, 15.0], (True, True, False, False)),
        ("is inside range", [1.0, 20.0], (False, False, True, False)),
        ("is inside range", [3.0, 3.0, 3.0, 3.0], (True, False, True, True)),
        ("is outside range", [-5.0, 15.0], (False, False, True, True)),
        ("is outside range", [5.0, 40.0], (True, True, True, False)),
        # boundaries: thresholds are strict, ranges inclusive
        ("is above", [10.0], (False, False, False, False)),
        ("is below", [10.0], (False, False, False, False)),
        ("is inside range", [0.0, 10.0], (True, True, True, True)),
        ("is outside range", [0.0, 10.0], (False, False, False, False)),
    ],
)
def test_aggregations_differ(rule: str, values: list[float], expected: tuple[bool, ...]) -> None:
    for aggregation, critical in zip(AGGREGATIONS, expected, strict=True):
        ev = Evaluator()
        ev.add(make(rule, aggregation), now_us=T0)
        feed(ev, "m", [T0 + (i + 1) * S for i in range(len(values))], values)
        out = ev.evaluate(T0 + MIN)
        assert ev.states()["a"] == ("critical" if critical else "ok"), (aggregation, out)
        assert len(out) == int(critical)


def test_messages() -> None:
    ev = Evaluator()
    ev.add(metric_threshold_alert("residual high", "residual", 10, "is above", window=5, frequency=1), now_us=T0)
    feed(ev, "residual", [T0 + 1 * S, T0 + 2 * S], [12.0, 13.0])
    [tr] = ev.evaluate(T0 + MIN)
    assert tr.message == "alert 'residual high' is critical: average of residual over the last 5 min is 12.5, above 10"
    feed(ev, "residual", [T0 + 61 * S, T0 + 62 * S], [-40.0, -40.0])
    [tr] = ev.evaluate(T0 + 2 * MIN)
    assert tr.message == (
        "alert 'residual high' is ok again: average of residual over the last 5 min is -13.75, not above 10"
    )

    ev = Evaluator()
    ev.add(make("is inside range", "at least one", window=0.5), now_us=T0)
    feed(ev, "m", [T0 + 40 * S, T0 + 41 * S, T0 + 42 * S], [5.0, 50.0, 60.0])
    [tr] = ev.evaluate(T0 + MIN)
    assert tr.message == "alert 'a' is critical: 1 of 3 points of m over the last 0.5 min is inside [0, 10]"

    ev = Evaluator()
    ev.add(make("is outside range", "sum"), now_us=T0)
    feed(ev, "m", [T0 + S], [11.0])
    assert ev.evaluate(T0 + MIN)[0].message.endswith("sum of m over the last 1 min is 11, outside [0, 10]")


def test_window_slides_old_points_leave() -> None:
    ev = Evaluator()
    ev.add(make("is above", "at least one", frequency=0.5, window=1), now_us=T0)
    feed(ev, "m", [T0 + 5 * S], [100.0])  # one spike, then quiet: a point every second
    feed(ev, "m", [T0 + s * S for s in range(6, 31)], [0.0] * 25)
    assert ev.evaluate(T0 + 30 * S)[0].status == "critical"
    feed(ev, "m", [T0 + s * S for s in range(31, 61)], [0.0] * 30)
    assert ev.evaluate(T0 + 60 * S) == []  # the spike at 5 s is still inside (0 s, 60 s]
    feed(ev, "m", [T0 + s * S for s in range(61, 91)], [0.0] * 30)
    [tr] = ev.evaluate(T0 + 90 * S)  # window (30 s, 90 s]: the spike has left
    assert tr.status == "ok" and tr.message.endswith("0 of 60 points of m over the last 1 min are above 10")


def test_window_edges_open_at_the_start_closed_at_now() -> None:
    now = T0 + MIN
    ev = Evaluator()
    ev.add(make("is above", "at least one"), now_us=T0)
    feed(ev, "m", [now - MIN, now - MIN + 1], [100.0, 0.0])  # exactly one window back: outside
    assert ev.evaluate(now) == [] and ev.states()["a"] == "ok"
    ev = Evaluator()
    ev.add(make("is above", "at least one"), now_us=T0)
    feed(ev, "m", [now], [100.0])  # at now: inside
    assert ev.evaluate(now)[0].status == "critical"
    ev = Evaluator()
    ev.add(make("is above", "at least one"), now_us=T0)
    feed(ev, "m", [now + 1], [100.0])  # in the future: not yet, but once now reaches it
    assert ev.evaluate(now) == []
    assert ev.evaluate(now + MIN)[0].status == "critical"


def test_frequency_respected() -> None:
    ev = Evaluator()
    ev.add(make("is above", frequency=1, window=1), now_us=T0)
    feed(ev, "m", [T0 + S], [50.0])
    assert ev.evaluate(T0 + MIN - 1) == []  # not due yet, though the rule holds
    assert ev.states()["a"] == "ok"
    assert ev.evaluate(T0 + MIN)[0].status == "critical"
    feed(ev, "m", [T0 + 90 * S], [-500.0])
    assert ev.evaluate(T0 + 90 * S) == []  # rule no longer holds, but not due
    assert ev.evaluate(T0 + 2 * MIN)[0].status == "ok"
    # a late evaluation: the next one is due one period after it
    assert ev.evaluate(T0 + 200 * S) == []
    feed(ev, "m", [T0 + 250 * S], [50.0])
    assert ev.evaluate(T0 + 260 * S - 1) == []
    assert ev.evaluate(T0 + 260 * S)[0].status == "critical"


def test_one_evaluation_per_period_when_called_often() -> None:
    # values alternate every second; with a 1-second window, evaluating every second would toggle each time
    ev = Evaluator()
    ev.add(make("is above", "average", frequency=1, window=1 / 60), now_us=T0)
    transitions: list[Transition] = []
    for s in range(1, 601):
        feed(ev, "m", [T0 + s * S], [100.0 if s % 2 == 0 else 0.0])
        transitions += ev.evaluate(T0 + s * S)
    # evaluated at 60 s, 120 s, ... 600 s only: always an even second, so one transition in all
    assert [(t.status, t.time_us) for t in transitions] == [("critical", T0 + MIN)]


def test_float_frequency() -> None:
    ev = Evaluator()
    ev.add(make("is above", frequency=0.25, window=0.25), now_us=T0)
    feed(ev, "m", [T0 + S], [11.0])
    assert ev.evaluate(T0 + 15 * S - 1) == []
    assert ev.evaluate(T0 + 15 * S)[0].status == "critical"


def test_no_points_no_change() -> None:
    ev = Evaluator()
    ev.add(make("is above"), now_us=T0)
    ev.add(make("is below", name="b"), now_us=T0)
    for k in range(1, 10):
        assert ev.evaluate(T0 + k * MIN) == []
    assert ev.states() == {"a": "ok", "b": "ok"}
    feed(ev, "m", [T0 + 9 * MIN + S], [50.0])
    assert [t.name for t in ev.evaluate(T0 + 10 * MIN)] == ["a"]
    # the metric goes quiet: "a" stays critical
    for k in range(11, 20):
        assert ev.evaluate(T0 + k * MIN) == []
    assert ev.states() == {"a": "critical", "b": "ok"}


def test_abort_flag_only_on_critical_transitions() -> None:
    ev = Evaluator()
    ev.add(make("is above", name="stop", trigger_abort=True), now_us=T0)
    ev.add(make("is above", name="warn"), now_us=T0)
    feed(ev, "m", [T0 + S], [50.0])
    out = ev.evaluate(T0 + MIN)
    assert {(t.name, t.status, t.abort) for t in out} == {("stop", "critical", True), ("warn", "critical", False)}
    feed(ev, "m", [T0 + MIN + S], [0.0])
    out = ev.evaluate(T0 + 2 * MIN)
    assert {(t.name, t.status, t.abort) for t in out} == {("stop", "ok", False), ("warn", "ok", False)}


def test_transition_is_frozen() -> None:
    tr = Transition("a", "ok", 1, False, "m")
    with pytest.raises(AttributeError):
        tr.status = "critical"  # type: ignore[misc]


# ------------------------------------------------------------------------------------- events
def test_event_alert() -> None:
    ev = Evaluator()
    ev.add(event_alert("div", "diverged", 1, abort=True), now_us=T0)
    ev.observe_event("all good", T0 + S)
    assert ev.evaluate(T0 + MIN) == []
    ev.observe_event("step 40: solver diverged", T0 + MIN + S)
    assert ev.evaluate(T0 + MIN + 30 * S) == []  # not due
    [tr] = ev.evaluate(T0 + 2 * MIN)
    assert (tr.status, tr.abort) == ("critical", True)
    assert tr.message == "alert 'div' is critical: an event matched 'diverged': 'step 40: solver diverged'"
    ev.observe_event("diverged again", T0 + 2 * MIN + S)
    assert ev.evaluate(T0 + 3 * MIN) == []  # still critical
    ev.observe_event("Diverged? (case matters)", T0 + 3 * MIN + S)
    [tr] = ev.evaluate(T0 + 4 * MIN)
    assert (tr.status, tr.abort) == ("ok", False)
    assert tr.message == "alert 'div' is ok again: no event matched 'diverged' since the previous check"


def test_event_before_first_evaluation_counts_and_long_messages_are_cut() -> None:
    ev = Evaluator()
    ev.add(event_alert("div", "NaN", 2), now_us=T0)
    ev.observe_event("NaN " + "x" * 500, T0 + S)
    [tr] = ev.evaluate(T0 + 2 * MIN)
    assert tr.status == "critical" and len(tr.message) < 200 and tr.message.endswith("...'")


# -------------------------------------------------------------------------------------- users
def test_user_alert_states() -> None:
    ev = Evaluator()
    ev.add(user_alert("manual", abort=True))
    ev.add(make("is above"), now_us=T0)
    assert ev.set_user_state("manual", "ok", T0) == []
    [tr] = ev.set_user_state("manual", "critical", T0 + 5)
    assert tr == Transition("manual", "critical", T0 + 5, True, "alert 'manual' is critical: set by the user")
    assert ev.set_user_state("manual", "critical", T0 + 6) == []
    [tr] = ev.set_user_state("manual", "ok", T0 + 7)
    assert (tr.status, tr.abort, tr.message) == ("ok", False, "alert 'manual' is ok again: set by the user")
    assert ev.evaluate(T0 + 10 * MIN) == []  # user alerts are never evaluated
    assert ev.states() == {"manual": "ok", "a": "ok"}
    with pytest.raises(ConfigurationError, match="no alert named 'nope'"):
        ev.set_user_state("nope", "ok", T0)
    with pytest.raises(ConfigurationError, match="only user alerts"):
        ev.set_user_state("a", "critical", T0)
    with pytest.raises(ConfigurationError, match="state must be one of ok, critical"):
        ev.set_user_state("manual", "warning", T0)


# --------------------------------------------------------------------------- adding, scheduling
def test_add_same_name() -> None:
    ev = Evaluator()
    assert ev.add(make("is above"), now_us=T0) is True
    feed(ev, "m", [T0 + S], [50.0])
    ev.evaluate(T0 + MIN)
    assert ev.add(make("is above"), now_us=T0 + MIN + 5) is False  # identical (every rank sends it): nothing changes
    assert ev.states() == {"a": "critical"}
    feed(ev, "m", [T0 + MIN + 10 * S], [0.0])
    assert ev.evaluate(T0 + 2 * MIN - 1) == []  # the period still runs from the first add
    assert ev.evaluate(T0 + 2 * MIN)[0].status == "ok"
    with pytest.raises(ConfigurationError, match="alert 'a' is already defined differently"):
        ev.add(make("is above", threshold=11), now_us=T0)
    with pytest.raises(ConfigurationError, match="already defined differently"):
        ev.add(user_alert("a"))
    with pytest.raises(ConfigurationError, match="rule 'is big'"):
        ev.add({"name": "b", "source": "metrics", "alert": {"rule": "is big", "metric": "m", "frequency": 1}})
    with pytest.raises(ConfigurationError, match="now_us must be an integer"):
        ev.add(make("is below", name="c"), now_us=1.5)  # type: ignore[arg-type]


def test_each_alert_keeps_its_own_period() -> None:
    ev = Evaluator()
    ev.add(user_alert("u"))
    ev.add(make("is above", frequency=2), now_us=T0)
    ev.add(event_alert("e", "x", 0.5), now_us=T0 + 10)
    ev.add(event_alert("late", "y", 1))  # no time: its period starts at the next evaluate
    assert ev.evaluate(T0 + S) == []
    ev.observe_event("x y", T0 + 2 * S)
    feed(ev, "m", [T0 + 90 * S], [50.0])
    assert ev.evaluate(T0 + 10 + 30 * S - 1) == []
    assert [(t.name, t.status) for t in ev.evaluate(T0 + 10 + 30 * S)] == [("e", "critical")]
    assert ev.evaluate(T0 + MIN) == []  # "late" is due at T0 + 1 s + 1 min
    assert [(t.name, t.status) for t in ev.evaluate(T0 + MIN + S)] == [("e", "ok"), ("late", "critical")]
    assert ev.evaluate(T0 + 2 * MIN - 1) == []
    assert [(t.name, t.status) for t in ev.evaluate(T0 + 2 * MIN)] == [("a", "critical")]
    assert ev.states() == {"u": "ok", "a": "critical", "e": "ok", "late": "critical"}


def test_disabled_alert_is_never_evaluated() -> None:
    ev = Evaluator()
    ev.add(make("is above") | {"enabled": False}, now_us=T0)
    feed(ev, "m", [T0 + S], [50.0])
    assert ev.evaluate(T0 + 5 * MIN) == [] and ev.states() == {"a": "ok"}


def test_bad_times_and_columns() -> None:
    ev = Evaluator()
    ev.add(make("is above"), now_us=T0)
    with pytest.raises(ConfigurationError, match="now_us must be an integer"):
        ev.evaluate(1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="time_us must be an integer"):
        ev.observe_event("x", None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="one length"):
        ev.observe_metrics(["m"], np.zeros(2, np.uint32), np.zeros(3, np.int64), np.zeros(2))
    ev.evaluate(np.int64(T0))  # numpy integers are fine


# ----------------------------------------------------------------------------------- observing
def test_only_watched_metrics_are_kept_and_batches_are_copied() -> None:
    ev = Evaluator()
    ev.add(make("is above", metric="loss"), now_us=T0)
    ev.add(make("is below", metric="acc", name="b"), now_us=T0)
    names = ["noise", "loss", "other", "acc"]
    name_id = np.array([0, 1, 2, 3, 1, 0, 3], np.uint32)
    t = T0 + np.arange(1, 8, dtype=np.int64) * S
    v = np.array([99.0, 50.0, 99.0, 1.0, 60.0, 99.0, 2.0])
    empty = kept_bytes(ev)
    ev.observe_metrics(names, name_id, t, v)
    assert kept_bytes(ev) < empty + 4 * 16 + 512  # the 4 watched points, not the 3 others
    t1, v1 = T0 + np.array([10 * S]), np.array([0.0])
    ev.observe_metrics(["loss"], np.zeros(1, np.uint32), t1, v1)
    v1[0] = 1e9  # the caller reuses its buffer
    out = ev.evaluate(T0 + MIN)
    assert [(x.name, x.message.split(": ", 1)[1]) for x in out] == [
        ("a", "average of loss over the last 1 min is 36.6667, above 10"),
        ("b", "average of acc over the last 1 min is 1.5, below 10"),
    ]


def test_evaluator_with_no_alerts_ignores_everything() -> None:
    ev = Evaluator()
    feed(ev, "m", [T0], [1.0])
    ev.observe_event("x", T0)
    assert ev.evaluate(T0 + MIN) == [] and ev.states() == {}
    untouched = Evaluator()
    untouched.evaluate(T0 + MIN)
    assert kept_bytes(ev) == kept_bytes(untouched)


def test_points_older_than_the_largest_window_are_dropped() -> None:
    ev = Evaluator()
    ev.add(make("is above", window=1), now_us=T0)
    ev.add(make("is above", name="wide", window=3), now_us=T0)
    empty = kept_bytes(ev)
    feed(ev, "m", [T0 + s * S for s in range(0, 600)], [0.0] * 600)
    ev.evaluate(T0 + 600 * S)
    # (420 s, 600 s]: the 179 points of the 3-minute window, not all 600
    assert 179 * 16 <= kept_bytes(ev) - empty < 200 * 16


def test_memory_stays_bounded() -> None:
    """10^6 points, one every 100 ms for ~28 hours, with a 1-minute window: a few thousand are kept."""
    ev = Evaluator()
    ev.add(make("is above", "all", frequency=1, window=1), now_us=T0)
    n, batch = 1_000_000, 5_000
    times = T0 + np.arange(1, n + 1, dtype=np.int64) * 100_000
    values = np.where(np.arange(n) < n - 600, 50.0, 0.0)  # the last minute drops below the threshold
    empty = kept_bytes(ev)
    most = 0
    transitions: list[Transition] = []
    for start in range(0, n, batch):
        feed(ev, "m", times[start : start + batch], values[start : start + batch])
        most = max(most, kept_bytes(ev) - empty)
        if start % (20 * batch) == 0:  # evaluate only now and then: pruning must not depend on it
            transitions += ev.evaluate(int(times[start + batch - 1]))
    assert most < 5_000 * 16  # of 10^6 points
    transitions += ev.evaluate(int(times[-1]))  # the last minute: all below the threshold
    transitions += ev.evaluate(int(times[-1]) + 2 * MIN)  # nothing in the window: no change
    assert [t.status for t in transitions] == ["critical", "ok"]
    assert kept_bytes(ev) - empty < 512
    # never evaluated at all: still bounded
    ev2 = Evaluator()
    ev2.add(make("is above", "all", frequency=1, window=1), now_us=T0)
    empty = kept_bytes(ev2)
    for start in range(0, n, batch):
        feed(ev2, "m", times[start : start + batch], values[start : start + batch])
        assert kept_bytes(ev2) - empty < 5_000 * 16
    assert ev2.evaluate(int(times[-1])) == [] and ev2.states() == {"a": "ok"}


# ======================================================================= against a plain reference
def reference_holds(rule: str, aggregation: str, thr: float, low: float, high: float, xs: list[float]) -> bool:
    def ok(x: float) -> bool:
        if rule == "is above":
            return x > thr
        if rule == "is below":
            return x < thr
        inside = low <= x <= high
        return inside if rule == "is inside range" else not inside

    if aggregation == "average":
        return ok(sum(xs) / len(xs))
    if aggregation == "sum":
        return ok(sum(xs))
    if aggregation == "at least one":
        return any(ok(x) for x in xs)
    return all(ok(x) for x in xs)


HALF = S // 2
alert_specs = st.tuples(
    st.sampled_from(THRESHOLD_RULES + RANGE_RULES),
    st.sampled_from(AGGREGATIONS),
    st.integers(-8, 8),  # threshold, or range_low
    st.integers(1, 8),  # range width
    st.sampled_from([1, 15, 30, 60, 90, 300]),  # window, seconds
    st.sampled_from([1, 10, 30, 60]),  # frequency, seconds
)
steps = st.lists(
    st.one_of(
        # a batch: (half seconds back from the clock, value, is it the watched metric)
        st.lists(
            st.tuples(st.one_of(st.just(0), st.integers(0, 800)), st.integers(-12, 12), st.booleans()),
            min_size=1,
            max_size=20,
        ),
        # the clock advances by this many half seconds (often a period exactly), then evaluate
        st.one_of(st.sampled_from([0, 1, 2, 20, 60, 120, 180]), st.integers(0, 800)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(alert_specs, min_size=1, max_size=3), steps)
def test_evaluator_matches_plain_reference(specs: list[tuple[Any, ...]], script: list[Any]) -> None:
    ev = Evaluator()
    alerts = []
    for k, (rule, aggregation, a, width, window_s, frequency_s) in enumerate(specs):
        name = f"alert {k}"
        if rule in THRESHOLD_RULES:
            d = metric_threshold_alert(name, "m", a, rule, window=window_s / 60, frequency=frequency_s / 60,
                                       aggregation=aggregation)  # fmt: skip
        else:
            d = metric_range_alert(name, "m", a, a + width, rule, window=window_s / 60, frequency=frequency_s / 60,
                                   aggregation=aggregation)  # fmt: skip
        ev.add(d, now_us=T0)
        alerts.append({
            "name": name, "rule": rule, "agg": aggregation, "thr": a, "low": a, "high": a + width,
            "w": window_s * S, "f": frequency_s * S, "due": T0 + frequency_s * S, "state": "ok",
        })  # fmt: skip
    now = T0
    points: list[tuple[int, float]] = []
    for step in script:
        if isinstance(step, list):
            names = ["other", "m"]
            t = [now - back * HALF for back, _, _ in step]
            ev.observe_metrics(names, np.array([int(w) for _, _, w in step], np.uint32), np.array(t, np.int64),
                               np.array([float(v) for _, v, _ in step]))  # fmt: skip
            points += [(ti, float(v)) for ti, (_, v, w) in zip(t, step, strict=True) if w]
            continue
        now += step * HALF
        got = [(x.name, x.status, x.time_us) for x in ev.evaluate(now)]
        want = []
        for al in alerts:
            if now < al["due"]:
                continue
            al["due"] = now + al["f"]
            xs = [v for ti, v in points if now - al["w"] < ti <= now]
            if not xs:
                continue
            state = "critical" if reference_holds(al["rule"], al["agg"], al["thr"], al["low"], al["high"], xs) else "ok"
            if state != al["state"]:
                al["state"] = state
                want.append((al["name"], state, now))
        assert got == want
        assert ev.states() == {al["name"]: al["state"] for al in alerts}


@settings(max_examples=300, deadline=None)
@given(
    alert_specs,
    st.lists(
        st.tuples(st.sampled_from(["old", "start", "after start", "inside", "now", "future"]), st.integers(-12, 12)),
        max_size=12,
    ),
)
def test_one_decision_matches_plain_reference(spec: tuple[Any, ...], where: list[tuple[str, int]]) -> None:
    """One evaluation, with points on and around both edges of the window."""
    rule, aggregation, a, width, window_s, _ = spec
    ev = Evaluator()
    if rule in THRESHOLD_RULES:
        d = metric_threshold_alert("x", "m", a, rule, window=window_s / 60, frequency=1, aggregation=aggregation)
    else:
        d = metric_range_alert("x", "m", a, a + width, rule, window=window_s / 60, frequency=1, aggregation=aggregation)
    ev.add(d, now_us=T0)
    now, w = T0 + 10 * MIN, window_s * S
    offset = {"old": -w - 5 * S, "start": -w, "after start": -w + 1, "inside": -w // 2, "now": 0, "future": 1}
    times = [now + offset[k] for k, _ in where]
    ev.observe_metrics(["m"], np.zeros(len(times), np.uint32), np.array(times, np.int64),
                       np.array([float(v) for _, v in where]))  # fmt: skip
    xs = [float(v) for (k, v) in where if k in ("after start", "inside", "now")]
    out = ev.evaluate(now)
    critical = bool(xs) and reference_holds(rule, aggregation, a, a, a + width, xs)
    assert ev.states() == {"x": "critical" if critical else "ok"}
    assert [t.status for t in out] == (["critical"] if critical else [])


def test_points_stamped_ahead_of_the_evaluator_clock_do_not_push_others_out() -> None:
    # a rank's clock a little ahead of the aggregator's: its points must not drop points still in the window
    ev = Evaluator()
    ev.add(make("is above", "all"), now_us=T0)
    now = T0 + 10 * MIN
    feed(ev, "m", [now - MIN + 1, now + 30 * S], [5.0, -3.0])
    assert ev.evaluate(now) == [] and ev.states() == {"a": "ok"}  # 5 is not above 10: "all" fails
    ev = Evaluator()
    ev.add(make("is above", "at least one"), now_us=T0)
    feed(ev, "m", [now - MIN + 1, now + 30 * S], [50.0, -3.0])
    assert ev.evaluate(now)[0].status == "critical"
