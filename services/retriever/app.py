"""HTTP routes of the retriever: ``POST /retrieve`` (Search-R1 / verl ``SearchTool`` / SkyRL format).

The index loads in the background at start-up (``/health`` answers at once, ``/ready`` once the
index is in memory); a load failure stops the process. The work is in ``engine.py`` (search) and
``batching.py`` (request checks, cache, micro-batching).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from services.retriever.batching import InvalidRequest, Limits, Searcher, check_request
from services.retriever.config import RetrieverSettings
from services.retriever.engine import Retriever, SearchParams, set_threads
from services.retriever.index import ensure_index, read_manifest
from services.retriever.process import SearchPool, SearchProcessDied
from shared.schemas import RetrieveRequest, RetrieveResponse
from shared.service import create_app, maps_to, state_dependency

log = logging.getLogger(__name__)

router = APIRouter()


def load_retriever(settings: RetrieverSettings) -> Retriever | SearchPool:
    """The configured index, built first if it is missing and that is allowed; in child
    processes of its own unless ``search_process`` is off (see ``process.py``)."""
    index_dir = settings.resolved_index_dir()
    if read_manifest(index_dir) is None:
        if not settings.build_if_missing:
            raise FileNotFoundError(f"no index at {index_dir} (and RETRIEVER_BUILD_IF_MISSING is off)")
        log.info("no index at %s: building one from %s", index_dir, settings.resolved_corpus())
        ensure_index(settings.resolved_corpus(), index_dir, encoder=settings.encoder or "minilm",
                     index_type=settings.index_type)
    if settings.process_count():
        return SearchPool(functools.partial(open_retriever, settings), index_dir, n=settings.process_count())
    return open_retriever(settings)


def open_retriever(settings: RetrieverSettings) -> Retriever:
    set_threads(settings.search_threads(), reserve=0)
    params = SearchParams(hnsw_ef_search=settings.hnsw_ef_search, ivf_nprobe=settings.ivf_nprobe,
                          dtype=settings.encoder_dtype, device=settings.device)
    return Retriever.load(settings.resolved_index_dir(), encoder=settings.encoder, params=params,
                          load_bm25=settings.load_bm25)


async def _load(app: FastAPI, settings: RetrieverSettings) -> None:
    try:
        retriever = await asyncio.to_thread(load_retriever, settings)
    except Exception as exc:
        log.exception("the retriever could not load its index; stopping")
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        signal.raise_signal(signal.SIGTERM)
        return
    options: dict[str, Any] = {
        "microbatch": settings.microbatch, "max_batch": settings.max_batch, "max_wait_ms": settings.batch_wait_ms,
        "max_waiting_batches": settings.max_waiting_batches, "max_pending": settings.max_pending,
        "cache_size": settings.cache_size, "registry": app.state.metrics.registry}
    if isinstance(retriever, SearchPool):  # ids from the children, passages read here per request
        searcher = Searcher(retriever.search_found, finish=retriever.hits, concurrency=retriever.size, **options)
    else:
        searcher = Searcher(retriever.search, **options)
    app.state.retriever = retriever
    app.state.searcher = searcher
    app.state.ready = True
    log.info("retriever ready: %d passages", len(retriever))


def create_retriever_app(settings: RetrieverSettings | None = None) -> FastAPI:
    settings = settings or RetrieverSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.load_error = None
        app.state.limits = Limits(default_topk=settings.default_topk, max_topk=settings.max_topk,
                                  max_queries=settings.max_queries, max_query_chars=settings.max_query_chars,
                                  default_mode=settings.default_mode)
        loading = asyncio.create_task(_load(app, settings), name="retriever-load")
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        searcher: Searcher | None = getattr(app.state, "searcher", None)
        if searcher is not None:
            await searcher.stop()
        retriever: Retriever | SearchPool | None = getattr(app.state, "retriever", None)
        if retriever is not None:
            retriever.close()

    app = create_app("retriever", settings, lifespan, info=_info, errors={
        InvalidRequest: maps_to(422, "invalid_request"),
        SearchProcessDied: maps_to(503, "search_restarting", retry_after_s=5),
    })
    app.include_router(router)
    return app


def _info(app: FastAPI) -> dict[str, Any]:
    retriever: Retriever | SearchPool | None = getattr(app.state, "retriever", None)
    searcher: Searcher | None = getattr(app.state, "searcher", None)
    if retriever is None or searcher is None:
        return {"ready": False, "load_error": getattr(app.state, "load_error", None)}
    return {"ready": True, **retriever.info(), "serving": searcher.stats(), "limits": vars(app.state.limits)}


RetrieverDep = Annotated[Retriever | SearchPool,
                         Depends(state_dependency("retriever", "the index is still loading"))]
SearcherDep = Annotated[Searcher, Depends(state_dependency("searcher", "the index is still loading"))]


@router.post("/retrieve", response_model=RetrieveResponse, tags=["search"], openapi_extra={
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}}}})
async def retrieve(request: Request, retriever: RetrieverDep, searcher: SearcherDep) -> Response:
    """Search-R1 / verl ``SearchTool`` request (``queries``) or SkyRL's (``query``)."""
    # The body is parsed here rather than by FastAPI so that it is read as JSON whatever the
    # Content-Type says: non-JSON -> 400, JSON of the wrong shape -> 422, both saying what is wrong.
    try:
        body = RetrieveRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    queries, topk, mode = check_request(body.query_list(), body.topk, body.mode, request.app.state.limits,
                                        retriever.modes)
    result = await searcher.search(queries, topk, mode)
    # Serialized once by pydantic-core (the response model is already validated by construction).
    return Response(RetrieveResponse(result=result).model_dump_json(), media_type="application/json")
