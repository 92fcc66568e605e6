"""Local bring-up without containers: ``searchlab up`` / ``status`` / ``down``.

Starts, as supervised background processes with health checks and log files, a real Redis,
the retriever (index over the corpus, built once and cached), the judge, the simulator, the
trainer and N rollout workers, all on loopback. The processes and their URLs are recorded in
``<cache>/cluster/cluster.json`` so ``status`` and ``down`` (and later commands, e.g.
``searchlab demo``) find them. A supervisor process (:mod:`services.supervisor`) restarts any of
them that dies, with a backoff and a cap; ``status`` shows each one's restarts. Each service gets a key of
its own (four independent random keys, kept in the state file, mode 0600), and each process is started with
its own key and the keys of the services it calls, nothing more (:func:`process_keys`). Settings use the
same names as docker-compose and k8s:

    SEARCHLAB_CLUSTER_WORKERS=2 SEARCHLAB_CLUSTER_BASE_PORT=8001 searchlab up
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import local_cluster
from shared.config import corpus_path
from shared.keys import SERVICES, Service, ServiceKeys
from shared.local_cluster import ClusterState
from shared.processes import Proc, free_port, pid_alive, spawn, start_redis, wait_http

log = logging.getLogger(__name__)

# The keys each kind of process is started with, setting -> whose key: a service's own (<PREFIX>_API_KEY, the
# one it requires) and, per service it calls, the setting its client reads that service's key from.
PROCESS_KEYS: dict[str, dict[str, Service]] = {
    "retriever": {"RETRIEVER_API_KEY": "retriever"},
    "judge": {"JUDGE_API_KEY": "judge"},
    "simulator": {"SIMULATOR_API_KEY": "simulator", "SIMULATOR_RETRIEVER_API_KEY": "retriever"},
    "trainer": {"TRAINER_API_KEY": "trainer", "TRAINER_RETRIEVER_API_KEY": "retriever",
                "TRAINER_JUDGE_API_KEY": "judge", "TRAINER_SIMULATOR_API_KEY": "simulator"},
    "worker": {"WORKER_RETRIEVER_API_KEY": "retriever", "WORKER_SIMULATOR_API_KEY": "simulator",
               "WORKER_JUDGE_API_KEY": "judge"},
}


class ClusterSettings(BaseSettings):
    """How ``searchlab up`` lays out the local cluster (env prefix ``SEARCHLAB_CLUSTER_``)."""

    model_config = SettingsConfigDict(env_prefix="SEARCHLAB_CLUSTER_", extra="ignore")

    base_port: int = 8001  # retriever, judge, simulator, trainer get base_port + 0..3 (0 = free ports)
    workers: int = Field(default=2, ge=0)  # rollout worker processes
    redis_url: str | None = None  # an external Redis; None starts a private redis-server
    redis_port: int = 0  # private redis-server port (0 = a free port)
    redis_maxmemory: str = "2gb"  # private redis-server's memory cap (noeviction: a full Redis refuses writes)
    corpus: Path = Field(default_factory=corpus_path)  # passages the retriever indexes
    index_type: Literal["flat", "hnsw", "ivfpq"] = "flat"  # FAISS index kind
    judge_backend: str = "local"  # LLM backend of the judge: local | openai
    simulator_mode: str = "corpus"  # corpus (grounded, cheap) | llm
    worker_batch: int = 8  # episodes a worker generates together
    trainer_threads: int = 0  # torch threads of the trainer's training jobs (0: every core)
    # One bearer token for all four services (and every client in it), as before keys were per service. None:
    # a new random key per service per `searchlab up`, kept in the cluster's state file (mode 0600). A
    # committed default would let anyone on the machine in.
    api_key: SecretStr | None = None
    start_timeout_s: float = 300.0
    supervise: bool = True  # restart processes that die (services/supervisor.py)
    run_dir: Path | None = None  # default <cache>/cluster


def state_path(settings: ClusterSettings | None = None) -> Path:
    return local_cluster.state_path((settings or ClusterSettings()).run_dir)


def load_state(settings: ClusterSettings | None = None) -> ClusterState | None:
    return local_cluster.load_state((settings or ClusterSettings()).run_dir)


def _alive(pid: int) -> bool:
    return pid_alive(pid)


def _port(settings: ClusterSettings, offset: int) -> int:
    return settings.base_port + offset if settings.base_port else free_port()


def cluster_keys(settings: ClusterSettings) -> ServiceKeys:
    """``SEARCHLAB_CLUSTER_API_KEY`` for all four services if set, else a new random key for each."""
    if settings.api_key is not None and settings.api_key.get_secret_value():
        return ServiceKeys(default=settings.api_key)
    return ServiceKeys.generate()


def process_keys(kind: str, keys: ServiceKeys) -> dict[str, str]:
    """The keys one process of ``kind`` (a service name or ``worker``) is started with (:data:`PROCESS_KEYS`):
    its own, as the key it requires, and the key of each service it calls. None holds a key it does not use."""
    return {name: key for name, service in PROCESS_KEYS[kind].items() if (key := keys.of(service))}


def service_env(state: ClusterState, settings: ClusterSettings) -> dict[str, str]:
    """The environment every service and worker of the local cluster is started with (keys come on top:
    :func:`process_keys`)."""
    redis_url = state.urls["redis"]
    return {
        "SEARCHLAB_REDIS_URL": redis_url,
        "JUDGE_REDIS_URL": redis_url,
        "JUDGE_LLM__BACKEND": settings.judge_backend,
        "SIMULATOR_MODE": settings.simulator_mode,
        "SIMULATOR_RETRIEVER_URL": state.urls.get("retriever", ""),
        "SIMULATOR_JUDGE_URL": state.urls.get("judge", ""),
        "TRAINER_REDIS_URL": redis_url,
        "TRAINER_RETRIEVER_URL": state.urls.get("retriever", ""),
        "TRAINER_JUDGE_URL": state.urls.get("judge", ""),
        "TRAINER_SIMULATOR_URL": state.urls.get("simulator", ""),
        # Training runs while the workers wait (SFT, the update half of an RL step): it gets every core.
        "TRAINER_TORCH_THREADS": str(settings.trainer_threads or os.cpu_count() or 1),
        "WORKER_REDIS_URL": redis_url,
        "WORKER_RETRIEVER_URL": state.urls.get("retriever", ""),
        "WORKER_SIMULATOR_URL": state.urls.get("simulator", ""),
        "WORKER_JUDGE_URL": state.urls.get("judge", ""),
        "WORKER_BATCH_SIZE": str(settings.worker_batch),
    }


def _record(state: ClusterState, name: str, proc: Proc) -> None:
    state.pids[name] = proc.popen.pid
    state.logs[name] = str(proc.log_path)
    if proc.url:
        state.urls[name] = proc.url


def up(settings: ClusterSettings | None = None) -> ClusterState:
    """Start the whole local cluster (idempotent: an already running cluster is returned)."""
    settings = settings or ClusterSettings()
    current = load_state(settings)
    if current is not None and all(_alive(p) for p in current.pids.values()) and status(settings)["ready"]:
        log.info("cluster already up (%s)", state_path(settings))
        return current
    if current is not None:
        down(settings)
    run_dir = local_cluster.run_dir(settings.run_dir)
    logs = run_dir / "logs"
    keys = cluster_keys(settings)
    state = ClusterState(run_dir=str(run_dir), api_keys=keys.reveal(), started_at=time.time())
    started: list[Proc] = []
    try:
        if settings.redis_url:
            state.urls["redis"] = settings.redis_url
        else:
            redis_proc = start_redis(port=settings.redis_port or None, log_dir=logs, data_dir=run_dir / "redis",
                                     appendonly=True, maxmemory=settings.redis_maxmemory)
            started.append(redis_proc)
            _record(state, "redis", redis_proc)

        index_dir = _ensure_index(settings)
        # Ports first, so every service starts knowing every URL; then all start at once and
        # are waited for together (each loads its own model or index).
        for offset, name in enumerate(SERVICES):
            state.urls[name] = f"http://127.0.0.1:{_port(settings, offset)}"
        env = service_env(state, settings) | {"RETRIEVER_INDEX_DIR": str(index_dir)}
        services = []
        for name in SERVICES:
            port = int(state.urls[name].rsplit(":", 1)[1])
            proc = _start(name, [sys.executable, "-m", f"services.{name}"], port, env | process_keys(name, keys), logs)
            started.append(proc)
            services.append(proc)
        for proc in services:
            wait_http(proc, proc.url + "/ready", settings.start_timeout_s)
            _record(state, proc.name, proc)
        for i in range(settings.workers):
            worker_env = env | process_keys("worker", keys) | {"WORKER_NAME": f"worker-{i}"}
            proc = spawn(f"worker-{i}", [sys.executable, "-m", "services.trainer.rollout.worker"], env=worker_env,
                         log_dir=logs)
            started.append(proc)
            _record(state, f"worker-{i}", proc)
        time.sleep(1.0)
        dead = [p.name for p in started if not p.alive()]
        if dead:
            raise RuntimeError(f"exited during start-up: {dead}; see logs in {logs}")
        local_cluster.save_state(state, settings.run_dir)
        if settings.supervise:
            from services import supervisor

            named = {name: p for p in started for name, pid in state.pids.items() if pid == p.popen.pid}
            watcher = supervisor.start(run_dir, named, logs)
            started.append(watcher)
            _record(state, supervisor.NAME, watcher)
            local_cluster.save_state(state, settings.run_dir)
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise
    return state


def _start(name: str, argv: list[str], port: int, env: dict[str, str], logs: Path) -> Proc:
    prefix = name.upper()
    proc = spawn(name, argv, env=env | {f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port)}, log_dir=logs)
    proc.url = f"http://127.0.0.1:{port}"
    return proc


def _ensure_index(settings: ClusterSettings) -> Path:
    from services.retriever.config import corpus_index_dir
    from services.retriever.engine import ensure_index

    out = corpus_index_dir(settings.corpus, settings.index_type)
    return Path(ensure_index(settings.corpus, out, index_type=settings.index_type))


def status(settings: ClusterSettings | None = None) -> dict[str, Any]:
    """Each recorded process: alive? and, for services, ready?"""
    state = load_state(settings)
    if state is None:
        return {"ready": False, "processes": {}}
    processes: dict[str, dict[str, Any]] = {}
    for name, pid in state.pids.items():
        entry: dict[str, Any] = {"pid": pid, "alive": _alive(pid), "log": state.logs.get(name, ""),
                                 "restarts": state.restarts.get(name, 0)}
        if name in state.gave_up:
            entry["gave_up"] = True
        url = state.urls.get(name, "")
        if url.startswith("http"):
            entry["url"] = url
            try:
                entry["ready"] = httpx.get(url + "/ready", timeout=3).status_code == 200
            except httpx.HTTPError:
                entry["ready"] = False
        processes[name] = entry
    ready = bool(processes) and all(p["alive"] and p.get("ready", True) for p in processes.values())
    return {"ready": ready, "processes": processes, "urls": state.urls}


def down(settings: ClusterSettings | None = None, timeout_s: float = 20.0) -> list[str]:
    """Stop every process of the cluster (workers first, Redis last); returns what was stopped."""
    state = load_state(settings)
    if state is None:
        return []
    stopped = []
    watcher = state.pids.get("supervisor")
    if watcher is not None and _stop_pid(watcher, timeout_s):  # first, or it would restart what is stopped next
        stopped.append("supervisor")
    state = load_state(settings) or state  # the supervisor may have restarted some (new pids)
    order = sorted(state.pids, key=lambda n: (n == "redis", not n.startswith("worker"), n))
    for name in order:
        if name == "supervisor":
            continue
        if _stop_pid(state.pids[name], timeout_s):
            stopped.append(name)
    state_path(settings).unlink(missing_ok=True)
    return stopped


def _stop_pid(pid: int, timeout_s: float) -> bool:
    """SIGTERM the process group of ``pid`` and wait until all of it is gone (a child it forked too),
    SIGKILL after ``timeout_s``; False if it was not running."""
    if not _alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while _group_exists(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if _group_exists(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        _reap(pid)
        deadline = time.monotonic() + 5
        while _group_exists(pid) and time.monotonic() < deadline:  # until its exited members are reaped
            time.sleep(0.1)
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
