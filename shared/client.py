"""Typed clients for every searchlab service, sync and async; also the notebook SDK.

Failures are handled here, in one place (CONVENTIONS.md §8): explicit timeouts, a capped,
backed-off retry of connection errors, 429 and 5xx answers (honouring ``Retry-After``), and a
:class:`ServiceCallError` carrying the service's ``{"error": {"code", "message"}}`` otherwise.

    from shared.client import Cluster
    cluster = Cluster({"retriever": "http://127.0.0.1:8001"})
    cluster.retriever.retrieve(["who wrote Hamlet"], topk=3)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from shared.keys import SERVICES, ClientKeyEnv, ServiceKeys
from shared.schemas import (
    ClusterView,
    Hit,
    Info,
    JobCreated,
    JobList,
    JobPreset,
    JobStatus,
    JudgeItem,
    JudgeMethod,
    JudgeResponse,
    PresetList,
    RetrieveResponse,
    SearchMode,
    SimulateRequest,
    SimulateResponse,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
RETRY_STATUS = frozenset({429, 502, 503, 504})
RETRY_EXC: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ReadError, httpx.WriteError,
                                          httpx.RemoteProtocolError, httpx.PoolTimeout, httpx.ConnectTimeout)


class ServiceCallError(Exception):
    """A call that failed for good: the status (0 when no answer came), code and message."""

    def __init__(self, service: str, status: int, code: str, message: str):
        super().__init__(f"{service}: {status} {code}: {message}")
        self.service = service
        self.status = status
        self.code = code
        self.message = message


def _backoff(attempt: int, retry_after: str | None, base_s: float, cap_s: float) -> float:
    if retry_after is not None:
        try:
            return min(float(retry_after), cap_s)
        except ValueError:
            pass
    return min(cap_s, base_s * 2**attempt) * (0.5 + random.random() / 2)


def _error_of(service: str, response: httpx.Response) -> ServiceCallError:
    code, message = "http_error", response.text[:500]
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", code))
            message = str(body["error"].get("message", message))
    except ValueError:
        pass
    return ServiceCallError(service, response.status_code, code, message)


class ServiceClient:
    """Base client: one base URL, optional bearer token, sync and async calls with retries."""

    service = "service"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._sync: httpx.Client | None = None
        self._async: httpx.AsyncClient | None = None

    # -- transport ---------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        if self._sync is None:
            self._sync = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        return self._sync

    def _aclient(self) -> httpx.AsyncClient:
        if self._async is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            self._async = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                            limits=limits)
        return self._async

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client().request(method, path, **kwargs)
            except RETRY_EXC + (httpx.ReadTimeout,) as exc:
                if attempt >= self.max_retries:
                    raise ServiceCallError(self.service, 0, type(exc).__name__, str(exc) or repr(exc)) from exc
                time.sleep(_backoff(attempt, None, self.backoff_base_s, self.backoff_cap_s))
                continue
            if response.status_code in RETRY_STATUS and attempt < self.max_retries:
                time.sleep(_backoff(attempt, response.headers.get("retry-after"), self.backoff_base_s,
                                    self.backoff_cap_s))
                continue
            if response.status_code >= 400:
                raise _error_of(self.service, response)
            return response
        raise AssertionError("unreachable")

    async def arequest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._aclient().request(method, path, **kwargs)
            except RETRY_EXC + (httpx.ReadTimeout,) as exc:
                if attempt >= self.max_retries:
                    raise ServiceCallError(self.service, 0, type(exc).__name__, str(exc) or repr(exc)) from exc
                await asyncio.sleep(_backoff(attempt, None, self.backoff_base_s, self.backoff_cap_s))
                continue
            if response.status_code in RETRY_STATUS and attempt < self.max_retries:
                await asyncio.sleep(_backoff(attempt, response.headers.get("retry-after"), self.backoff_base_s,
                                             self.backoff_cap_s))
                continue
            if response.status_code >= 400:
                raise _error_of(self.service, response)
            return response
        raise AssertionError("unreachable")

    def _get(self, path: str, model: type[M]) -> M:
        return model.model_validate(self.request("GET", path).json())

    def _post(self, path: str, body: dict[str, Any], model: type[M]) -> M:
        return model.model_validate(self.request("POST", path, json=body).json())

    async def _aget(self, path: str, model: type[M]) -> M:
        return model.model_validate((await self.arequest("GET", path)).json())

    async def _apost(self, path: str, body: dict[str, Any], model: type[M]) -> M:
        return model.model_validate((await self.arequest("POST", path, json=body)).json())

    # -- common routes -------------------------------------------------------------------
    def health(self) -> bool:
        try:
            return self._client().get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        try:
            return self._client().get("/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 120.0, interval_s: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(interval_s)
        raise ServiceCallError(self.service, 0, "not_ready", f"{self.base_url} not ready after {timeout_s:.0f}s")

    def info(self) -> Info:
        return self._get("/info", Info)


def _retrieve_body(queries: list[str], topk: int | None, mode: SearchMode | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"queries": queries, "return_scores": True}
    if topk is not None:
        body["topk"] = topk
    if mode is not None:
        body["mode"] = mode
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


class RetrieverClient(ServiceClient):
    """``POST /retrieve`` of the retriever, or of the simulator's facade (same format)."""

    service = "retriever"

    def retrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None,
                 **extra: Any) -> list[list[Hit]]:
        return self._post("/retrieve", _retrieve_body(queries, topk, mode, **extra), RetrieveResponse).result

    async def aretrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None,
                        **extra: Any) -> list[list[Hit]]:
        body = _retrieve_body(queries, topk, mode, **extra)
        return (await self._apost("/retrieve", body, RetrieveResponse)).result


