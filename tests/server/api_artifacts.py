"""Artifacts: registration, the upload/download URLs on this server, and links to runs.

Upload and download URLs live outside `/api` (`/storage/{id}`) and carry an HMAC signature instead of an
Authorization header, like presigned object-store URLs. Registering an artifact whose name and checksum
match one already uploaded answers that artifact's id with `url: null`, so the client skips the upload.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .api_runs import RunsApi
from .common import ServerState, paginate, sort_docs, timestamp
from .filters import apply_filters
from .validation import Checker, validate_artifact, validate_category
from .web import HTTPError, Request, Response, Router, json_response, not_found

_INTERNAL_KEYS = ("received_bytes", "received_sha256")


class ArtifactsApi:
    def __init__(self, state: ServerState, runs: RunsApi) -> None:
        self.state = state
        self.runs = runs

    def register(self, router: Router) -> None:
        router.add("POST", "/api/artifacts", self.create)
        router.add("GET", "/api/artifacts", self.list)
        router.add("GET", "/api/artifacts/{artifact_id}", self.get)
        router.add("PUT", "/api/artifacts/{artifact_id}", self.update)
        router.add("DELETE", "/api/artifacts/{artifact_id}", self.delete)
        router.add("PUT", "/api/runs/{run_id}/artifacts/{artifact_id}", self.attach)
        router.add("GET", "/api/runs/{run_id}/artifacts/{artifact_id}", self.category)
        router.add("GET", "/api/runs/{run_id}/artifacts", self.run_artifacts)
        router.add("PUT", "/storage/{artifact_id}", self.upload)
        router.add("GET", "/storage/{artifact_id}", self.download)

    # --- URLs ----------------------------------------------------------------------------------------

    def _storage_url(self, req: Request, artifact_id: str, op: str) -> str:
        signature = self.state.tokens.sign(f"{artifact_id}:{op}")
        return f"{req.base_url()}/storage/{artifact_id}?op={op}&sig={signature}"

    def _check_signature(self, req: Request, artifact_id: str, op: str) -> None:
        if req.query.get("op") != op or not self.state.tokens.check(f"{artifact_id}:{op}", req.query.get("sig", "")):
            raise HTTPError(403, "Invalid or missing storage signature")

    # --- helpers -------------------------------------------------------------------------------------

    def _load(self, artifact_id: str) -> dict[str, Any]:
        doc = self.state.store.get("artifacts", artifact_id)
        if doc is None:
            raise not_found("artifact", artifact_id)
        return doc

    def render(self, req: Request, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k not in _INTERNAL_KEYS}
        url = self._storage_url(req, doc["id"], "download") if doc.get("received_bytes") is not None else None
        return out | {"url": url, "runs": self.state.store.artifact_runs(doc["id"])} | extra

    # --- /api/artifacts ------------------------------------------------------------------------------

    def create(self, req: Request) -> Response:
        fields = validate_artifact(req.data())
        store = self.state.store
        with store.lock:
            existing = store.find(
                "artifacts", lambda a: a["checksum"] == fields["checksum"] and a["name"] == fields["name"]
            )
            if existing and existing.get("uploaded"):
                return json_response({"id": existing["id"], "url": None})
            if existing:
                artifact_id = existing["id"]
                store.update("artifacts", artifact_id, lambda d: d.update(fields))
            else:
                doc = fields | {
                    "uploaded": False,
                    "created": timestamp(),
                    "storage_id": "test-server-storage",
                    "user": self.state.settings.user,
                    "received_bytes": None,
                    "received_sha256": None,
                }
                artifact_id = store.insert("artifacts", doc)
        return json_response({"id": artifact_id, "url": self._storage_url(req, artifact_id, "upload")})

    def list(self, req: Request) -> Response:
        docs = self.state.store.all("artifacts")
        run_ids = req.json_list_param("runs")
        if run_ids is not None:
            linked = {a for run_id in run_ids for a, _ in self.state.store.run_artifacts(str(run_id))}
            docs = [d for d in docs if d["id"] in linked]
        rendered = [self.render(req, d) for d in docs]
        rendered = apply_filters(rendered, req.query.get("filters"), lambda d: d)
        rendered = sort_docs(rendered, req.query.get("sorting"))
        return json_response(paginate(req, rendered, self.state.settings.page_limit))

    def get(self, req: Request, artifact_id: str) -> Response:
        return json_response(self.render(req, self._load(artifact_id)))

    def update(self, req: Request, artifact_id: str) -> Response:
        data = req.data() or {}
        checker = Checker()
        checker.mapping(data, ("body",))
        checker.done()
        if "uploaded" in data:
            checker.boolean(data["uploaded"], ("body", "uploaded"))
        if "metadata" in data:
            checker.mapping(data["metadata"], ("body", "metadata"))
        checker.done()
        changes = {k: data[k] for k in ("uploaded", "metadata") if k in data}
        self._load(artifact_id)
        self.state.store.update("artifacts", artifact_id, lambda d: d.update(changes))
        return json_response({})

    def delete(self, req: Request, artifact_id: str) -> Response:
        self._load(artifact_id)
        self.state.store.delete_artifact(artifact_id)
        return json_response({"id": artifact_id})

    # --- run links -----------------------------------------------------------------------------------

    def attach(self, req: Request, run_id: str, artifact_id: str) -> Response:
        category = validate_category(req.data())
        with self.state.store.lock:
            self.runs.load(run_id)
            self._load(artifact_id)
            self.state.store.attach_artifact(run_id, artifact_id, category)
        return json_response({})

    def category(self, req: Request, run_id: str, artifact_id: str) -> Response:
        self.runs.load(run_id)
        for linked, category in self.state.store.run_artifacts(run_id):
            if linked == artifact_id:
                return json_response({"category": category})
        raise not_found("artifact", artifact_id)

    def run_artifacts(self, req: Request, run_id: str) -> Response:
        self.runs.load(run_id)
        wanted_category, wanted_name = req.query.get("category"), req.query.get("name")
        out = []
        for artifact_id, category in self.state.store.run_artifacts(run_id):
            doc = self.state.store.get("artifacts", artifact_id)
            if doc is None or (wanted_category and category != wanted_category):
                continue
            if wanted_name and doc["name"] != wanted_name:
                continue
            out.append(self.render(req, doc, category=category))
        return json_response(out)

    # --- storage -------------------------------------------------------------------------------------

    def upload(self, req: Request, artifact_id: str) -> Response:
        self._check_signature(req, artifact_id, "upload")
        self._load(artifact_id)
        digest = hashlib.sha256(req.body).hexdigest()
        with self.state.store.lock:
            self.state.store.put_blob(artifact_id, req.body)
            self.state.store.update(
                "artifacts", artifact_id, lambda d: d.update(received_bytes=len(req.body), received_sha256=digest)
            )
        return json_response({})

    def download(self, req: Request, artifact_id: str) -> Response:
        self._check_signature(req, artifact_id, "download")
        doc = self._load(artifact_id)
        data = self.state.store.blob(artifact_id)
        if data is None:
            raise not_found("artifact content", artifact_id)
        headers = {"Content-Type": doc.get("mime_type") or "application/octet-stream"}
        return Response(200, data, headers)
