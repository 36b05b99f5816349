"""The served OpenAPI schema, completed so that it says what the server does (a fuzzer, schemathesis
`--checks all`, holds it to that in tests/service/test_service_schema.py):

- security is declared only when API keys are configured (else a generated client sends
  credentials nobody asked for), and then every secured operation documents its 401;
- every operation documents the statuses the layers around the routes can answer: 503 (too many
  connections, shutting down; service/inflight.py) except on the probes and /metrics, 408 and 413
  where there is a body, 404 where the path names a model;
- the `model=` of each task's route is an enum of the models of that task the server has (a model
  of another task is refused with 422), and of the models that failed to load (exit_on_error off):
  every route answers those with 503 `model_failed`, and one may be the route's default.

It works on whatever routes the app has (routes added later are completed too), once, on the first
request for /openapi.json.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from enet_serve.service.errors import is_v2
from enet_serve.service.inflight import UNCOUNTED
from enet_serve.service.tasks import HANDLERS

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
V2_ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/V2ErrorResponse"}}}
GENERIC = {
    "401": "missing or wrong API key",
    "404": "unknown model (or version)",
    "408": "the body did not arrive within body_timeout_s",
    "413": "body too large",
    "503": "too many connections, not ready, model failed or shutting down (see Retry-After)",
}


def _add(responses: dict[str, Any], status: str, path: str) -> None:
    responses.setdefault(status, {"description": GENERIC[status], "content": V2_ERROR_REF if is_v2(path) else ERROR_REF})


def complete_schema(schema: dict[str, Any], secured: bool, models_by_task: dict[str, list[str]]) -> dict[str, Any]:
    paths = schema.get("paths", {})
    for task, names in models_by_task.items():
        op = paths.get(HANDLERS[task].route, {}).get("post", {})
        for parameter in op.get("parameters", ()):
            if parameter.get("name") == "model" and parameter.get("in") == "query" and names:
                parameter["schema"] = {"type": "string", "enum": sorted(names)}
    for path, item in paths.items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            if not secured:
                op.pop("security", None)
                responses.pop("401", None)
            elif op.get("security"):
                _add(responses, "401", path)
            if not path.startswith(UNCOUNTED):
                _add(responses, "503", path)
            if "requestBody" in op:
                _add(responses, "408", path)
                _add(responses, "413", path)
            if "{name}" in path:
                _add(responses, "404", path)
    if not secured:
        schema.get("components", {}).pop("securitySchemes", None)
    return schema


def install_openapi(app: FastAPI, secured: bool) -> None:
    """`app.openapi()` (and so /openapi.json and /docs) serves the completed schema (made on the first
    call, once the models are loaded: requests are served only after the start)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            server = app.state.server
            by_task: dict[str, list[str]] = {task: [] for task in HANDLERS}
            for name, model in server.models.items():
                by_task.setdefault(model.task, []).append(name)
            # a model that failed to load has no task the server knows, and any route gives it a 503, not a 422
            failed = [name for name in server.faults if name not in server.models]
            for names in by_task.values():
                names.extend(failed)
            app.openapi_schema = complete_schema(generate(), secured, by_task)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
