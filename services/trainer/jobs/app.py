"""Trainer HTTP API (DESIGN.md §3): routes only; the work is in :mod:`services.trainer.jobs.manager`.

    POST /jobs {"kind", "config"} -> {"id"}     GET /jobs      GET /jobs/{id}
    GET /jobs/{id}/events  (server-sent events)  POST /jobs/{id}/cancel
    GET /jobs/{id}/artifacts/{name}

Every route but /health, /ready, /metrics needs ``Authorization: Bearer $TRAINER_API_KEY``;
the service refuses to start without a key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, StreamingResponse

from services.trainer.config import TrainerSettings
from services.trainer.jobs.manager import JobError, JobManager
from shared.schemas import JobCreated, JobList, JobStatus, JobSubmit
from shared.service import ServiceError, create_app


def get_manager(request: Request) -> JobManager:
    manager: JobManager | None = getattr(request.app.state, "jobs", None)
    if manager is None:
        raise ServiceError(503, "not_ready", "the trainer is still starting", {"Retry-After": "2"})
    return manager


ManagerDep = Annotated[JobManager, Depends(get_manager)]
router = APIRouter(tags=["jobs"])


def _http(exc: JobError) -> ServiceError:
    return ServiceError(exc.status, exc.code, exc.message)


@router.post("/jobs", response_model=JobCreated, status_code=201)
async def submit_job(body: JobSubmit, jobs: ManagerDep) -> JobCreated:
    try:
        job_id = await asyncio.to_thread(jobs.submit, body)
    except JobError as exc:
        raise _http(exc) from None
    return JobCreated(id=job_id)


@router.get("/jobs", response_model=JobList)
async def list_jobs(jobs: ManagerDep) -> JobList:
    return JobList(jobs=await asyncio.to_thread(jobs.list))


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def get_job(job_id: str, jobs: ManagerDep) -> JobStatus:
    try:
        return await asyncio.to_thread(jobs.get, job_id)
    except JobError as exc:
        raise _http(exc) from None


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus)
async def cancel_job(job_id: str, jobs: ManagerDep) -> JobStatus:
    try:
        return await asyncio.to_thread(jobs.cancel, job_id)
    except JobError as exc:
        raise _http(exc) from None


@router.get("/jobs/{job_id}/artifacts/{name:path}")
async def get_artifact(job_id: str, name: str, jobs: ManagerDep) -> FileResponse:
    try:
        path = await asyncio.to_thread(jobs.artifact, job_id, name)
    except JobError as exc:
        raise _http(exc) from None
    return FileResponse(path, filename=path.name)


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, jobs: ManagerDep,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """Server-sent events: ``event: state|step|log``, ``id:`` (resume with Last-Event-ID), JSON data;
    the stream ends after the job's final state event."""
    try:
        await asyncio.to_thread(jobs.get, job_id)
    except JobError as exc:
        raise _http(exc) from None

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
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await asyncio.to_thread(manager.shutdown)
            await manager.aclose()

    def info(app: FastAPI) -> dict[str, Any]:
        manager: JobManager | None = getattr(app.state, "jobs", None)
        return {"kinds": sorted(manager.kinds) if manager else [], "max_running": settings.max_running,
                "output_dir": str(settings.jobs_dir()), "services": settings.service_urls()}

    app = create_app("trainer", settings, lifespan, info=info, require_auth=True)
    app.include_router(router)
    return app
