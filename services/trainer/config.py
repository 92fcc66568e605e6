"""Settings of the trainer service (env prefix ``TRAINER_``).

    TRAINER_API_KEY=...                      required: the job endpoints need a bearer token
    TRAINER_SERVICE_API_KEY=...              the token the jobs send to the retriever, judge, simulator ...
    TRAINER_RETRIEVER_API_KEY / TRAINER_JUDGE_API_KEY / TRAINER_SIMULATOR_API_KEY   ... but these, per service
    TRAINER_REDIS_URL=redis://127.0.0.1:6379/0   (falls back to SEARCHLAB_REDIS_URL)
    TRAINER_RETRIEVER_URL / TRAINER_JUDGE_URL / TRAINER_SIMULATOR_URL   services the jobs use
    TRAINER_LLM_URL / TRAINER_LLM_API_KEY     the OpenAI-compatible LLM of the coldstart agents (and its key)
    TRAINER_OUTPUT_DIR=<cache>/jobs          one folder per job: checkpoints, logs, plots, reports
    TRAINER_MAX_RUNNING=1                    jobs run at once (CPU-bound: one is right on 2 cores)
    TRAINER_TRACKING=tensorboard             step metrics also to: tensorboard,wandb,mlflow (any of them) | none
    TRAINER_RAY_ADDRESS=http://ray-head:8265 the Ray Jobs API: rl jobs on the verl engine are launched there
    TRAINER_READ_ROOTS='["/data/qa"]'       more folders job configs may read (JSON list; see confinement())
    TRAINER_WRITE_ROOTS='["/data/out"]'     more folders job configs may write
    TRAINER_ALLOWED_URLS='["http://..."]'   more service URLs job configs may name
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings, cache_dir, data_dir, user_data_dir
from shared.confine import Confinement
from shared.keys import ServiceKeys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TRACKING_BACKENDS = ("tensorboard", "wandb", "mlflow")  # services/trainer/jobs/tracking.py


def parse_tracking(value: str) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ("tensorboard", "wandb"); ``"none"`` or ``""`` -> (); unknown names raise."""
    out: list[str] = []
    for raw in value.split(","):
        name = raw.strip().lower()
        if not name or name == "none":
            continue
        if name not in TRACKING_BACKENDS:
            raise ValueError(f"unknown tracking backend '{name}'; valid: {', '.join(TRACKING_BACKENDS)}, none")
        if importlib.util.find_spec(name) is None:
            raise ValueError(f"tracking backend '{name}' needs the {name} package (pip install {name})")
        if name not in out:
            out.append(name)
    return tuple(out)


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", env_nested_delimiter="__")

    port: int = 8004
    api_key: SecretStr | None = None  # required at start-up (create_app(require_auth=True))
    service_api_key: SecretStr | None = None  # bearer token the jobs send to each service without its own below
    retriever_api_key: SecretStr | None = None  # the retriever's key for the jobs (its RETRIEVER_API_KEY)
    judge_api_key: SecretStr | None = None  # the judge's key for the jobs (its JUDGE_API_KEY)
    simulator_api_key: SecretStr | None = None  # the simulator's key for the jobs (its SIMULATOR_API_KEY)
    redis_url: str = ""  # empty -> SEARCHLAB_REDIS_URL -> redis://127.0.0.1:6379/0
    retriever_url: str | None = None  # search backend "retriever" and RAG baselines
    judge_url: str | None = None  # LLM answer reward / judge-scored eval
    simulator_url: str | None = None  # search backend "simulator"
    llm_url: str | None = None  # OpenAI-compatible server of the coldstart agents (method "agents"), e.g. SGLang
    llm_api_key: SecretStr | None = None  # its bearer token
    output_dir: Path | None = None  # None -> <cache>/jobs
    max_running: int = Field(default=1, ge=1)  # jobs executed at once (threads of this process)
    key_prefix: str = "searchlab:trainer"  # Redis keys of job records and event streams
    events_maxlen: int = Field(default=10_000, ge=100)  # events kept per job (approximate trim)
    resume_queued: bool = True  # on start-up, re-run jobs that were queued but never started
    resume_running: bool = True  # on start-up, resume jobs that were running (kinds that can: local RL)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)  # how long a POST /jobs Idempotency-Key is remembered
    torch_threads: int | None = Field(default=None, ge=1)  # intra-op threads of training (None: torch default)
    tracking: str = "tensorboard"  # where step metrics also go, comma-separated: tensorboard, wandb, mlflow | none
    # verl runs on a Ray cluster (services/trainer/jobs/cluster.py). The job folder must be on storage the
    # cluster shares (the cache volume): the Ray job reads and writes the run directory there.
    ray_address: str | None = None  # the head's Jobs API, e.g. http://ray-head:8265 (None: verl runs are not launched)
    ray_python: str = "python"  # the interpreter on the cluster that has searchlab and the gpu extras
    ray_poll_s: float = Field(default=2.0, gt=0)  # how often a running Ray job's status is read
    ray_wait_services_s: float = Field(default=600.0, ge=0)  # the Ray job waits this long for its services
    ray_entrypoint_cpus: float = Field(default=1.0, ge=0)  # CPUs Ray reserves for the entrypoint (the driver)
    read_roots: list[Path] = Field(default_factory=list, max_length=64)  # beyond the data, models and outputs
    write_roots: list[Path] = Field(default_factory=list, max_length=64)  # beyond the job, ramp, coldstart folders
    allowed_urls: list[str] = Field(default_factory=list, max_length=64)  # beyond the configured services

    @model_validator(mode="after")
    def _fallbacks(self) -> TrainerSettings:
        if not self.redis_url:
            self.redis_url = os.environ.get("SEARCHLAB_REDIS_URL", DEFAULT_REDIS_URL)
        if self.api_key is not None and not self.api_key.get_secret_value():
            self.api_key = None  # an empty key is no key: the trainer then refuses to start
        parse_tracking(self.tracking)  # an unknown or missing tracker fails at start-up
        return self

    def tracking_backends(self) -> tuple[str, ...]:
        return parse_tracking(self.tracking)

    def jobs_dir(self) -> Path:
        path = self.output_dir or cache_dir() / "jobs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def service_keys(self) -> ServiceKeys:
        """What the jobs send to each service, read when a job runs (never part of a job's config): the
        service's own key, else ``service_api_key``."""
        return ServiceKeys(default=self.service_api_key, retriever=self.retriever_api_key, judge=self.judge_api_key,
                           simulator=self.simulator_api_key)

    def confinement(self) -> Confinement:
        """Where a job submitted over HTTP may read (the shipped and imported data, the embedded models, every
        job's and data job's outputs, ``read_roots``) and write (the job folders, ``<cache>/ramp``,
        ``<cache>/coldstart``, ``write_roots``), and which URLs it may name (this trainer's services,
        ``allowed_urls``). Nothing else: not the indexes, not the cluster's keys, not the rest of the disk."""
        cache = cache_dir()
        write = [self.jobs_dir(), cache / "ramp", cache / "coldstart", *self.write_roots]
        read = [data_dir(), user_data_dir(), cache / "models", *write, *self.read_roots]
        llm = [self.llm_url] if self.llm_url else []
        return Confinement.of(read, write, [*self.service_urls().values(), *llm, *self.allowed_urls])

    def service_urls(self) -> dict[str, str]:
        urls = {"retriever": self.retriever_url, "judge": self.judge_url, "simulator": self.simulator_url}
        return {k: v for k, v in urls.items() if v}
