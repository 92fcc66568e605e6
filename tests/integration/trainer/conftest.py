"""Fixtures of the episode tests (queue, workers, agent, eval): private Redis servers and rollout
workers as real subprocesses (``python -m services.trainer.rollout.worker``). The retriever on the small
corpus (``small_retriever``) comes from the root conftest, shared with the simulator tests.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.client import TrainerClient
from shared.processes import Proc, spawn, start_redis, start_service

WorkerFactory = Callable[..., Proc]


@pytest.fixture()
def trainer_env() -> dict[str, str]:
    """More ``TRAINER_*`` settings for ``job_client``'s trainer (a test module overrides this fixture, e.g. to
    give it a judge)."""
    return {}


@pytest.fixture()
def job_client(private_redis: Proc, small_retriever: Proc, logs_dir: Path, tmp_path: Path,
               tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> Iterator[TrainerClient]:
    """A client of a real trainer (its own Redis, the shared retriever, jobs under ``tmp_path``; the tests' temp
    folders are where its users keep data)."""
    key = "job-test-key"
    env = {"TRAINER_API_KEY": key, "TRAINER_REDIS_URL": private_redis.url, "TRAINER_OUTPUT_DIR": str(tmp_path),
           "TRAINER_READ_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())]),
           "TRAINER_RETRIEVER_URL": small_retriever.url, "TRAINER_TORCH_THREADS": "1", **trainer_env}
    proc = start_service("trainer", env, log_dir=logs_dir)
    yield TrainerClient(proc.url, key, timeout_s=30)
    proc.stop()


@pytest.fixture()
def private_redis(logs_dir: Path) -> Iterator[Proc]:
    """A Redis of this test alone, so queue state never leaks between tests."""
    proc = start_redis(log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture()
def start_worker(logs_dir: Path) -> Iterator[WorkerFactory]:
    """``start_worker(redis_url, name, **WORKER_settings)`` -> a worker subprocess, stopped after the test."""
    procs: list[Proc] = []

    def start(redis_url: str, name: str, **settings: object) -> Proc:
        env = {"WORKER_REDIS_URL": redis_url, "WORKER_NAME": name, "WORKER_LOG_LEVEL": "info",
               "WORKER_BLOCK_MS": "200", "OMP_NUM_THREADS": "1"}
        env.update({f"WORKER_{k.upper()}": str(v) for k, v in settings.items()})
        proc = spawn(name, [sys.executable, "-m", "services.trainer.rollout.worker"], env=env, log_dir=logs_dir)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, procs: list[Proc] | None = None) -> None:
    """Poll ``predicate`` until true; fail with the workers' logs if it never is or a worker died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs or []:
            if not p.alive():
                raise AssertionError(f"{p.name} exited ({p.popen.returncode}) while waiting for {what}:\n"
                                     f"{p.log_tail()}")
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs or [])
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")


@pytest.fixture()
def waiter() -> Callable[..., None]:
    """:func:`wait_for` as a fixture."""
    return wait_for
