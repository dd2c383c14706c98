"""Metrics and events: msgpack batches in, JSON read-back out."""

from __future__ import annotations

from typing import Any

from . import alerting
from .api_runs import RunsApi
from .common import ServerState, paginate
from .filters import apply_filters
from .validation import Checker, finite_or_none, validate_events, validate_metrics
from .web import HTTPError, Request, Response, Router, json_response

XAXES = ("step", "time", "timestamp")


def _downsample(points: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    if max_points <= 0 or len(points) <= max_points:
        return points
    if max_points == 1:
        return [points[-1]]
    last = len(points) - 1
    return [points[round(i * last / (max_points - 1))] for i in range(max_points)]


class DataApi:
    def __init__(self, state: ServerState, runs: RunsApi) -> None:
        self.state = state
        self.runs = runs

    def register(self, router: Router) -> None:
        router.add("POST", "/api/metrics", self.post_metrics)
        router.add("GET", "/api/metrics", self.get_metrics)
        router.add("GET", "/api/metrics/names", self.metric_names)
        router.add("POST", "/api/events", self.post_events)
        router.add("GET", "/api/events", self.get_events)

    def post_metrics(self, req: Request) -> Response:
        run_id, records = validate_metrics(req.data())
        with self.state.store.lock:
            run = self.runs.load(run_id)
            if records:
                self.state.store.add_metrics(run_id, records)
                names = {name for record in records for name in record["values"]}
                alerting.on_metrics(self.state, run, names)
        return json_response({})

    def get_metrics(self, req: Request) -> Response:
        run_ids = req.json_list_param("runs", required=True) or []
        names = req.json_list_param("metrics", required=True) or []
        xaxis = req.query.get("xaxis", "step")
        checker = Checker()
        checker.choice(xaxis, ("query", "xaxis"), XAXES)
        checker.done()
        if req.flag("aggregate"):
            raise HTTPError(501, "aggregate=True is not implemented by the test server")
        max_points = req.int_param("max_points", 0)
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for run_id in run_ids:
            self.runs.load(str(run_id))
            per_metric: dict[str, list[dict[str, Any]]] = {}
            for point in self.state.store.metrics(str(run_id), [str(n) for n in names]):
                per_metric.setdefault(point["name"], []).append(
                    {
                        "value": finite_or_none(point["value"]),
                        "step": point["step"],
                        "time": point["time"],
                        "timestamp": point["timestamp"],
                    }
                )
            for name, points in per_metric.items():
                points.sort(key=lambda p: p[xaxis])
                per_metric[name] = _downsample(points, max_points)
            if per_metric:
                out[str(run_id)] = per_metric
        return json_response(out)

    def metric_names(self, req: Request) -> Response:
        run_ids = [str(r) for r in req.json_list_param("runs", required=True) or []]
        for run_id in run_ids:
            self.runs.load(run_id)
        return json_response(self.state.store.metric_names(run_ids))

    def post_events(self, req: Request) -> Response:
        run_id, events = validate_events(req.data())
        with self.state.store.lock:
            run = self.runs.load(run_id)
            if events:
                self.state.store.add_events(run_id, events)
                alerting.on_events(self.state, run, [e["message"] for e in events])
        return json_response({})

    def get_events(self, req: Request) -> Response:
        run_id = req.query.get("run")
        if not run_id:
            checker = Checker()
            checker.fail(("query", "run"), "Field required", "missing")
            checker.done()
        self.runs.load(str(run_id))
        events = [
            {"message": e["message"], "timestamp": e["timestamp"], "log_level": e["log_level"]}
            for e in self.state.store.events(str(run_id))
        ]
        events = apply_filters(events, req.query.get("filters"), lambda e: {"event": e, **e})
        return json_response(paginate(req, events, None))