def _judge_body(items: list[JudgeItem] | list[dict[str, Any]], method: JudgeMethod) -> dict[str, Any]:
    return {"items": [i.model_dump() if isinstance(i, JudgeItem) else i for i in items], "method": method}


class JudgeClient(ServiceClient):
    service = "judge"

    def judge(self, items: list[JudgeItem] | list[dict[str, Any]], method: JudgeMethod = "llm") -> JudgeResponse:
        return self._post("/judge", _judge_body(items, method), JudgeResponse)

    async def ajudge(self, items: list[JudgeItem] | list[dict[str, Any]],
                     method: JudgeMethod = "llm") -> JudgeResponse:
        return await self._apost("/judge", _judge_body(items, method), JudgeResponse)


class SimulatorClient(RetrieverClient):
    service = "simulator"

    def simulate(self, request: SimulateRequest | dict[str, Any]) -> SimulateResponse:
        body = request.model_dump(exclude_none=True) if isinstance(request, SimulateRequest) else request
        return self._post("/simulate", body, SimulateResponse)

    async def asimulate(self, request: SimulateRequest | dict[str, Any]) -> SimulateResponse:
        body = request.model_dump(exclude_none=True) if isinstance(request, SimulateRequest) else request
        return await self._apost("/simulate", body, SimulateResponse)


