"""What every searchlab HTTP service has in common, installed once by :func:`create_app`.

- one error shape ``{"error": {"code", "message"}}``: 4xx for bad input, never a 500 for it;
  malformed JSON -> 400, schema violations -> 422 naming the field, oversized bodies -> 413,
  overload -> 503 with ``Retry-After``;
- ``GET /health`` (process up), ``GET /ready`` (model/index loaded), ``GET /metrics``
  (Prometheus), ``GET /info``;
- one exception handler per error type: ``create_app(errors={ExcType: maps_to(status, code)})``
  instead of a ``try/except -> ServiceError`` in each route; :class:`shared.batching.QueueFull`
  is 503 ``overloaded`` everywhere;
- optional bearer-token auth (``<SERVICE>_API_KEY``) on every route but health/ready/metrics (and the
  paths a service opens itself, e.g. the trainer's static dashboard, whose data calls carry the token);
- request counters and a latency histogram per route.

Routes stay thin (CONVENTIONS.md §1): services add their own routers over an engine kept on
``app.state``, built in their ``lifespan`` and handed to routes by :func:`state_dependency`.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.batching import QueueFull
from shared.config import ServiceSettings
from shared.schemas import Info

log = logging.getLogger(__name__)

VERSION = "0.1.0"
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class ServiceError(Exception):
    """An error the client should see, with its HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Overloaded(ServiceError):
    def __init__(self, message: str = "the service is at capacity; retry later", retry_after_s: int = 1):
        super().__init__(503, "overloaded", message, {"Retry-After": str(retry_after_s)})


ErrorMapper = Callable[[Any], ServiceError]  # an exception -> the error the client sees


def maps_to(status: int, code: str, *, retry_after_s: int | None = None) -> ErrorMapper:
    """An ``errors`` entry of :func:`create_app`: the exception's message under ``status`` and ``code``."""
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None

    def to_error(exc: Exception) -> ServiceError:
        return ServiceError(status, code, str(exc), headers)

    return to_error


def overloaded(retry_after_s: int = 1) -> ErrorMapper:
    """503 ``overloaded`` with ``Retry-After`` (the default for :class:`QueueFull`)."""
    return lambda exc: Overloaded(str(exc), retry_after_s)


def state_dependency(attr: str, loading: str, retry_after_s: int = 2) -> Callable[[Request], Awaitable[Any]]:
    """A FastAPI dependency returning ``app.state.<attr>``, or 503 ``not_ready`` while it is unset.

    ``JudgeDep = Annotated[Judge, Depends(state_dependency("judge", "the judge is still loading"))]``

    A coroutine on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, two thread
    hand-offs per request (measured: ~30% of the retriever's per-request CPU in the app, and under
    load on shared cores each hand-off waits for the GIL and a core).
    """

    async def get(request: Request) -> Any:
        value = getattr(request.app.state, attr, None)
        if value is None:
            raise ServiceError(503, "not_ready", loading, {"Retry-After": str(retry_after_s)})
        return value

    get.__name__ = f"get_{attr}"
    return get


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str]:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            return "invalid_json", f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}".strip()
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid_request", "; ".join(parts)


