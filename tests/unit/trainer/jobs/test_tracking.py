"""Tracking like verl's (services/trainer/jobs/tracking.py): a job's step metrics land in TensorBoard event
files under verl's names, read back by TensorBoard's own reader; W&B writes an offline run in the job
folder; the JSON metrics keep our names; a bad TRAINER_TRACKING fails at start-up."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.trainer.config import TrainerSettings, parse_tracking
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.tracking import Tracker, tracked_name


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_our_names_map_to_verls_where_verl_logs_the_same_quantity() -> None:
    assert tracked_name("rl", "reward_mean") == "critic/score/mean"
    assert tracked_name("rl", "response_length_mean") == "response_length/mean"
    assert tracked_name("rl", "pg_loss") == "actor/pg_loss"
    assert tracked_name("rl", "entropy") == "actor/entropy"
    assert tracked_name("rl", "ppo_kl") == "actor/ppo_kl"
    assert tracked_name("sft", "loss") == "train/loss"
    # ours without a verl counterpart keep their name, in one section
    assert tracked_name("rl", "accuracy") == "searchlab/accuracy"
    assert tracked_name("rl", "searches_mean") == "searchlab/searches_mean"
    assert tracked_name("eval", "loss") == "searchlab/loss"


def test_tracking_setting_is_checked_at_start_up() -> None:
    assert parse_tracking("tensorboard, wandb") == ("tensorboard", "wandb")
    assert parse_tracking("none") == () and parse_tracking("") == ()
    with pytest.raises(ValueError, match="valid: tensorboard, wandb, mlflow"):
        parse_tracking("tensorbored")
    with pytest.raises(ValidationError, match="unknown tracking backend"):
        TrainerSettings(tracking="comet")
    assert TrainerSettings().tracking_backends() == ("tensorboard",)


def test_tensorboard_reader_finds_every_step_under_verls_names(tmp_path: Path) -> None:
    tracker = Tracker(["tensorboard"], tmp_path, "rl-1", "rl")
    for step in (1, 2, 3):
        tracker.log({"reward_mean": 0.1 * step, "pg_loss": -step, "turns_mean": 1.0}, step)
    tracker.close()
    found = scalars(tmp_path / "tensorboard")
    assert [s for s, _ in found["critic/score/mean"]] == [1, 2, 3]
    assert found["critic/score/mean"][2][1] == pytest.approx(0.3)
    assert found["actor/pg_loss"][0] == (1, -1.0)
    assert "searchlab/turns_mean" in found


def test_a_job_that_never_reports_writes_no_event_file(tmp_path: Path) -> None:
    tracker = Tracker(["tensorboard"], tmp_path, "eval-1", "eval")
    tracker.close()
    assert not (tmp_path / "tensorboard").exists()


class MemoryStore:
    """A JobStore in memory (the manager's is Redis): what the context wrote."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.artifacts: list[str] = []

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self.fields.update(fields)

    def event(self, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        self.events.append((kind, payload))

    def add_artifact(self, job_id: str, name: str) -> None:
        self.artifacts.append(name)


class Config(BaseModel):
    steps: int = 2


def test_job_report_keeps_our_names_in_json_and_verls_in_tensorboard(tmp_path: Path) -> None:
    store = MemoryStore()
    ctx = JobContext(store, "sft-1", "sft", Config(), TrainerSettings(), tmp_path, threading.Event())
    ctx.report(1, {"loss": 2.5, "lr": 1e-4, "stage": "train"}, progress=0.5)
    ctx.close()
    assert json.loads(store.fields["metrics"]) == {"loss": 2.5, "lr": 1e-4}
    assert store.events[0][1]["metrics"] == {"loss": 2.5, "lr": 1e-4}
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["loss"] == 2.5 and row["stage"] == "train"
    found = scalars(tmp_path / "tensorboard")
    assert found["train/loss"] == [(1, 2.5)]


def test_tracking_none_writes_only_metrics_jsonl(tmp_path: Path) -> None:
    ctx = JobContext(MemoryStore(), "sft-2", "sft", Config(), TrainerSettings(tracking="none"), tmp_path,
                     threading.Event())
    ctx.report(1, {"loss": 1.0})
    ctx.close()
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tensorboard").exists()


@pytest.mark.slow
def test_wandb_writes_an_offline_run_in_the_job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(["wandb"], tmp_path, "rl-w", "rl", {"steps": 2})
    tracker.log({"reward_mean": 0.5}, 1)
    tracker.log({"reward_mean": 0.7}, 2)
    tracker.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


@pytest.mark.slow
def test_mlflow_run_in_the_job_folder_when_mlflow_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow", reason="mlflow is optional (not a dependency): pip install mlflow to run this")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(["mlflow"], tmp_path, "rl-m", "rl", {"steps": 2, "algo": {"name": "grpo"}})
    tracker.log({"reward_mean": 0.5}, 1)
    tracker.log({"reward_mean": 0.7}, 2)
    tracker.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("searchlab")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "rl-m" and run.info.status == "FINISHED"
    assert run.data.params["algo.name"] == "grpo"
    history = client.get_metric_history(run.info.run_id, "critic/score/mean")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.7)]
