"""Running jobs on the trainer from a script: what ``searchlab demo`` and ``searchlab experiment`` share.

    with trainer_client() as client:          # SEARCHLAB_TRAINER_URL, else the local cluster (brought up)
        runner = JobRunner(client)
        result = runner.run("rl", "rl", {...})            # submit, follow events into the log, wait
        runner.save_artifact("rl", "metrics.jsonl", out / "rl_metrics.jsonl")

Each stage's job id and wall time are kept (``runner.jobs``, ``runner.timings``) for the report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.client import TrainerClient
from shared.keys import ClientKeyEnv

log = logging.getLogger(__name__)

LOGGED = ("loss", "reward_mean", "accuracy", "turns_mean", "answer_tokens_mean", "progress", "policy_version")


class JobRunner:
    """Runs jobs one at a time and remembers them by stage name."""

    def __init__(self, client: TrainerClient):
        self.client = client
        self.jobs: dict[str, str] = {}  # stage -> job id
        self.timings: dict[str, float] = {}  # stage -> seconds from submission to the end

    def run(self, stage: str, kind: str, config: dict[str, Any], timeout_s: float = 4 * 3600) -> dict[str, Any]:
        """Submit one job, follow its events into the log, return its ``result.json``; a job that does not
        succeed raises ``RuntimeError`` with its error."""
        started = time.monotonic()
        job_id = self.client.submit(kind, config)
        self.jobs[stage] = job_id
        log.info("%s: job %s submitted", stage, job_id)
        for event in self.client.events(job_id):
            if event["type"] == "step" and event.get("metrics"):
                shown = {k: round(v, 4) for k, v in event["metrics"].items() if k in LOGGED}
                log.info("%s step %s %s", stage, event["step"], shown)
        status = self.client.wait(job_id, timeout_s=timeout_s)
        self.timings[stage] = time.monotonic() - started
        if status.state != "succeeded":
            raise RuntimeError(f"{stage} job {job_id} ended {status.state}: {status.error}")
        log.info("%s: done in %.0fs", stage, self.timings[stage])
        return dict(json.loads(self.client.artifact(job_id, "result.json")))

    def save_artifact(self, stage: str, name: str, path: Path) -> Path:
        """Copy artifact ``name`` of ``stage``'s job to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.client.artifact(self.jobs[stage], name))
        return path


@contextmanager
def trainer_client(keep_up: bool = False, timeout_s: float = 60) -> Iterator[TrainerClient]:
    """A client of the trainer at ``SEARCHLAB_TRAINER_URL`` (key from ``SEARCHLAB_TRAINER_API_KEY``/the
    client key env), else of the local cluster, brought up first (``searchlab up``) and, unless it was
    running already or ``keep_up``, taken down afterwards."""
    url = os.environ.get("SEARCHLAB_TRAINER_URL")
    if url:
        yield TrainerClient(url, ClientKeyEnv().keys().of("trainer"), timeout_s=timeout_s)
        return
    from services import cluster

    was_up = bool(cluster.status()["ready"])
    state = cluster.up()
    try:
        if "trainer" not in state.urls:
            raise RuntimeError("the local cluster has no trainer")
        yield TrainerClient(state.urls["trainer"], state.keys().of("trainer"), timeout_s=timeout_s)
    finally:
        if not keep_up and not was_up:
            cluster.down()
