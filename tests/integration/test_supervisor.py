"""The local cluster's supervisor over real processes (issue 18: nothing restarted a dead process of
``searchlab up``): a SIGKILLed redis-server comes back on its port with its data, counted in the
state ``searchlab status`` reads; one that keeps dying is given up on after the cap."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from services.supervisor import Policy, Supervisor, write_specs
from shared import local_cluster
from shared.local_cluster import ClusterState
from shared.processes import Proc, pid_alive, start_redis


@pytest.fixture()
def supervised(tmp_path: Path) -> Iterator[tuple[Proc, Callable[[Policy], Supervisor]]]:
    server = start_redis(log_dir=tmp_path / "logs", data_dir=tmp_path / "redis", appendonly=True)
    state = ClusterState(run_dir=str(tmp_path), urls={"redis": server.url}, pids={"redis": server.popen.pid},
                         logs={"redis": str(server.log_path)})
    local_cluster.save_state(state, tmp_path)
    write_specs(tmp_path, {"redis": server})
    threads: list[tuple[Supervisor, threading.Thread]] = []

    def start(policy: Policy) -> Supervisor:
        sup = Supervisor(tmp_path, policy, poll_s=0.1)
        thread = threading.Thread(target=sup.run, daemon=True)
        thread.start()
        threads.append((sup, thread))
        return sup

    yield server, start
    for sup, thread in threads:
        sup.stop()
        thread.join(timeout=5)
    for pid in (local_cluster.load_state(tmp_path) or state).pids.values():
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_process_is_restarted_where_it_was(supervised: tuple[Proc, Callable[[Policy], Supervisor]],
                                                    tmp_path: Path) -> None:
    server, start = supervised
    redis.Redis.from_url(server.url).set("kept", "yes")
    start(Policy(first_backoff_s=0.2))
    server.kill()  # SIGKILL

    def restarted() -> bool:
        state = local_cluster.load_state(tmp_path)
        return state is not None and state.restarts.get("redis") == 1 and pid_alive(state.pids["redis"])

    wait_until(restarted, 30, "the supervisor to restart redis")
    state = local_cluster.load_state(tmp_path)
    assert state is not None and state.pids["redis"] != server.popen.pid
    client = redis.Redis.from_url(server.url, socket_timeout=2)  # same port, same append-only file
    wait_until(lambda: _answers(client), 20, "the restarted redis to answer")
    assert client.get("kept") == b"yes"


def test_a_process_that_keeps_dying_is_given_up_on(supervised: tuple[Proc, Callable[[Policy], Supervisor]],
                                                   tmp_path: Path) -> None:
    server, start = supervised
    start(Policy(first_backoff_s=0.1, max_restarts=2))
    for restart in range(1, 4):  # it dies three times: restarted twice, then left dead
        state = local_cluster.load_state(tmp_path)
        assert state is not None
        os.killpg(state.pids["redis"], signal.SIGKILL)
        if restart <= 2:
            wait_until(lambda r=restart: _restarts(tmp_path) == r, 30, f"restart {restart}")  # type: ignore[misc]
            wait_until(lambda: _answers(redis.Redis.from_url(server.url, socket_timeout=1)), 20, "redis")
    wait_until(lambda: "redis" in (local_cluster.load_state(tmp_path) or ClusterState("")).gave_up, 30, "give-up")
    assert _restarts(tmp_path) == 2


def _restarts(run_dir: Path) -> int:
    state = local_cluster.load_state(run_dir)
    return state.restarts.get("redis", 0) if state else 0


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
