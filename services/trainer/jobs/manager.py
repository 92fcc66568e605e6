"""The trainer's job manager: typed job configs, background execution, state and events in Redis.

A job is ``(kind, config)``. Its config is validated at submission against the kind's pydantic
model (``services.trainer.jobs.JOB_KINDS``), so a bad field is a 422 naming the field, never a
failed job later. Jobs run in a small thread pool of this process (CPU-bound training releases
the GIL in torch; the HTTP event loop is never blocked) and report through a :class:`~services.trainer.jobs.context.JobContext`.

Redis layout (prefix ``TRAINER_KEY_PREFIX``, default ``searchlab:trainer``):

- ``<prefix>:jobs``               sorted set of job ids by creation time;
- ``<prefix>:job:<id>``           hash: kind, state, progress, step, metrics (JSON), error,
                                  created_at, updated_at, started_at, finished_at, artifacts (JSON),
                                  config (JSON), cancel, cluster (JSON: its run on a Ray cluster);
- ``<prefix>:job:<id>:events``    stream, one entry per event: ``state`` changes, ``step``
                                  (step, progress, metrics) and ``log`` lines; served as SSE;
- ``<prefix>:idempotency:<sha>``  job id and body hash of a submission's ``Idempotency-Key`` (a day):
                                  a retried ``POST /jobs`` returns the first job instead of a second.

Restart: a trainer that starts finds every job in Redis. Jobs that were ``running`` when the
previous process died are followed again when their run is on a Ray cluster (``cluster`` in the record,
a verl run: a shut-down trainer leaves such runs going), started again when their kind can resume
(``JobKindSpec.resumable``: a local RL job goes on from its last published ``policy/vN``;
``TRAINER_RESUME_RUNNING``), else marked ``interrupted`` (their checkpoints stay in the job folder) and
their queued episodes are dropped, so no worker runs an orphan; jobs still ``queued`` are started again
(``TRAINER_RESUME_QUEUED``). One trainer process per key prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from pydantic import BaseModel, ValidationError

from services.trainer.config import TrainerSettings
from services.trainer.jobs.context import JobCancelled, JobContext, JobDetached
from services.trainer.jobs.kinds import JOB_KINDS, JobKindSpec
from shared.schemas import JobState, JobStatus, JobSubmit

log = logging.getLogger(__name__)

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


class JobError(Exception):
    """A job request the caller got wrong: ``status`` and ``code`` map to the HTTP error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def describe_validation(exc: ValidationError, prefix: str = "config") -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


