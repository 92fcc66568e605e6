"""What a running job sees: its folder, its settings, progress and metrics reporting, cancellation.

Each :meth:`JobContext.report` goes to the job record, its event stream, ``metrics.jsonl`` and the
configured trackers (:mod:`services.trainer.jobs.tracking`: TensorBoard by default, verl's names).

:class:`JobContext` writes through a :class:`JobStore` (the three calls below), which the job manager
implements over Redis; a test or a script can give it any other store. The context imports nothing
from the manager, so a job kind's code depends on this module only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from services.trainer.config import TrainerSettings
from services.trainer.jobs.tracking import Tracker

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job by :meth:`JobContext.check_cancelled` once cancellation was asked."""


class JobDetached(Exception):
    """Raised by a job that runs elsewhere (a Ray cluster) when the trainer shuts down: the run goes on
    there, the job stays ``running``, and the next trainer attaches to it again."""


class JobStore(Protocol):
    """Where a job's record lives (the manager: a Redis hash and an event stream per job)."""

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        """Set fields of the job's record (progress, step, metrics ...)."""
        ...

    def event(self, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        """Append one event (``step``, ``log``) to the job's event stream."""
        ...

    def add_artifact(self, job_id: str, name: str) -> None:
        """Name a file of the job folder as a downloadable artifact (idempotent)."""
        ...


class JobContext:
    """One running job: ``config`` (its validated kind config), ``dir`` (its folder), ``settings``."""

    def __init__(self, store: JobStore, job_id: str, kind: str, config: BaseModel, settings: TrainerSettings,
                 job_dir: Path, cancel: threading.Event, stopping: threading.Event | None = None,
                 cluster: dict[str, Any] | None = None):
        self.store = store
        self._stopping = stopping or threading.Event()  # set when the trainer shuts down (cancel is set too)
        self.cluster = cluster  # the record of the run this job already has on a Ray cluster (re-attach), if any
        self.job_id = job_id
        self.kind = kind
        self.config = config
        self.settings = settings
        self.dir = job_dir
        self._cancel = cancel
        self.tracker = Tracker(settings.tracking_backends(), job_dir, job_id, kind, config.model_dump(mode="json"))

    # -- reporting ---------------------------------------------------------------------
    def report(self, step: int, metrics: dict[str, Any], progress: float | None = None) -> None:
        """One training/eval step: latest metrics on the job, a ``step`` event, a line of
        ``metrics.jsonl`` in the job folder, the numbers to the trackers (``tensorboard/``)."""
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        record = {"step": step, "time": time.time(), **metrics}
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
        fields: dict[str, Any] = {"step": step, "metrics": json.dumps(numeric)}
        if progress is not None:
            fields["progress"] = min(max(progress, 0.0), 1.0)
        self.store.update(self.job_id, fields)
        self.store.event(self.job_id, "step", {"step": step, "progress": fields.get("progress"), "metrics": numeric})
        self.add_artifact("metrics.jsonl")
        self.tracker.log(numeric, step)

    def log(self, message: str, **extra: Any) -> None:
        log.info("job %s: %s", self.job_id, message)
        self.store.event(self.job_id, "log", {"message": message, **extra})

    def set_cluster(self, record: dict[str, Any]) -> None:
        """The job's run on a Ray cluster (``JobStatus.cluster``: address, submission id, status, log tail)."""
        self.cluster = record
        self.store.update(self.job_id, {"cluster": json.dumps(record)})

    # -- files -------------------------------------------------------------------------
    def artifact_path(self, name: str) -> Path:
        path = (self.dir / name).resolve()
        if not path.is_relative_to(self.dir.resolve()):
            raise ValueError(f"artifact name {name!r} leaves the job folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_artifact(self, name: str) -> None:
        self.store.add_artifact(self.job_id, name)

    def add_folder(self, name: str) -> None:
        """Every file of the sub-folder ``name`` (a checkpoint) as an artifact."""
        for file in sorted((self.dir / name).iterdir()):
            if file.is_file():
                self.add_artifact(f"{name}/{file.name}")

    def write_result(self, result: dict[str, Any]) -> None:
        """``result.json``: what the job produced (checkpoint path, files), for the next job to use."""
        self.artifact_path("result.json").write_text(json.dumps(result, indent=2, default=str))
        self.add_artifact("result.json")

    def close(self) -> None:
        """The job ended: flush and close its trackers (the manager calls this once)."""
        self.tracker.close()

    # -- cancellation ------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def stopping(self) -> bool:
        """The trainer is shutting down (a job running elsewhere detaches instead of stopping its run)."""
        return self._stopping.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(self.job_id)


def numeric(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a pipeline's result: what a job reports as its final metrics."""
    return {k: v for k, v in result.items() if isinstance(v, int | float)}
