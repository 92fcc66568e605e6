"""Trainer HTTP API (DESIGN.md §3): routes only; the work is in :mod:`services.trainer.jobs.manager`.

    POST /jobs {"kind", "config"} -> {"id"}     GET /jobs      GET /jobs/{id}
    GET /jobs/{id}/events  (server-sent events)  POST /jobs/{id}/cancel
    GET /jobs/{id}/artifacts/{name}
    GET /  -> the web dashboard (/ui/), GET /cluster, GET /presets   (services.trainer.jobs.dashboard)

Every route but /health, /ready, /metrics and the dashboard's static files needs
``Authorization: Bearer $TRAINER_API_KEY``; the service refuses to start without a key.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.responses import FileResponse, StreamingResponse

from services.trainer.config import TrainerSettings
from services.trainer.jobs import dashboard
from services.trainer.jobs.manager import JobError, JobManager
from services.trainer.jobs.overview import ClusterProbe
from shared.schemas import JobCreated, JobList, JobStatus, JobSubmit
from shared.service import ServiceError, create_app, state_dependency

STREAM_ID = re.compile(r"\d{1,19}(-\d{1,19})?")  # a Redis stream entry id, as the events' ``id:`` lines carry
ManagerDep = Annotated[JobManager, Depends(state_dependency("jobs", "the trainer is still starting"))]
router = APIRouter(tags=["jobs"])


def _http(exc: JobError) -> ServiceError:
    """A JobError carries its own status and code (404 unknown job or artifact, 422 bad kind or config)."""
    return ServiceError(exc.status, exc.code, exc.message)


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200, description=(
    "a retried submission with the same key returns the first one's job id (kept a day)"))]


@router.post("/jobs", response_model=JobCreated, status_code=201)
async def submit_job(body: JobSubmit, jobs: ManagerDep, idempotency_key: IdempotencyKey = None) -> JobCreated:
    return JobCreated(id=await asyncio.to_thread(jobs.submit, body, idempotency_key))


@router.get("/jobs", response_model=JobList)
async def list_jobs(jobs: ManagerDep) -> JobList:
    return JobList(jobs=await asyncio.to_thread(jobs.list))


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def get_job(job_id: str, jobs: ManagerDep) -> JobStatus:
    return await asyncio.to_thread(jobs.get, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus)
async def cancel_job(job_id: str, jobs: ManagerDep) -> JobStatus:
    return await asyncio.to_thread(jobs.cancel, job_id)


@router.get("/jobs/{job_id}/artifacts/{name:path}")
async def get_artifact(job_id: str, name: str, jobs: ManagerDep) -> FileResponse:
    path = await asyncio.to_thread(jobs.artifact, job_id, name)
    return FileResponse(path, filename=path.name)


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, jobs: ManagerDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-sent events: ``event: state|step|log``, ``id:`` (resume with Last-Event-ID), JSON data;
    the stream ends after the job's final state event."""
    await asyncio.to_thread(jobs.get, job_id)  # an unknown job is a 404 before the stream starts
    if last_event_id is not None and not STREAM_ID.fullmatch(last_event_id):
        raise ServiceError(400, "bad_request", "Last-Event-ID: an event id this stream sent ('1733-0'), or 0")

    async def stream() -> AsyncIterator[str]:
        async for event in jobs.events(job_id, last_event_id or "0"):
            yield f"id: {event['id']}\nevent: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def build_app(settings: TrainerSettings | None = None) -> FastAPI:
    settings = settings or TrainerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = JobManager(settings)
        await asyncio.to_thread(manager.start)
        app.state.jobs = manager
        probe = ClusterProbe(settings.redis_url, settings.service_urls(), f"http://{settings.host}:{settings.port}")
        app.state.cluster = probe
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await asyncio.to_thread(manager.shutdown)
            await manager.aclose()
            await probe.aclose()

    def info(app: FastAPI) -> dict[str, Any]:
        manager: JobManager | None = getattr(app.state, "jobs", None)
        return {"kinds": sorted(manager.kinds) if manager else [], "max_running": settings.max_running,
                "output_dir": str(settings.jobs_dir()), "services": settings.service_urls()}

    app = create_app("trainer", settings, lifespan, info=info, require_auth=True, errors={JobError: _http},
                     open_paths=dashboard.OPEN_PATHS, open_prefixes=dashboard.OPEN_PREFIXES)
    app.include_router(router)
    dashboard.mount(app)
    _document_job_configs(app)
    return app


def _document_job_configs(app: FastAPI) -> None:
    """``POST /jobs`` takes ``{"kind", "config"}``; each kind's config schema (with every bound) goes into the
    OpenAPI document as ``<kind>JobConfig``, so clients and fuzzers see what a config may hold."""
    from fastapi.openapi.utils import get_openapi

    from services.trainer.jobs.kinds import JOB_KINDS

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for kind, spec in JOB_KINDS.items():
            config = spec.config.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(config.pop("$defs", {}))
            components[f"{kind}JobConfig"] = config
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
