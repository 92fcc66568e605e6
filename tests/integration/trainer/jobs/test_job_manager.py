"""The job manager against a real Redis: every job ends in a state a user can read, with the reason."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from pydantic import BaseModel

from services.trainer.config import TrainerSettings
from services.trainer.jobs.kinds import JobKindSpec
from services.trainer.jobs.manager import JobManager
from shared.schemas import JobStatus, JobSubmit


class _Config(BaseModel):
    steps: int = 1


def _boom(ctx: object) -> None:
    raise RuntimeError("the data folder vanished")


def _wait_terminal(manager: JobManager, job_id: str, timeout: float = 20.0) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = manager.get(job_id)
        if status.state in ("succeeded", "failed", "cancelled", "interrupted"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {manager.get(job_id).state} after {timeout}s")


def _manager(redis_url: str, tmp_path: Path, prefix: str) -> JobManager:
    settings = TrainerSettings(redis_url=redis_url, output_dir=tmp_path, key_prefix=prefix)
    # Real kind names (the API only accepts those), bound to small runners.
    return JobManager(settings, kinds={"ramp": JobKindSpec(_Config, lambda ctx: {"done": 1.0}),
                                       "sft": JobKindSpec(_Config, _boom)})


def test_a_job_that_raises_is_failed_with_its_error(redis_url: str, tmp_path: Path) -> None:
    manager = _manager(redis_url, tmp_path, "t-raise")
    try:
        status = _wait_terminal(manager, manager.submit(JobSubmit(kind="sft", config={})))
        assert status.state == "failed"
        assert status.error == "RuntimeError: the data folder vanished"
        ok = _wait_terminal(manager, manager.submit(JobSubmit(kind="ramp", config={})))
        assert ok.state == "succeeded" and ok.metrics["done"] == 1.0
    finally:
        manager.shutdown()


def test_a_resumed_job_whose_stored_config_no_longer_validates_fails_instead_of_staying_queued(
        redis_url: str, tmp_path: Path) -> None:
    first = _manager(redis_url, tmp_path, "t-resume")
    job_id = first.submit(JobSubmit(kind="ramp", config={"steps": 3}))
    _wait_terminal(first, job_id)
    # As after an upgrade that changed the config's schema: the record is queued with a config
    # the running trainer cannot read.
    first.shutdown()
    redis.Redis.from_url(redis_url).hset(f"t-resume:job:{job_id}",
                                         mapping={"state": "queued", "config": '{"steps": "many"}'})

    second = _manager(redis_url, tmp_path, "t-resume")
    try:
        assert second.start() == {"interrupted": 0, "resumed": 1, "reattached": 0}
        status = _wait_terminal(second, job_id)
        assert status.state == "failed"
        assert status.error is not None and "steps" in status.error
    finally:
        second.shutdown()
