"""``rl`` jobs on the verl engine launched on a real Ray cluster (a local head on loopback, one CPU) through
the trainer's jobs API: the Ray job runs our entrypoint (it waits for the run's services, then prepares and
validates the run directory in verl's tree), its state and log lines reach ``GET /jobs/{id}`` and the job's
events, cancel stops it on the cluster, and a trainer that restarts attaches to it instead of dropping it."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.client import TrainerClient
from shared.config import REPO_ROOT
from shared.processes import Proc, free_port, spawn, start_service, wait_http
from shared.schemas import JobStatus

pytestmark = pytest.mark.slow

KEY = "ray-test-key"
DOWN = f"http://127.0.0.1:{free_port()}"  # a retriever URL nobody serves (the cancel test waits on it)


@pytest.fixture(scope="module")
def ray_head(logs_dir: Path) -> Iterator[str]:
    """``ray start --head --block`` on 127.0.0.1 with one CPU and a 100 MB object store; its Jobs API address.
    Stopped by signalling its own process group (never ``ray stop``, which matches processes by name)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    dashboard = free_port()
    ray = Path(sys.executable).parent / "ray"
    argv = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
            "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 1024 * 1024),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
            "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
            "--temp-dir", temp, "--disable-usage-stats"]
    env = {"PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    proc = spawn("ray-head", argv, env=env, log_dir=logs_dir)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_http(proc, address + "/api/version", timeout_s=240)
        yield address
    finally:
        proc.stop(timeout_s=5)  # ray start --block takes ~30 s to wind down on SIGTERM; its group is killed
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def start_trainer(private_redis: Proc, small_retriever: Proc, ray_head: str, logs_dir: Path,
                  tmp_path: Path) -> Iterator[Callable[[], tuple[Proc, TrainerClient]]]:
    procs: list[Proc] = []

    def start() -> tuple[Proc, TrainerClient]:
        env = {"TRAINER_API_KEY": KEY, "TRAINER_REDIS_URL": private_redis.url, "TRAINER_OUTPUT_DIR": str(tmp_path),
               "TRAINER_RETRIEVER_URL": small_retriever.url, "TRAINER_TORCH_THREADS": "1",
               "TRAINER_RAY_ADDRESS": ray_head, "TRAINER_RAY_PYTHON": sys.executable, "TRAINER_RAY_POLL_S": "0.5",
               "TRAINER_RAY_WAIT_SERVICES_S": "900", "TRAINER_TRACKING": "none",
               "TRAINER_ALLOWED_URLS": json.dumps([DOWN])}  # a job may name it: the trainer is told of it
        proc = start_service("trainer", env, log_dir=logs_dir)
        procs.append(proc)
        return proc, TrainerClient(proc.url, KEY, timeout_s=30)

    yield start
    for proc in procs:
        proc.stop()


def ray_status(address: str, sid: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(sid))


def wait_until(client: TrainerClient, job: str, ok: Callable[[JobStatus], bool], timeout_s: float, what: str,
               trainer: Proc) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    status = client.job(job)
    while time.monotonic() < deadline:
        status = client.job(job)
        if ok(status):
            return status
        assert trainer.alive(), trainer.log_tail()
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {status.model_dump_json()[:3000]}\n{trainer.log_tail()}")


def test_a_verl_job_is_prepared_and_validated_on_the_ray_cluster(
        start_trainer: Callable[[], tuple[Proc, TrainerClient]], ray_head: str) -> None:
    trainer, client = start_trainer()
    job = client.submit("rl", {"engine": "verl", "model": "smollm2", "prepare_only": True,
                               "verl": {"recipe": "search_r1", "train_batch_size": 8}})
    status = client.wait(job, timeout_s=900)
    assert status.state == "succeeded", (status.error, status.cluster)
    assert status.cluster is not None and status.cluster.status == "SUCCEEDED"
    assert status.cluster.submission_id == f"searchlab-{job}" and status.cluster.address == ray_head
    assert ray_status(ray_head, status.cluster.submission_id) == "SUCCEEDED"  # Ray's own view
    tail = "\n".join(status.cluster.log_tail)
    assert "retriever at" in tail and "answers" in tail  # the entrypoint waited for the service ...
    assert "stage qa:" in tail and "config valid in verl's tree" in tail  # ... and validated the run there
    result = json.loads(client.artifact(job, "result.json"))
    assert result["launched"] is True and result["cluster"]["ray_status"] == "SUCCEEDED"
    seen = list(client.events(job))  # the job has ended: the stream ends too
    ray_lines = "\n".join(e["message"] for e in seen if e["type"] == "log" and e.get("source") == "ray")
    assert "config valid in verl's tree" in ray_lines
    assert [e["state"] for e in seen if e["type"] == "state"] == ["queued", "running", "succeeded"]


def test_cancel_stops_the_ray_job_and_a_restarted_trainer_reattaches_to_it(
        start_trainer: Callable[[], tuple[Proc, TrainerClient]], ray_head: str) -> None:
    trainer, client = start_trainer()
    down = DOWN  # nothing listens there: the Ray job waits for it
    job = client.submit("rl", {"engine": "verl", "model": "smollm2", "prepare_only": True,
                               "verl": {"recipe": "search_r1", "train_batch_size": 8, "retriever_url": down}})
    status = wait_until(client, job, lambda s: s.cluster is not None and s.cluster.status == "RUNNING"
                        and any("waiting for retriever" in line for line in s.cluster.log_tail), 600,
                        "the Ray job to wait for its retriever", trainer)
    assert status.cluster is not None
    sid = status.cluster.submission_id

    trainer.stop()  # SIGTERM: a graceful shutdown leaves the run going on the cluster
    assert ray_status(ray_head, sid) == "RUNNING"
    trainer, client = start_trainer()
    status = wait_until(client, job, lambda s: any("re-attached" in e.get("message", "")
                                                   for e in events_now(client, job)), 120,
                        "the new trainer to re-attach", trainer)
    assert status.state == "running" and status.cluster is not None and status.cluster.status == "RUNNING"

    client.cancel(job)
    status = client.wait(job, timeout_s=300)
    assert status.state == "cancelled", status.error
    assert status.cluster is not None and status.cluster.status == "STOPPED"
    assert ray_status(ray_head, sid) == "STOPPED"


def events_now(client: TrainerClient, job: str) -> list[dict[str, Any]]:
    """The events so far of a job still running (the stream would follow it: read with a short timeout)."""
    import httpx

    out: list[dict[str, Any]] = []
    try:
        with httpx.stream("GET", f"{client.base_url}/jobs/{job}/events", headers=client.headers,
                          timeout=httpx.Timeout(5.0, read=2.0)) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    out.append(json.loads(line[5:]))
    except httpx.ReadTimeout:
        pass
    return out
