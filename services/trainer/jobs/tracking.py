"""Experiment tracking like verl's ``trainer.logger``: a job's step metrics in TensorBoard, W&B, MLflow.

    TRAINER_TRACKING=tensorboard            (default) event files in <job dir>/tensorboard/
    TRAINER_TRACKING=tensorboard,wandb      and a W&B run in <job dir>/wandb/ (offline mode unless
                                            WANDB_API_KEY or WANDB_MODE say otherwise; `wandb sync` later)
    TRAINER_TRACKING=tensorboard,mlflow     and an MLflow run (mlflow must be installed: it is not a
                                            dependency); <job dir>/mlflow.db unless MLFLOW_TRACKING_URI is set
    TRAINER_TRACKING=none                   nothing but metrics.jsonl

``searchlab tensorboard`` opens the jobs folder, so every job (and a verl run of the project, which
writes to its job folder's ``tensorboard/`` too) shows side by side.

Names: :func:`tracked_name` is the one mapping from our metric names to verl's where verl logs the
same quantity (``reward_mean`` -> ``critic/score/mean``, ``pg_loss`` -> ``actor/pg_loss``, SFT ``loss``
-> ``train/loss``, ...); ours without a verl counterpart go under ``searchlab/``. Only the trackers
use these names: the job record, its SSE events and ``metrics.jsonl`` keep ours.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

# our RL metric (learn/rl.py) -> verl's name for the same quantity (verl/trainer/ppo/metric_utils.py,
# verl/workers/actor/dp_actor.py, ray_trainer's timing_s/*)
RL_NAMES: dict[str, str] = {
    "reward_mean": "critic/score/mean",  # the reward function's score (+ DAPO overlong, as verl's DAPO manager)
    "response_length_mean": "response_length/mean",  # tokens of the response (policy + observations)
    "pg_loss": "actor/pg_loss",
    "kl": "actor/kl_loss",  # KL to the reference policy as a loss term (use_kl_loss)
    "ppo_kl": "actor/ppo_kl",  # KL between the sampling and the updated policy
    "entropy": "actor/entropy",
    "clipfrac": "actor/pg_clipfrac",
    "clipfrac_lower": "actor/pg_clipfrac_lower",
    "grad_norm": "actor/grad_norm",
    "rollout_s": "timing_s/gen",
    "update_s": "timing_s/update_actor",
}
# our supervised metrics (learn/policy.py train_supervised) -> verl's SFT trainer
SFT_NAMES: dict[str, str] = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm"}
NAMES_BY_KIND: dict[str, dict[str, str]] = {"rl": RL_NAMES, "sft": SFT_NAMES, "simulator_sft": SFT_NAMES}
OURS = "searchlab"  # the section of metrics verl has no name for


def tracked_name(kind: str, name: str) -> str:
    """The name a tracker logs our metric ``name`` of a ``kind`` job under (verl's where it exists)."""
    return NAMES_BY_KIND.get(kind, {}).get(name) or f"{OURS}/{name}"


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardBackend:
    """Event files in ``<job dir>/tensorboard/`` (torch's SummaryWriter, as verl's tensorboard logger)."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a live job's curves show in TensorBoard while it runs

    def close(self) -> None:
        self.writer.close()


class WandbBackend:
    """A W&B run per job in ``<job dir>/wandb/``; offline unless ``WANDB_MODE`` or an API key say online."""

    def __init__(self, job_dir: Path, job_id: str, kind: str, config: dict[str, Any]):
        import wandb

        mode: Any = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "searchlab"), name=job_id, id=job_id,
                              group=kind, job_type=kind, dir=str(job_dir), config=config, mode=mode,
                              reinit="create_new")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowBackend:
    """An MLflow run per job (experiment ``searchlab``) through an explicit client (jobs run in threads)."""

    def __init__(self, job_dir: Path, job_id: str, kind: str, config: dict[str, Any]):
        from mlflow.tracking import MlflowClient

        # mlflow 3 refuses a bare ./mlruns file store; a SQLite file in the job folder is its local default
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(job_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "searchlab")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=job_id, tags={"kind": kind}).info.run_id
        for key, value in _flatten(config).items():
            self.client.log_param(self.run_id, key, value)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


# --------------------------------------------------------------------------- the tracker


class Tracker:
    """One job's trackers; opened on the first :meth:`log` (a job that never reports writes nothing)."""

    def __init__(self, backends: Iterable[str], job_dir: Path, job_id: str, kind: str,
                 config: dict[str, Any] | None = None):
        self.names = tuple(backends)
        self.job_dir = job_dir
        self.job_id = job_id
        self.kind = kind
        self.config = config or {}
        self._open: list[Backend] | None = None

    def _backends(self) -> list[Backend]:
        if self._open is None:
            self._open = []
            for name in self.names:
                try:
                    self._open.append(self._make(name))
                except Exception as exc:  # noqa: BLE001 - a tracker that cannot start must not fail the job
                    log.warning("job %s: %s tracking off: %s: %s", self.job_id, name, type(exc).__name__, exc)
        return self._open

    def _make(self, name: str) -> Backend:
        if name == "tensorboard":
            return TensorBoardBackend(self.job_dir / "tensorboard")
        if name == "wandb":
            return WandbBackend(self.job_dir, self.job_id, self.kind, self.config)
        return MlflowBackend(self.job_dir, self.job_id, self.kind, self.config)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Our metrics of one step, under the trackers' names (:func:`tracked_name`)."""
        if not self.names or not metrics:
            return
        named = {tracked_name(self.kind, k): float(v) for k, v in metrics.items()}
        for backend in self._backends():
            backend.log(named, step)

    def close(self) -> None:
        for backend in self._open or []:
            try:
                backend.close()
            except Exception as exc:  # noqa: BLE001 - closing one tracker must not keep the others open
                log.warning("job %s: closing %s failed: %s", self.job_id, type(backend).__name__, exc)
        self._open = []
