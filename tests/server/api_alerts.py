"""Alerts: definitions (deduplicated on request) and per-run states.

With `deduplicate=True`, posting a definition identical to a stored one (same name, description,
notification, source, enabled, abort and rule) answers 200 with the stored id. A different definition
under an existing name creates a new alert. Only user alerts accept a state from the client; metric and
event alerts are evaluated by the server (see `alerting`).
"""

from __future__ import annotations

import json
from typing import Any

from .api_runs import RunsApi
from .common import ServerState, paginate, sort_docs, timestamp
from .filters import apply_filters
from .validation import Checker, validate_alert, validate_alert_state
from .web import Request, Response, Router, json_response, not_found

_DEFINITION_KEYS = ("name", "description", "notification", "source", "enabled", "abort", "alert")


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps({k: doc.get(k) for k in _DEFINITION_KEYS}, sort_keys=True)


class AlertsApi:
    def __init__(self, state: ServerState, runs: RunsApi) -> None:
        self.state = state
        self.runs = runs

    def register(self, router: Router) -> None:
        router.add("POST", "/api/alerts", self.create)
        router.add("GET", "/api/alerts", self.list)
        router.add("GET", "/api/alerts/{alert_id}", self.get)
        router.add("PUT", "/api/alerts/{alert_id}", self.update)
        router.add("DELETE", "/api/alerts/{alert_id}", self.delete)
        router.add("PUT", "/api/alerts/{alert_id}/status/{run_id}", self.set_status)
        router.add("GET", "/api/alerts/{alert_id}/status/{run_id}", self.get_status)

    def _load(self, alert_id: str) -> dict[str, Any]:
        doc = self.state.store.get("alerts", alert_id)
        if doc is None:
            raise not_found("alert", alert_id)
        return doc

    def create(self, req: Request) -> Response:
        doc = validate_alert(req.data())
        store = self.state.store
        with store.lock:
            if req.flag("deduplicate"):
                key = _canonical(doc)
                if existing := store.find("alerts", lambda a: _canonical(a) == key):
                    return json_response({"id": existing["id"]})
            doc |= {"created": timestamp(), "user": self.state.settings.user, "run_tags": [], "auto": False, "delay": 0}
            alert_id = store.insert("alerts", doc)
        return json_response({"id": alert_id})

    def list(self, req: Request) -> Response:
        docs = apply_filters(self.state.store.all("alerts"), req.query.get("filters"), lambda d: d)
        docs = sort_docs(docs, req.query.get("sorting"))
        return json_response(paginate(req, docs, self.state.settings.page_limit))

    def get(self, req: Request, alert_id: str) -> Response:
        return json_response(self._load(alert_id))

    def update(self, req: Request, alert_id: str) -> Response:
        changes = req.data() or {}
        with self.state.store.lock:
            current = self._load(alert_id)
            merged = {k: current.get(k) for k in _DEFINITION_KEYS if current.get(k) is not None}
            merged |= {k: v for k, v in dict(changes).items() if k in _DEFINITION_KEYS}
            validated = validate_alert(merged)
            self.state.store.update("alerts", alert_id, lambda d: d.update(validated))
        return json_response({})

    def delete(self, req: Request, alert_id: str) -> Response:
        self._load(alert_id)
        self.state.store.delete_alert(alert_id)
        return json_response({"id": alert_id})

    def set_status(self, req: Request, alert_id: str, run_id: str) -> Response:
        status = validate_alert_state(req.data())
        with self.state.store.lock:
            alert = self._load(alert_id)
            self.runs.load(run_id)
            if alert["source"] != "user":
                checker = Checker()
                checker.fail(("path", "alert_id"), "Only user alerts accept a state", "value_error", alert_id)
                checker.done()
            self.state.store.set_alert_state(alert_id, run_id, status)
        return json_response({})

    def get_status(self, req: Request, alert_id: str, run_id: str) -> Response:
        self._load(alert_id)
        self.runs.load(run_id)
        return json_response({"status": self.state.store.alert_state(alert_id, run_id) or "ok"})
