"""The trainer's web dashboard: static files under ``/ui/`` and the two JSON routes only it needs.

    GET /            -> redirect to /ui/ (the page: cluster, jobs, a job's live curves, trajectories, eval)
    GET /ui/...      static files (no data in them, so served without the token)
    GET /cluster     each configured service's /ready, Redis, queue depth, live workers   (token)
    GET /presets     ready-made jobs for the page's "submit" form                           (token)

The page asks for the API key once and keeps it in the tab's ``sessionStorage``; every data call
(these routes, ``/jobs`` ..., the SSE stream read with ``fetch``) sends it as a bearer header, never
in a URL. The chart library (uPlot, MIT) is vendored under ``ui/vendor/``: no CDN, no build step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.trainer.jobs.overview import ClusterProbe
from services.trainer.jobs.presets import PRESETS
from shared.schemas import ClusterView, PresetList
from shared.service import state_dependency

UI_DIR = Path(__file__).with_name("ui")
OPEN_PATHS = ("/", "/ui")  # with OPEN_PREFIXES: what the browser loads before it has the key
OPEN_PREFIXES = ("/ui/",)

ProbeDep = Annotated[ClusterProbe, Depends(state_dependency("cluster", "the trainer is still starting"))]
router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/cluster", response_model=ClusterView)
async def cluster(probe: ProbeDep) -> ClusterView:
    return await probe.snapshot()


@router.get("/presets", response_model=PresetList)
async def presets() -> PresetList:
    return PresetList(presets=PRESETS)


def mount(app: FastAPI) -> None:
    """The routes above and the static page on ``app``."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
