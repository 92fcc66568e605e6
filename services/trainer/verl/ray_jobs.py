"""A verl run on a Ray cluster through the Ray Jobs API (``ray.job_submission.JobSubmissionClient``).

    jobs = RayJobs("http://ray-head:8265")
    sid = jobs.submit(run_dir, python="python", env={...}, prepare_only=False, submission_id="searchlab-rl-...")
    final = jobs.watch(sid, on_lines=..., on_status=..., should_stop=..., should_detach=...)

The entrypoint is ours (:mod:`services.trainer.verl.entry`): it waits for the run's services, prepares and
validates the run directory on the cluster (data export, verl's config tree), then runs ``command.sh``
(verl's ``main_ppo`` per stage). The runtime env names the run directory (``SEARCHLAB_RUN_DIR``; it must be
on storage the cluster shares with the trainer: the cache volume in compose and k8s) and carries the
secrets the agent loop and the reward read from the environment, never the command line.

:meth:`RayJobs.watch` follows one submission until it ends: its driver log streamed line by line
(``tail_job_logs``; verl's console logger prints a ``step:N - key:value - ...`` line per step, parsed by
:func:`parse_step_line`), its status polled every ``poll_s``; when ``should_stop()`` turns true it asks
Ray to stop the job (SIGTERM, then SIGKILL after Ray's grace period) and waits for it to end; when
``should_detach()`` does (the trainer shuts down) it returns at once and leaves the job running, for the
next trainer to attach to (:meth:`watch` again with the same submission id).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TERMINAL = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
MAX_LINE = 2000  # characters kept of one log line
MAX_METRICS = 1024  # numbers kept of one step line

# verl's LocalLogger: "step:12 - actor/pg_loss:0.01 - critic/score/mean:0.4" (verl/utils/logger/aggregate_logger.py),
# printed inside Ray actors, so Ray prefixes it with "(TaskRunner pid=123) ".
_STEP = re.compile(r"(?:^|\s|\))step:(\d+) - (.+)$")
_WRAPPED = re.compile(r"^[A-Za-z_.0-9]+\((.+)\)$")  # np.float64(0.5) -> 0.5


def parse_step_line(line: str) -> tuple[int, dict[str, float]] | None:
    """``(step, metrics)`` of one verl console-logger line, or None for any other line."""
    match = _STEP.search(line.rstrip())
    if match is None:
        return None
    metrics: dict[str, float] = {}
    for part in match.group(2).split(" - ")[:MAX_METRICS]:
        key, sep, raw = part.rpartition(":")
        if not sep or not key:
            continue
        raw = raw.strip()
        wrapped = _WRAPPED.match(raw)
        try:
            value = float(wrapped.group(1) if wrapped else raw)
        except ValueError:
            continue
        if math.isfinite(value):
            metrics[key.strip()] = value
    return int(match.group(1)), metrics


class StepCounter:
    """verl's steps restart at 1 in each stage of a multi-stage run: one increasing step across the run."""

    def __init__(self) -> None:
        self.offset = 0
        self.last = 0

    def global_step(self, step: int) -> int:
        if step < self.last:  # a new stage (main_ppo) started
            self.offset += self.last
        self.last = step
        return self.offset + step


@dataclass
class RayState:
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str = ""


