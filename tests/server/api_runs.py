"""Folders, runs, heartbeats and the abort flag."""

from __future__ import annotations

import secrets
import time
from typing import Any

from .common import ServerState, paginate, parse_timestamp, sort_docs, timestamp
from .filters import apply_filters
from .validation import Checker, validate_folder_path, validate_folder_update, validate_run
from .web import HTTPError, Request, Response, Router, json_response, not_found

TERMINAL = ("completed", "failed", "terminated", "lost")
# A Simvue server names an unnamed run adjective-noun, e.g. "quiet-heron".
_ADJECTIVES = (
    "quiet",
    "brave",
    "lucid",
    "amber",
    "swift",
    "gentle",
    "vivid",
    "misty",
    "sunny",
    "rapid",
    "noble",
    "icy",
)
_NOUNS = (
    "heron",
    "falcon",
    "maple",
    "river",
    "comet",
    "otter",
    "meadow",
    "glacier",
    "quasar",
    "willow",
    "badger",
    "reef",
)


def generated_name() -> str:
    """A fresh adjective-noun run name."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


_INTERNAL_RUN_KEYS = ("abort", "abort_reason", "last_seen")


# --- folders -------------------------------------------------------------------------------------------


def ensure_folder(state: ServerState, path: str) -> tuple[str, bool]:
    """Id of the folder at `path`, creating it when absent; second item: whether it was created."""
    with state.store.lock:
        existing = state.store.find("folders", lambda f: f["path"] == path)
        if existing:
            return existing["id"], False
        now = timestamp()
        doc: dict[str, Any] = {
            "path": path,
            "name": None,
            "description": None,
            "tags": [],
            "metadata": {},
            "ttl": None,
            "created": now,
            "modified": now,
            "starred": False,
            "user": state.settings.user,
            "visibility": {"tenant": False, "public": False, "users": []},
        }
        return state.store.insert("folders", doc), True


def _folder_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "tag": doc.get("tags", [])}


class FoldersApi:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def register(self, router: Router) -> None:
        router.add("POST", "/api/folders", self.create)
        router.add("GET", "/api/folders", self.list)
        router.add("GET", "/api/folders/{folder_id}", self.get)
        router.add("PUT", "/api/folders/{folder_id}", self.update)
        router.add("PUT", "/api/folders/{folder_id}/starred", self.star)
        router.add("DELETE", "/api/folders/{folder_id}", self.delete)

    def _get(self, folder_id: str) -> dict[str, Any]:
        doc = self.state.store.get("folders", folder_id)
        if doc is None:
            raise not_found("folder", folder_id)
        return doc

    def create(self, req: Request) -> Response:
        path = validate_folder_path(req.data())
        folder_id, created = ensure_folder(self.state, path)
        if created:
            return json_response({"id": folder_id})
        return json_response({"id": folder_id, "detail": f"Folder '{path}' already exists"}, status=409)

    def list(self, req: Request) -> Response:
        docs = apply_filters(self.state.store.all("folders"), req.query.get("filters"), _folder_view)
        docs = sort_docs(docs, req.query.get("sorting"))
        return json_response(paginate(req, docs, self.state.settings.page_limit))

    def get(self, req: Request, folder_id: str) -> Response:
        return json_response(self._get(folder_id))

    def update(self, req: Request, folder_id: str) -> Response:
        changes = validate_folder_update(req.data())
        self._get(folder_id)
        self.state.store.update("folders", folder_id, lambda d: d.update(changes, modified=timestamp()))
        return json_response({})

    def star(self, req: Request, folder_id: str) -> Response:
        starred = bool((req.data() or {}).get("starred", True))
        self._get(folder_id)
        self.state.store.update("folders", folder_id, lambda d: d.update(starred=starred))
        return json_response({})

    def delete(self, req: Request, folder_id: str) -> Response:
        store = self.state.store
        with store.lock:
            path = self._get(folder_id)["path"]
            nested = [f for f in store.all("folders") if f["path"].startswith(path.rstrip("/") + "/")]
            folders = [folder_id, *(f["id"] for f in nested)]
            paths = {path, *(f["path"] for f in nested)}
            runs = [r["id"] for r in store.all("runs") if r["folder"] in paths]
            if req.flag("runs_only"):
                folders, nested = [], []
            if nested and not req.flag("recursive"):
                raise HTTPError(409, f"Folder '{path}' has sub-folders; use recursive=True")
            if runs and not req.flag("runs"):
                raise HTTPError(409, f"Folder '{path}' contains runs; use runs=True")
            for run_id in runs:
                delete_run(self.state, run_id)
            for fid in folders:
                store.delete("folders", fid)
        return json_response({"folders": folders, "runs": runs})


# --- runs ----------------------------------------------------------------------------------------------


def delete_run(state: ServerState, run_id: str) -> None:
    with state.store.lock:
        state.store.delete("runs", run_id)
        state.store.delete_run_data(run_id)


def _runtime(doc: dict[str, Any]) -> str | None:
    started = parse_timestamp(doc.get("started"))
    if started is None:
        return None
    end = parse_timestamp(doc.get("endtime")) or parse_timestamp(timestamp())
    assert end is not None
    seconds = max((end - started).total_seconds(), 0.0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:09.6f}"


def _apply_status(doc: dict[str, Any], status: str) -> None:
    """Status change side effects: `started` when running, `endtime` when finished."""
    doc["status"] = status
    if status == "running":
        doc["started"] = doc.get("started") or timestamp()
        doc["last_seen"] = time.time()
    elif status in TERMINAL and not doc.get("endtime"):
        doc["endtime"] = timestamp()


class RunsApi:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def register(self, router: Router) -> None:
        router.add("POST", "/api/runs", self.create)
        router.add("GET", "/api/runs", self.list)
        router.add("GET", "/api/runs/{run_id}", self.get)
        router.add("PUT", "/api/runs/{run_id}", self.update)
        router.add("DELETE", "/api/runs/{run_id}", self.delete)
        router.add("PUT", "/api/runs/{run_id}/heartbeat", self.heartbeat)
        router.add("GET", "/api/runs/{run_id}/abort", self.get_abort)
        router.add("PUT", "/api/runs/{run_id}/abort", self.abort)
        router.add("PUT", "/api/runs/{run_id}/starred", self.star)

    # Helpers used by other modules too.

    def load(self, run_id: str) -> dict[str, Any]:
        """The stored run (status refreshed for lost heartbeats), or 404."""
        doc = self.state.store.get("runs", run_id)
        if doc is None:
            raise not_found("run", run_id)
        timeout = doc.get("heartbeat_timeout")
        if doc["status"] == "running" and timeout and time.time() - (doc.get("last_seen") or 0) > timeout:
            doc = self.state.store.update("runs", run_id, lambda d: _apply_status(d, "lost")) or doc
        return doc

    def render(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The run as the API answers it."""
        store = self.state.store
        alerts = []
        for alert_id in doc.get("alerts") or []:
            if alert := store.get("alerts", alert_id):
                state = store.alert_state(alert_id, doc["id"]) or "ok"
                alerts.append({"alert": alert, "status": state, "id": alert_id})
        out = {k: v for k, v in doc.items() if k not in _INTERNAL_RUN_KEYS}
        heartbeat = doc.get("last_seen")
        return out | {
            "alerts": alerts,
            "runtime": _runtime(doc),
            "metrics": store.metric_summary(doc["id"]),
            "heartbeat": timestamp(heartbeat) if heartbeat else None,
        }

    def _validate_alert_ids(self, alert_ids: list[str]) -> None:
        checker = Checker()
        for i, alert_id in enumerate(alert_ids):
            if self.state.store.get("alerts", alert_id) is None:
                checker.fail(("body", "alerts", i), f"Alert '{alert_id}' does not exist", "value_error", alert_id)
        checker.done()

    # Handlers.

    def create(self, req: Request) -> Response:
        fields = validate_run(req.data(), create=True)
        self._validate_alert_ids(fields.get("alerts") or [])
        now = timestamp()
        doc: dict[str, Any] = {
            "name": fields.get("name") or generated_name(),
            "folder": fields["folder"],
            "status": "created",
            "description": None,
            "tags": [],
            "metadata": {},
            "system": None,
            "heartbeat_timeout": 180,
            "alerts": [],
            "notifications": {"state": "none"},
            "visibility": {"tenant": False, "public": False, "users": []},
            "ttl": None,
            "created": now,
            "started": None,
            "endtime": None,
            "modified": now,
            "user": self.state.settings.user,
            "starred": False,
            "abort": False,
            "abort_reason": None,
            "last_seen": time.time(),
        }
        status = fields.pop("status", "created")
        doc.update({k: v for k, v in fields.items() if v is not None or k in ("heartbeat_timeout", "ttl")})
        _apply_status(doc, status)
        with self.state.store.lock:
            ensure_folder(self.state, doc["folder"])
            run_id = self.state.store.insert("runs", doc)
        return json_response({"id": run_id, "name": doc["name"]})

    def list(self, req: Request) -> Response:
        rendered = [self.render(self.load(doc["id"])) for doc in self.state.store.all("runs")]
        docs = apply_filters(rendered, req.query.get("filters"), self._filter_view)
        docs = sort_docs(docs, req.query.get("sorting"))
        return json_response(paginate(req, docs, self.state.settings.page_limit))

    def _filter_view(self, doc: dict[str, Any]) -> dict[str, Any]:
        artifacts = [{"id": a} for a, _ in self.state.store.run_artifacts(doc["id"])]
        return doc | {
            "folder": {"path": doc["folder"]},
            "alert": [a["alert"] for a in doc["alerts"]],
            "artifact": artifacts,
            "user": [doc.get("user"), "self"],
            "ended": doc.get("endtime"),
        }

    def get(self, req: Request, run_id: str) -> Response:
        return json_response(self.render(self.load(run_id)))

    def update(self, req: Request, run_id: str) -> Response:
        fields = validate_run(req.data(), create=False)
        if fields.get("alerts"):
            self._validate_alert_ids(fields["alerts"])
        status = fields.pop("status", None)
        metadata = fields.pop("metadata", None)

        def _change(doc: dict[str, Any]) -> None:
            doc.update(fields)
            if metadata:
                doc["metadata"] = {**(doc.get("metadata") or {}), **metadata}
            if fields.get("alerts") is None and "alerts" in fields:
                doc["alerts"] = []
            if status:
                _apply_status(doc, status)
            doc["modified"] = timestamp()

        with self.state.store.lock:
            self.load(run_id)
            if "folder" in fields:
                ensure_folder(self.state, fields["folder"])
            self.state.store.update("runs", run_id, _change)
        return json_response({})

    def delete(self, req: Request, run_id: str) -> Response:
        self.load(run_id)
        delete_run(self.state, run_id)
        return json_response({"id": run_id})

    def heartbeat(self, req: Request, run_id: str) -> Response:
        with self.state.store.lock:
            doc = self.load(run_id)
            self.state.store.add_heartbeat(run_id)

            def _beat(d: dict[str, Any]) -> None:
                d["last_seen"] = time.time()
                if d["status"] == "lost":  # a late heartbeat revives the run
                    d["status"], d["endtime"] = "running", None

            self.state.store.update("runs", doc["id"], _beat)
        return json_response({})

    def get_abort(self, req: Request, run_id: str) -> Response:
        return json_response({"status": bool(self.load(run_id).get("abort"))})

    def abort(self, req: Request, run_id: str) -> Response:
        reason = (req.data() or {}).get("reason")
        self.set_abort(run_id, True, reason)
        return json_response({})

    def set_abort(self, run_id: str, flag: bool, reason: str | None = None) -> None:
        with self.state.store.lock:
            self.load(run_id)
            self.state.store.update("runs", run_id, lambda d: d.update(abort=flag, abort_reason=reason))

    def star(self, req: Request, run_id: str) -> Response:
        starred = bool((req.data() or {}).get("starred", True))
        self.load(run_id)
        self.state.store.update("runs", run_id, lambda d: d.update(starred=starred))
        return json_response({})
