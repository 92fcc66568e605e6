"""An ``rl`` job's verl run on the trainer's Ray cluster: submitted, followed, cancelled, re-attached.

    run_on_ray(ctx, run_dir, prepare_only, total_steps)  # after services.trainer.verl.run.prepare

- **Submit** (:class:`services.trainer.verl.ray_jobs.RayJobs`, the Ray Jobs API at ``TRAINER_RAY_ADDRESS``):
  submission id ``searchlab-<job id>``; the runtime env names the run directory and carries
  the services' keys (``SEARCHLAB_<SERVICE>_API_KEY``, ``SEARCHLAB_API_KEY`` for the rest: the trainer's
  :meth:`~services.trainer.config.TrainerSettings.service_keys`) and ``SEARCHLAB_REDIS_URL`` (the agent loop
  and the reward read them there).
- **Follow**: Ray's status -> ``JobStatus.cluster.status`` and a ``log`` event per change; the driver log ->
  ``log`` events (``source: "ray"``, a batch of lines each) and ``cluster.log_tail`` (last 100 lines); each
  ``step:N - key:value`` line of verl's console logger -> a step report (metrics, ``metrics.jsonl``,
  TensorBoard) at a step number that keeps increasing across the run's stages.
- **Cancel** (``POST /jobs/{id}/cancel``): the Ray job is stopped, the job ends ``cancelled`` once Ray says
  ``STOPPED``.
- **Restart**: a trainer that shuts down leaves the Ray job running (:class:`JobDetached`); the next one
  finds ``cluster`` in the record, attaches to the same submission, and skips the log lines and steps the
  record already has.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from services.trainer.jobs.context import JobCancelled, JobContext, JobDetached
from services.trainer.verl.ray_jobs import RayJobs, RayState, StepCounter, parse_step_line
from shared.keys import key_env

TAIL_LINES = 100  # driver log lines kept on the job record
EVENT_CHARS = 8000  # characters of log lines per event
FLUSH_S = 1.0  # the record's log tail is rewritten at most this often


def run_on_ray(ctx: JobContext, run_dir: Path, prepare_only: bool, total_steps: int) -> dict[str, Any]:
    """Launch (or attach to) the run at ``run_dir`` on the Ray cluster and follow it to its end."""
    previous = ctx.cluster
    address = str(previous["address"]) if previous else ctx.settings.ray_address
    if not address:
        raise ValueError("launch 'ray' needs the trainer's Ray cluster: set TRAINER_RAY_ADDRESS (the head's "
                         "Jobs API, e.g. http://ray-head:8265)")
    jobs = RayJobs(address)
    if previous:
        sid = str(previous["submission_id"])
        ctx.log(f"re-attached to Ray job {sid} on {address}")
    else:
        sid = f"searchlab-{ctx.job_id}"
        # on the record before Ray has it: a trainer that dies right after submitting still re-attaches
        ctx.set_cluster({"address": address, "submission_id": sid, "status": "PENDING"})
        # what the run's agent loop and reward send to the services (the runtime env, never a file or a log)
        env = {"SEARCHLAB_REDIS_URL": ctx.settings.redis_url, **key_env(ctx.settings.service_keys())}
        jobs.submit(str(run_dir), python=ctx.settings.ray_python, env=env, submission_id=sid,
                    prepare_only=prepare_only, wait_services_s=ctx.settings.ray_wait_services_s,
                    num_cpus=ctx.settings.ray_entrypoint_cpus, metadata={"searchlab_job": ctx.job_id})
        ctx.log(f"submitted Ray job {sid} to {address}")
    follower = _Follower(ctx, address, sid, previous or {}, total_steps)
    follower.flush()
    final = jobs.watch(sid, on_lines=follower.lines, on_status=follower.status,
                       should_stop=lambda: ctx.cancelled() and not ctx.stopping(), should_detach=ctx.stopping,
                       poll_s=ctx.settings.ray_poll_s)
    if jobs.stream_broken and final is not None:
        follower.tail.extend(jobs.logs_tail(sid)[-TAIL_LINES:])
    follower.flush()
    if final is None:
        raise JobDetached(ctx.job_id)
    if final.status == "STOPPED":
        if ctx.cancelled():
            raise JobCancelled(ctx.job_id)
        raise RuntimeError(f"Ray job {sid} was stopped on the cluster (not through this trainer)")
    if final.status == "FAILED":
        last = " | ".join(list(follower.tail)[-5:])
        raise RuntimeError(f"Ray job {sid} failed: {final.message or 'no message'}; last log lines: {last}"[:2000])
    return {"submission_id": sid, "address": address, "ray_status": final.status, "steps": follower.step}


class _Follower:
    """Turns a Ray job's status and log lines into the job's record, events and step reports."""

    def __init__(self, ctx: JobContext, address: str, sid: str, previous: dict[str, Any], total_steps: int):
        self.ctx = ctx
        self.record: dict[str, Any] = {"address": address, "submission_id": sid, "status": "PENDING", "message": "",
                                       **{k: previous[k] for k in ("status", "message") if k in previous}}
        self.skip = int(previous.get("lines", 0))  # lines an earlier trainer already turned into events
        self.step = int(previous.get("step", 0))  # steps already reported
        self.seen = 0
        self.tail: deque[str] = deque(previous.get("log_tail", []), maxlen=TAIL_LINES)
        self.counter = StepCounter()
        self.total_steps = total_steps
        self._flushed = 0.0

    def status(self, state: RayState) -> None:
        changed = state.status != self.record["status"]
        self.record.update(status=state.status, message=state.message)
        if changed:
            self.ctx.log(f"Ray job {self.record['submission_id']}: {state.status}"
                         + (f" ({state.message})" if state.message else ""), source="ray", ray_status=state.status)
        self.flush()

    def lines(self, lines: list[str]) -> None:
        fresh: list[str] = []
        for line in lines:
            self.seen += 1
            parsed = parse_step_line(line)
            if parsed is not None:
                step = self.counter.global_step(parsed[0])
                if step > self.step:
                    self.step = step
                    progress = min(step / self.total_steps, 1.0) if self.total_steps else None
                    self.ctx.report(step, parsed[1], progress=progress)
            if self.seen > self.skip:
                fresh.append(line)
                self.tail.append(line)
        while fresh:  # one event per batch of lines, each bounded
            batch: list[str] = []
            size = 0
            while fresh and (not batch or size + len(fresh[0]) < EVENT_CHARS):
                size += len(fresh[0]) + 1
                batch.append(fresh.pop(0))
            self.ctx.store.event(self.ctx.job_id, "log", {"message": "\n".join(batch), "lines": len(batch),
                                                          "source": "ray"})
        if time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        self.record.update(lines=max(self.seen, self.skip), step=self.step, log_tail=list(self.tail))
        self.ctx.set_cluster(json.loads(json.dumps(self.record)))
        self._flushed = time.monotonic()