class RayJobs:
    """One Ray cluster's Jobs API."""

    def __init__(self, address: str, timeout_s: float = 30.0):
        from ray.job_submission import JobSubmissionClient

        self.address = address
        self.client: Any = JobSubmissionClient(address)
        self.timeout_s = timeout_s
        self.stream_broken = False  # the last watch lost the log stream (logs_tail() has the log's end)
        self.max_poll_failures = 30  # consecutive failed status reads before the watch gives up

    def submit(self, run_dir: str, *, python: str, env: dict[str, str], submission_id: str, prepare_only: bool,
               wait_services_s: float, num_cpus: float = 1.0, metadata: dict[str, str] | None = None) -> str:
        """Submit the run's entrypoint; returns the submission id (idempotent per id: Ray refuses a second)."""
        args = [python, "-m", "services.trainer.verl.entry", run_dir, "--wait-services-s", f"{wait_services_s:g}"]
        if prepare_only:
            args.append("--prepare-only")
        runtime_env = {"env_vars": {"SEARCHLAB_RUN_DIR": run_dir, "PYTHONUNBUFFERED": "1", **env}}
        return str(self.client.submit_job(entrypoint=" ".join(shlex.quote(a) for a in args),
                                          submission_id=submission_id, runtime_env=runtime_env,
                                          entrypoint_num_cpus=num_cpus, metadata=metadata or {}))

    def state(self, submission_id: str) -> RayState:
        info = self.client.get_job_info(submission_id)
        return RayState(str(info.status), str(info.message or ""))

    def stop(self, submission_id: str) -> bool:
        return bool(self.client.stop_job(submission_id))

    def logs_tail(self, submission_id: str, max_chars: int = 65536) -> list[str]:
        """The end of the job's driver log (when the stream was lost)."""
        return [line[:MAX_LINE] for line in str(self.client.get_job_logs(submission_id))[-max_chars:].splitlines()]

    def watch(self, submission_id: str, *, on_lines: Callable[[list[str]], None],
              on_status: Callable[[RayState], None], should_stop: Callable[[], bool],
              should_detach: Callable[[], bool], poll_s: float = 2.0, stop_wait_s: float = 120.0) -> RayState | None:
        """Follow the job until it ends (its final state) or ``should_detach()`` (None); see the module doc."""
        return asyncio.run(self._watch(submission_id, on_lines, on_status, should_stop, should_detach, poll_s,
                                       stop_wait_s))

    async def _watch(self, sid: str, on_lines: Callable[[list[str]], None], on_status: Callable[[RayState], None],
                     should_stop: Callable[[], bool], should_detach: Callable[[], bool], poll_s: float,
                     stop_wait_s: float) -> RayState | None:
        self.stream_broken = False
        tail = asyncio.create_task(self._tail(sid, on_lines))
        stop_asked: float | None = None
        last: RayState | None = None
        failures = 0
        try:
            while True:
                try:
                    state = await asyncio.to_thread(self.state, sid)
                    failures = 0
                except (RuntimeError, OSError) as exc:  # the Jobs API unreachable for a moment: the job runs on
                    failures += 1
                    if failures > self.max_poll_failures:
                        raise RuntimeError(f"the Ray Jobs API at {self.address} did not answer {failures} polls "
                                           f"in a row: {exc}") from exc
                    log.warning("reading Ray job %s failed (%d in a row): %s", sid, failures, exc)
                    await asyncio.sleep(poll_s)
                    continue
                if last is None or state != last:
                    on_status(state)
                last = state
                if state.status in TERMINAL:
                    break
                if should_detach():
                    return None
                if should_stop() and stop_asked is None:
                    log.info("stopping Ray job %s", sid)
                    await asyncio.to_thread(self.stop, sid)
                    stop_asked = time.monotonic()
                if stop_asked is not None and time.monotonic() - stop_asked > stop_wait_s:
                    raise TimeoutError(f"Ray job {sid} was asked to stop {stop_wait_s:.0f}s ago and is {state.status}")
                await asyncio.sleep(poll_s)
            try:  # the stream ends by itself once the job is terminal: let it deliver the last lines
                await asyncio.wait_for(asyncio.shield(tail), timeout=10)
            except TimeoutError:
                pass
            return last
        finally:
            tail.cancel()

    async def _tail(self, sid: str, on_lines: Callable[[list[str]], None]) -> bool:
        """Stream the driver log into ``on_lines`` (whole lines); False if the stream broke."""
        partial = ""
        try:
            async for chunk in self.client.tail_job_logs(sid):
                lines = (partial + chunk).split("\n")
                partial = lines.pop()
                if lines:
                    on_lines([line[:MAX_LINE] for line in lines])
        except (RuntimeError, OSError) as exc:  # aiohttp's errors are OSErrors; Ray raises RuntimeError
            log.warning("log stream of Ray job %s broke: %s", sid, exc)
            self.stream_broken = True
            return False
        if partial:
            on_lines([partial[:MAX_LINE]])
        return True


def submit_and_follow(run_dir: str, address: str, *, python: str = "python", prepare_only: bool = False,
                      wait_services_s: float = 600.0) -> int:
    """``searchlab train --engine verl --ray-address URL``: the run on a Ray cluster, its log on stdout until it
    ends (0: SUCCEEDED). ``run_dir`` must be a path the cluster sees the same (a shared volume); the services'
    keys and the Redis URL go in the runtime env from this shell's ``SEARCHLAB_<SERVICE>_API_KEY`` /
    ``SEARCHLAB_API_KEY`` / ``SEARCHLAB_REDIS_URL``."""
    import os
    import sys

    jobs = RayJobs(address)
    from shared.keys import ClientKeyEnv, key_env

    env = {k: os.environ[k] for k in ("SEARCHLAB_REDIS_URL",) if os.environ.get(k)} | key_env(ClientKeyEnv().keys())
    sid = f"searchlab-{os.path.basename(run_dir.rstrip('/'))}-{int(time.time())}"
    jobs.submit(run_dir, python=python, env=env, submission_id=sid, prepare_only=prepare_only,
                wait_services_s=wait_services_s)
    log.info("submitted Ray job %s to %s (ray job stop %s --address %s stops it)", sid, address, sid, address)
    def echo(lines: list[str]) -> None:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()

    final = jobs.watch(sid, on_lines=echo,
                       on_status=lambda s: log.info("Ray job %s: %s %s", sid, s.status, s.message),
                       should_stop=lambda: False, should_detach=lambda: False)
    return 0 if final is not None and final.status == "SUCCEEDED" else 1