class BodyLimitMiddleware:
    """Rejects request bodies over ``max_bytes`` with 413 before the app reads them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        # Read the body (bounded) before the app sees it, so a chunked upload that grows past
        # the limit is refused with 413 too, not half-parsed into a misleading 400.
        chunks: list[bytes] = []
        seen = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            more = bool(message.get("more_body", False))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "payload_too_large", f"request body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)


class AuthAndMetricsMiddleware:
    """Bearer-token check (outside ``OPEN_PATHS``) and per-route request counts and latency.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs every
    request through an extra task and memory streams, which cost more than a cached search.
    """

    def __init__(self, app: ASGIApp, service: str, metrics: ServiceMetrics, api_key: bytes | None,
                 auth_paths_prefix: str = "/", open_paths: Iterable[str] = (), open_prefixes: Iterable[str] = ()):
        self.app = app
        self.service = service
        self.metrics = metrics
        self.api_key = api_key
        self.auth_paths_prefix = auth_paths_prefix
        self.open_paths = OPEN_PATHS | frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)

    def _needs_token(self, path: str) -> bool:
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return False
        return path.startswith(self.auth_paths_prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and self._needs_token(scope["path"]):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            token = header[7:] if header[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.api_key):
                response = error_response(401, "unauthorized", "missing or wrong bearer token",
                                          {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(self.service, label, str(status)).inc()
            self.metrics.latency.labels(self.service, label).observe(time.perf_counter() - start)


class ServiceMetrics:
    """Prometheus collectors of one app (its own registry, so tests can start many apps)."""

    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "searchlab_requests", "HTTP requests", ["service", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "searchlab_request_seconds",
            "HTTP request latency",
            ["service", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.service = service


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    service: str,
    settings: ServiceSettings,
    lifespan: Lifespan,
    *,
    info: Callable[[FastAPI], dict[str, Any]] | None = None,
    auth_paths_prefix: str = "/",
    require_auth: bool = False,
    errors: Mapping[type[Exception], ErrorMapper] | None = None,
    open_paths: Iterable[str] = (),
    open_prefixes: Iterable[str] = (),
) -> FastAPI:
    """A FastAPI app with searchlab's common routes, errors, limits, auth and metrics.

    ``lifespan`` builds the heavy things and sets ``app.state.ready = True`` when done.
    ``info(app)`` returns the details shown by ``GET /info``.
    ``errors``: the service's exception types and the error each becomes (one handler per type),
    e.g. ``{JudgeInputError: maps_to(422, "invalid_request")}``; given ones replace the defaults
    (:class:`ServiceError` as it is, :class:`QueueFull` -> 503 ``overloaded``).
    ``require_auth``: refuse to start without an API key (the trainer's job endpoints).
    ``open_paths`` / ``open_prefixes``: more paths served without the token (static files that hold no data).
    """
    if require_auth and settings.api_key is None:
        raise ValueError(f"{service}: an API key is required (set {service.upper()}_API_KEY)")

    app = FastAPI(title=f"searchlab {service}", version=VERSION, lifespan=lifespan)
    app.state.ready = False
    app.state.settings = settings
    metrics = ServiceMetrics(service)
    app.state.metrics = metrics
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    app.add_middleware(AuthAndMetricsMiddleware, service=service, metrics=metrics, api_key=api_key,
                       auth_paths_prefix=auth_paths_prefix, open_paths=tuple(open_paths),
                       open_prefixes=tuple(open_prefixes))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    mappers: dict[type[Exception], ErrorMapper] = {ServiceError: lambda exc: exc, QueueFull: overloaded()}
    for exc_type, to_error in {**mappers, **(errors or {})}.items():
        app.add_exception_handler(exc_type, _handler(to_error))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = _describe_validation(exc)
        return error_response(400 if code == "invalid_json" else 422, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(json.JSONDecodeError)
    async def _json_error(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, "invalid_json", f"request body is not valid JSON: {exc}")

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"])
    async def ready(request: Request) -> JSONResponse:
        if request.app.state.ready:
            return JSONResponse({"status": "ready"})
        return error_response(503, "not_ready", f"{service} is still loading", {"Retry-After": "2"})

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", response_model=Info, tags=["ops"])
    async def get_info(request: Request) -> Info:
        details = info(request.app) if info is not None else {}
        return Info(service=service, version=VERSION, details=details)

    return app


def _handler(to_error: ErrorMapper) -> Callable[[Request, Exception], Any]:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        error = to_error(exc)
        return error_response(error.status, error.code, error.message, error.headers)

    return handle


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run ``app`` with uvicorn on the configured host/port (loopback by default)."""
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=10)
