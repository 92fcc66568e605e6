"""HTTP routes of the simulator (thin: the work is in :mod:`services.simulator.engine`).

    POST /simulate   {"query", "question"?, "gold"?, "k", "quality", "mode"?} -> {"documents": [...], ...}
    POST /retrieve   the retriever's request/response format; quality per query drawn from p_noise
    GET  /schedule   the noise curriculum now;  POST /schedule {"step", "total_steps"?} moves it
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from prometheus_client import Counter

from services.simulator.config import SimulatorSettings
from services.simulator.engine import (
    GENERATORS,
    Generator,
    SimJob,
    SimResult,
    Simulator,
    SimulatorInputError,
    to_retrieve_response,
    to_simulate_response,
)
from shared.batching import MicroBatcher
from shared.client import RetrieverClient, ServiceCallError
from shared.schemas import (
    RetrieveRequest,
    RetrieveResponse,
    ScheduleState,
    ScheduleUpdate,
    SimMode,
    SimulateRequest,
    SimulateResponse,
)
from shared.service import ServiceError, create_app, maps_to, state_dependency

router = APIRouter()


def build_simulator(settings: SimulatorSettings) -> tuple[Simulator, list[Any]]:
    """The generators this configuration can serve (and the clients to close afterwards)."""
    generators: dict[SimMode, Generator] = {}
    closers: list[Any] = []
    if settings.mode == "llm":
        from shared.llm import get_backend

        generators["llm"] = GENERATORS["llm"](get_backend(settings.llm), settings)
    if settings.retriever_url:
        key = settings.retriever_api_key.get_secret_value() if settings.retriever_api_key else None
        client = RetrieverClient(settings.retriever_url, key, timeout_s=settings.retriever_timeout_s)
        generators["corpus"] = GENERATORS["corpus"](client, settings)
        closers.append(client)
    return Simulator(settings, generators), closers


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: SimulatorSettings = app.state.settings
    simulator, closers = build_simulator(settings)
    app.state.simulator = simulator
    # Every batch waits the whole window (wait="fixed"), as the simulator always has.
    app.state.batcher = MicroBatcher(simulator.run, max_batch=settings.max_batch_queries,
                                     max_wait_s=settings.batch_window_ms / 1000.0, max_queue=settings.max_pending,
                                     wait="fixed", name="the simulator queue", unit="jobs")
    registry = app.state.metrics.registry
    app.state.sets_counter = Counter("searchlab_simulator_document_sets", "document sets served",
                                     ["mode", "quality"], registry=registry)
    app.state.filled_counter = Counter("searchlab_simulator_filled_documents",
                                       "documents filled in because generation gave too few", ["mode"],
                                       registry=registry)
    app.state.ready = True
    yield
    app.state.ready = False
    await app.state.batcher.close()
    for c in closers:
        c.close()


SimulatorDep = Annotated[Simulator, Depends(state_dependency("simulator", "the simulator is still starting"))]


async def _run(request: Request, jobs: Sequence[SimJob]) -> list[SimResult]:
    batcher: MicroBatcher[SimJob, SimResult] = request.app.state.batcher
    results = await asyncio.gather(*batcher.submit(jobs))
    for r in results:
        request.app.state.sets_counter.labels(r.mode, r.quality).inc()
        if r.filled:
            request.app.state.filled_counter.labels(r.mode).inc(r.filled)
    return results


@router.post("/simulate", response_model=SimulateResponse)
async def simulate(body: SimulateRequest, simulator: SimulatorDep, request: Request) -> SimulateResponse:
    results = await _run(request, [simulator.job_for(body)])
    return to_simulate_response(results[0])


@router.post("/retrieve", response_model=RetrieveResponse)
async def retrieve(body: RetrieveRequest, simulator: SimulatorDep, request: Request) -> RetrieveResponse:
    return to_retrieve_response(await _run(request, simulator.facade_jobs(body)))


def _schedule_state(simulator: Simulator) -> ScheduleState:
    s = simulator.schedule
    return ScheduleState(step=s.step, total_steps=s.total_steps, p_noise=s.current(), start=s.start, end=s.end,
                         base=s.base)


@router.get("/schedule", response_model=ScheduleState)
async def get_schedule(simulator: SimulatorDep) -> ScheduleState:
    return _schedule_state(simulator)


@router.post("/schedule", response_model=ScheduleState)
async def set_schedule(body: ScheduleUpdate, simulator: SimulatorDep) -> ScheduleState:
    simulator.schedule.set(body.step, body.total_steps)
    return _schedule_state(simulator)


def _info(app: FastAPI) -> dict[str, Any]:
    settings: SimulatorSettings = app.state.settings
    details: dict[str, Any] = {
        "mode": settings.mode, "model": settings.llm.model if settings.mode == "llm" else None,
        "llm_backend": settings.llm.backend if settings.mode == "llm" else None,
        "retriever_url": settings.retriever_url, "default_k": settings.default_k, "max_k": settings.max_k,
        "words": settings.words, "template": settings.template,
    }
    simulator: Simulator | None = getattr(app.state, "simulator", None)
    if simulator is not None:
        details["modes"] = sorted(simulator.generators)
        details["schedule"] = _schedule_state(simulator).model_dump()
        details["served"] = dict(simulator.counts)
        details["batches"] = app.state.batcher.batches
    return details


def _upstream_error(exc: ServiceCallError) -> ServiceError:
    return ServiceError(502, "upstream_error", f"the {exc.service} service failed: {exc.message}")


def create_simulator_app(settings: SimulatorSettings | None = None) -> FastAPI:
    settings = settings or SimulatorSettings()
    app = create_app("simulator", settings, lifespan, info=_info, errors={
        SimulatorInputError: maps_to(422, "invalid_request"),
        ServiceCallError: _upstream_error,
    })
    app.include_router(router)
    return app
