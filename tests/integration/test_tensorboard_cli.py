"""``searchlab tensorboard``: one TensorBoard over the jobs folder shows a local-engine job (our Tracker)
and a verl run (verl's own tracking, pointed at its job folder by TENSORBOARD_DIR as services/trainer/verl
/run.py launches it) side by side, each with its step metrics under verl's names."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from services.trainer.jobs.tracking import Tracker
from shared.processes import free_port, spawn

pytestmark = pytest.mark.slow


def test_one_tensorboard_shows_a_local_job_and_a_verl_run(tmp_path: Path, logs_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = tmp_path / "jobs"
    local = Tracker(["tensorboard"], jobs / "rl-local", "rl-local", "rl")
    for step in (1, 2):
        local.log({"reward_mean": 0.2 * step, "pg_loss": 0.1}, step)
    local.close()

    from verl.utils.tracking import Tracking

    monkeypatch.setenv("TENSORBOARD_DIR", str(jobs / "rl-verl" / "tensorboard"))
    verl_run = Tracking(project_name="searchlab", experiment_name="verl-run", default_backend=["tensorboard"])
    for step in (1, 2):
        verl_run.log({"critic/score/mean": 0.3 * step, "actor/pg_loss": 0.05}, step=step)
    del verl_run  # its finish() closes the writer

    port = free_port()
    exe = Path(sys.executable).parent / "searchlab"
    proc = spawn("tensorboard", [str(exe), "tensorboard", "--logdir", str(jobs), "--port", str(port)],
                 log_dir=logs_dir)
    try:
        runs: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(runs) < 2:
            assert proc.alive(), proc.log_tail()
            try:
                runs = httpx.get(f"http://127.0.0.1:{port}/data/runs", timeout=5).json()
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        assert sorted(runs) == ["rl-local/tensorboard", "rl-verl/tensorboard"], proc.log_tail()
        tags = httpx.get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=10).json()
        for run in runs:
            assert {"critic/score/mean", "actor/pg_loss"} <= set(tags[run]), (run, tags[run])
    finally:
        proc.stop()
