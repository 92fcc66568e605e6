"""HTTP routes of the judge: ``POST /judge`` over :class:`services.judge.engine.Judge` (DESIGN.md §3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI

from services.judge.config import JudgeSettings
from services.judge.engine import Judge, JudgeBackendError, JudgeInputError, QueueFull, build_judge
from shared.schemas import JudgeRequest, JudgeResponse
from shared.service import create_app, maps_to, overloaded, state_dependency

router = APIRouter()

JudgeDep = Annotated[Judge, Depends(state_dependency("judge", "the judge is still loading"))]


@router.post("/judge", response_model=JudgeResponse, tags=["judge"])
async def judge(body: JudgeRequest, engine: JudgeDep) -> JudgeResponse:
    return await engine.judge(body.items, body.method)


def create_judge_app(settings: JudgeSettings | None = None) -> FastAPI:
    settings = settings or JudgeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await asyncio.to_thread(build_judge, settings, app.state.metrics.registry)
        app.state.judge = engine
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await engine.close()

    def info(app: FastAPI) -> dict[str, Any]:
        engine: Judge | None = getattr(app.state, "judge", None)
        return engine.info() if engine is not None else {"backend": settings.llm.backend, "loading": True}

    app = create_app("judge", settings, lifespan, info=info, errors={
        JudgeInputError: maps_to(422, "invalid_request"),
        JudgeBackendError: maps_to(502, "backend_error"),
        QueueFull: overloaded(settings.retry_after_s),
    })
    app.include_router(router)
    return app
