"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tether.api.deps import ServicesDep
from tether.api.schemas import Health, Ready
from tether.db import migrate

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(svc: ServicesDep) -> Any:
    db_ok = svc.db.ping()
    schema_ok = db_ok and migrate.is_current(svc.db)
    runtime_ok = schema_ok and svc.runtime.ensure_current()
    body = {
        "status": "ready" if runtime_ok else "not_ready",
        "database": db_ok,
        "schema_current": schema_ok,
        "runtime_current": runtime_ok,
        # Reported apart: an upstream MCP server that is down makes its tools fail, not this
        # worker (every other path still answers).
        "upstreams": svc.gateway.status(),
    }
    return JSONResponse(body, status_code=200 if runtime_ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
)
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        data = generate_latest(registry)
    else:
        data = generate_latest(REGISTRY)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