class TrainerClient(ServiceClient):
    service = "trainer"

    def submit(self, kind: str, config: dict[str, Any] | None = None, idempotency_key: str | None = None) -> str:
        """Submit a job; its id. Every submission carries an ``Idempotency-Key`` (a fresh one unless given),
        so a retry after a timeout that the trainer did receive returns the same job, not a second one."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        body = {"kind": kind, "config": config or {}}
        return JobCreated.model_validate(self.request("POST", "/jobs", json=body, headers=headers).json()).id

    def jobs(self) -> list[JobStatus]:
        return self._get("/jobs", JobList).jobs

    def job(self, job_id: str) -> JobStatus:
        return self._get(f"/jobs/{job_id}", JobStatus)

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.request("POST", f"/jobs/{job_id}/cancel").json())

    def artifact(self, job_id: str, name: str) -> bytes:
        return self.request("GET", f"/jobs/{job_id}/artifacts/{name}").content

    def jsonl(self, job_id: str, name: str) -> list[dict[str, Any]]:
        """A JSONL artifact (metrics.jsonl, trajectories/step_0001.jsonl, eval/predictions.jsonl) as rows."""
        import json

        return [json.loads(line) for line in self.artifact(job_id, name).decode().splitlines() if line.strip()]

    def presets(self) -> list[JobPreset]:
        """The ready-made jobs the dashboard offers: ``submit(p.kind, p.config)``."""
        return self._get("/presets", PresetList).presets

    def cluster(self) -> ClusterView:
        """What the trainer sees of the cluster: services' readiness, Redis, queue depth, live workers."""
        return self._get("/cluster", ClusterView)

    @property
    def dashboard_url(self) -> str:
        return f"{self.base_url}/"

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Server-sent events of a job, one dict per event, until the job ends."""
        import json

        with self._client().stream("GET", f"/jobs/{job_id}/events", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise _error_of(self.service, response)
            for line in response.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:].strip())

    def wait(self, job_id: str, timeout_s: float = 3600.0, interval_s: float = 1.0) -> JobStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.job(job_id)
            if status.state in ("succeeded", "failed", "cancelled", "interrupted"):
                return status
            if time.monotonic() > deadline:
                raise ServiceCallError(self.service, 0, "timeout", f"job {job_id} still {status.state}")
            time.sleep(interval_s)


class Cluster:
    """All services of one searchlab cluster: ``Cluster({"retriever": url, ...}, api_key=...)``.

    ``api_key`` is one key for every service, or one per service (``{"retriever": ..., "trainer": ...}``, with
    ``"default"`` for the rest, or a :class:`shared.keys.ServiceKeys`): each client sends its own service's."""

    def __init__(self, base_urls: dict[str, str], api_key: ServiceKeys | str | Mapping[str, str] | None = None,
                 timeout_s: float = 60.0):
        unknown = set(base_urls) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; valid: {', '.join(SERVICES)}")
        self.base_urls = dict(base_urls)
        self.keys = ServiceKeys.coerce(api_key)
        self._timeout_s = timeout_s

    @classmethod
    def local(cls, timeout_s: float = 60.0) -> Cluster:
        """The cluster ``searchlab up`` started on this machine, each client with its service's key from the
        state file; or the ``SEARCHLAB_<NAME>_URL`` env. ``SEARCHLAB_<NAME>_API_KEY`` (and ``SEARCHLAB_API_KEY``
        for the rest) override the keys."""
        import os

        urls: dict[str, str] = {n: os.environ[f"SEARCHLAB_{n.upper()}_URL"] for n in SERVICES
                                if os.environ.get(f"SEARCHLAB_{n.upper()}_URL")}
        keys = ClientKeyEnv().keys()
        if not urls:
            from shared.local_cluster import load_state

            state = load_state()
            if state is None:
                raise ValueError("no local cluster: run `searchlab up` (or set SEARCHLAB_<SERVICE>_URL)")
            urls = {n: u for n, u in state.urls.items() if n != "redis"}
            keys = keys.over(state.keys())
        return cls(urls, keys, timeout_s)

    def _url(self, name: str) -> str:
        if name not in self.base_urls:
            raise ValueError(f"no URL configured for the {name} service")
        return self.base_urls[name]

    @property
    def retriever(self) -> RetrieverClient:
        return RetrieverClient(self._url("retriever"), self.keys.of("retriever"), timeout_s=self._timeout_s)

    @property
    def judge(self) -> JudgeClient:
        return JudgeClient(self._url("judge"), self.keys.of("judge"), timeout_s=self._timeout_s)

    @property
    def simulator(self) -> SimulatorClient:
        return SimulatorClient(self._url("simulator"), self.keys.of("simulator"), timeout_s=self._timeout_s)

    @property
    def trainer(self) -> TrainerClient:
        return TrainerClient(self._url("trainer"), self.keys.of("trainer"), timeout_s=self._timeout_s)