class JobManager:
    """Submits, runs, lists and cancels jobs; everything durable lives in Redis."""

    def __init__(self, settings: TrainerSettings, kinds: dict[str, JobKindSpec] | None = None):
        self.settings = settings
        self.kinds = kinds if kinds is not None else JOB_KINDS
        self.redis: Any = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=30)
        self.aredis: Any = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.prefix = settings.key_prefix
        self.pool = ThreadPoolExecutor(max_workers=settings.max_running, thread_name_prefix="job")
        self._cancels: dict[str, threading.Event] = {}
        self._stopping = threading.Event()  # shutdown: jobs stopped now end "interrupted", not "cancelled"
        self._futures: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self.confinement = settings.confinement()  # what a submitted config may read, write and call

    # -- keys ----------------------------------------------------------------------------
    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _events_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def job_dir(self, job_id: str) -> Path:
        path = self.settings.jobs_dir() / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> dict[str, int]:
        """Recover after a restart: running -> resumed (kinds that can) or interrupted, queued -> started again."""
        self.redis.ping()
        counts = {"interrupted": 0, "resumed": 0, "reattached": 0}  # resumed: queued, or running and resumable
        for job_id in self.redis.zrange(f"{self.prefix}:jobs", 0, -1):
            data = self.redis.hgetall(self._key(job_id))
            state = data.get("state")
            if state == "running" and _live_cluster(data):  # its run goes on on the Ray cluster: follow it again
                self._schedule(job_id)
                counts["reattached"] += 1
            elif state == "running" and data.get("cancel") != "1" and self._resumable(data):
                self.event(job_id, "log", {"message": "the trainer restarted while the job was running; resuming it"})
                self._drop_episodes(job_id)  # before any worker sees them: the resumed run makes its own
                self._set_state(job_id, "queued")
                self._schedule(job_id)
                counts["resumed"] += 1
            elif state == "running":
                self._drop_episodes(job_id)
                self._set_state(job_id, "interrupted", error="the trainer restarted while the job was running")
                counts["interrupted"] += 1
            elif state == "queued" and self.settings.resume_queued:
                if data.get("cancel") == "1":
                    self._set_state(job_id, "cancelled")
                    continue
                self._schedule(job_id)
                counts["resumed"] += 1
        if any(counts.values()):
            log.info("recovered jobs after restart: %s", counts)
        return counts

    def _resumable(self, data: dict[str, str]) -> bool:
        spec = self.kinds.get(data.get("kind", ""))
        if spec is None or not self.settings.resume_running:
            return False
        try:
            return spec.resumable(spec.config.model_validate_json(data.get("config") or "{}"))
        except ValidationError:
            return False

    def _drop_episodes(self, job_id: str) -> None:
        """Forget an interrupted job's queued episodes: workers then skip its orphans without running them."""
        from services.trainer.rollout.queue import EpisodeQueue

        queue = EpisodeQueue(self.settings.redis_url)
        try:
            queue.delete_job(job_id)
        finally:
            queue.close()

    def shutdown(self) -> None:
        """Stop: cancel what runs, wait briefly; jobs still running are marked interrupted."""
        self._stopping.set()
        with self._lock:
            for event in self._cancels.values():
                event.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + 10
        for job_id, future in list(self._futures.items()):
            remaining = deadline - time.monotonic()
            if not future.done() and remaining > 0:
                try:
                    future.result(timeout=remaining)
                except Exception:  # noqa: BLE001 - the job's own error is already recorded
                    pass
            data = self.redis.hgetall(self._key(job_id))
            if data.get("state") in ("running", "queued") and not _live_cluster(data):
                self._set_state(job_id, "interrupted", error="the trainer shut down while the job was running")
        self.redis.close()

    async def aclose(self) -> None:
        await self.aredis.aclose()

    # -- API operations ----------------------------------------------------------------------
    def validate(self, request: JobSubmit) -> BaseModel:
        spec = self.kinds.get(request.kind)
        if spec is None:
            raise JobError(422, "unsupported_kind", f"kind: '{request.kind}' is not available on this trainer; "
                                                    f"valid: {', '.join(sorted(self.kinds))}")
        try:
            return spec.config.model_validate(request.config, context=self.confinement)
        except ValidationError as exc:
            raise JobError(422, "invalid_config", describe_validation(exc)) from None

    def submit(self, request: JobSubmit, idempotency_key: str | None = None) -> str:
        """Create and schedule a job; its id. The same ``idempotency_key`` again (a client's retry after a
        timeout) returns the first submission's job id and creates nothing; with another body it is a 409."""
        config = self.validate(request)
        job_id = f"{request.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if idempotency_key is not None:
            first = self._claim_idempotency_key(idempotency_key, request, job_id)
            if first is not None:
                log.info("POST /jobs repeated with Idempotency-Key %r: job %s, nothing new", idempotency_key, first)
                return first
        now = time.time()
        record = {
            "id": job_id, "kind": request.kind, "state": "queued", "progress": 0.0, "step": 0,
            "metrics": "{}", "error": "", "created_at": now, "updated_at": now, "artifacts": "[]",
            "config": config.model_dump_json(), "cancel": "0",
        }
        pipe = self.redis.pipeline()
        pipe.hset(self._key(job_id), mapping=record)
        pipe.zadd(f"{self.prefix}:jobs", {job_id: now})
        pipe.execute()
        self.event(job_id, "state", {"state": "queued"})
        self._schedule(job_id)
        return job_id

    def _claim_idempotency_key(self, key: str, request: JobSubmit, job_id: str) -> str | None:
        """Bind ``key`` to ``job_id`` (None), or the job id it is bound to already (a repeated submission)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        body = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        redis_key = f"{self.prefix}:idempotency:{digest}"
        if self.redis.set(redis_key, f"{job_id} {body}", nx=True, ex=self.settings.idempotency_ttl_s):
            return None
        first, _, first_body = (self.redis.get(redis_key) or "").partition(" ")
        if first_body != body:
            raise JobError(409, "idempotency_key_reused",
                           f"Idempotency-Key {key!r} was used for another submission (job {first})")
        return first

    def get(self, job_id: str) -> JobStatus:
        data = self.redis.hgetall(self._key(job_id))
        if not data:
            raise JobError(404, "not_found", f"no job with id '{job_id}'")
        return JobStatus(
            id=data["id"], kind=data["kind"], state=data["state"], progress=float(data.get("progress", 0)),
            step=int(float(data.get("step", 0))), metrics=json.loads(data.get("metrics") or "{}"),
            error=data.get("error") or None, created_at=float(data["created_at"]),
            updated_at=float(data["updated_at"]), artifacts=json.loads(data.get("artifacts") or "[]"),
            started_at=float(data["started_at"]) if data.get("started_at") else None,
            finished_at=float(data["finished_at"]) if data.get("finished_at") else None,
            config=json.loads(data.get("config") or "{}"),
            cluster=json.loads(data["cluster"]) if data.get("cluster") else None,
        )

    def list(self) -> list[JobStatus]:
        ids = self.redis.zrevrange(f"{self.prefix}:jobs", 0, -1)
        return [self.get(job_id) for job_id in ids if self.redis.exists(self._key(job_id))]

    def cancel(self, job_id: str) -> JobStatus:
        status = self.get(job_id)
        if status.state in TERMINAL:
            return status
        self.redis.hset(self._key(job_id), "cancel", "1")
        with self._lock:
            event = self._cancels.get(job_id)
        if event is not None:
            event.set()
        if status.state == "queued":
            self._set_state(job_id, "cancelled")
        return self.get(job_id)

    def artifact(self, job_id: str, name: str) -> Path:
        status = self.get(job_id)
        base = self.job_dir(job_id).resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base) or name not in status.artifacts or not path.is_file():
            raise JobError(404, "not_found", f"job '{job_id}' has no artifact '{name}'; "
                                             f"artifacts: {', '.join(status.artifacts) or 'none'}")
        return path

    async def events(self, job_id: str, last_id: str = "0", block_ms: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """The job's events from ``last_id`` on, following live ones until the job ends."""
        self.get(job_id)  # 404 for unknown jobs
        key = self._events_key(job_id)
        while True:
            batch = await self.aredis.xread({key: last_id}, count=100, block=block_ms)
            if batch:
                for entry_id, fields in batch[0][1]:
                    last_id = entry_id
                    event = json.loads(fields["data"])
                    event["id"] = entry_id
                    yield event
                    if event.get("type") == "state" and event.get("state") in TERMINAL:
                        return
                continue
            state = await self.aredis.hget(self._key(job_id), "state")
            if state in TERMINAL:  # ended before we subscribed and its last event was trimmed
                return

    # -- execution -----------------------------------------------------------------------------
    def _schedule(self, job_id: str) -> None:
        with self._lock:
            self._cancels[job_id] = threading.Event()
            self._futures[job_id] = self.pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            self._run_job(job_id)
        except Exception as exc:  # anything before or around the job itself: the job fails, visibly
            log.exception("job %s failed", job_id)
            self._set_state(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._cancels.pop(job_id, None)

    def _run_job(self, job_id: str) -> None:
        data = self.redis.hgetall(self._key(job_id))
        with self._lock:
            cancel = self._cancels[job_id]
        cluster = json.loads(data["cluster"]) if _live_cluster(data) else None
        if data.get("cancel") == "1" and cluster is not None:
            cancel.set()  # cancelled while no trainer ran: the job attaches and stops its run on the cluster
        elif data.get("cancel") == "1" or cancel.is_set():
            self._set_state(job_id, "cancelled")
            return
        spec = self.kinds.get(data["kind"])
        if spec is None:
            self._set_state(job_id, "failed", error=f"kind '{data['kind']}' is not available on this trainer")
            return
        config = spec.config.model_validate_json(data["config"])
        ctx = JobContext(self, job_id, data["kind"], config, self.settings, self.job_dir(job_id), cancel,
                         stopping=self._stopping, cluster=cluster)
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        if cluster is None or data.get("state") != "running":
            self._set_state(job_id, "running")
        try:
            final = spec.run(ctx)
        except JobDetached:
            log.info("job %s: the trainer shuts down; its run goes on on the Ray cluster", job_id)
            return
        except JobCancelled:
            if self._stopping.is_set():
                self._set_state(job_id, "interrupted", error="the trainer shut down while the job was running")
            else:
                self._set_state(job_id, "cancelled")
            return
        finally:
            ctx.close()
        fields: dict[str, Any] = {"progress": 1.0}
        if final:
            current = json.loads(self.redis.hget(self._key(job_id), "metrics") or "{}")
            current.update({k: float(v) for k, v in final.items() if isinstance(v, int | float)})
            fields["metrics"] = json.dumps(current)
        self.update(job_id, fields)
        ended: JobState = "succeeded"
        if cancel.is_set():
            ended = "interrupted" if self._stopping.is_set() else "cancelled"
        self._set_state(job_id, ended)

    # -- Redis writes (the JobStore a JobContext reports through) ----------------------------------------------------------------------------
    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(self._key(job_id), mapping={**fields, "updated_at": time.time()})

    def _set_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        fields: dict[str, Any] = {"state": state}
        if error is not None:
            fields["error"] = error
        if state == "running":
            fields["started_at"] = time.time()
        elif state in TERMINAL:
            fields["finished_at"] = time.time()
        self.update(job_id, fields)
        payload: dict[str, Any] = {"state": state}
        if error:
            payload["error"] = error
        self.event(job_id, "state", payload)

    def event(self, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        data = json.dumps({"type": kind, "time": time.time(), **payload}, default=str)
        self.redis.xadd(self._events_key(job_id), {"data": data}, maxlen=self.settings.events_maxlen,
                        approximate=True)

    def add_artifact(self, job_id: str, name: str) -> None:
        with self._lock:
            current = json.loads(self.redis.hget(self._key(job_id), "artifacts") or "[]")
            if name not in current:
                current.append(name)
                self.redis.hset(self._key(job_id), "artifacts", json.dumps(current))


def _live_cluster(data: dict[str, str]) -> bool:
    """Whether a job record names a run on a Ray cluster that had not ended when last seen."""
    if not data.get("cluster"):
        return False
    return json.loads(data["cluster"]).get("status") not in ("STOPPED", "SUCCEEDED", "FAILED")
