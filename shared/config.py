"""Settings shared by every service.

Each service subclasses :class:`ServiceSettings` with its own env prefix (``RETRIEVER_``,
``JUDGE_``, ``SIMULATOR_``, ``TRAINER_``) so one environment (or one ``.env`` file) can
configure the whole cluster. No host, port, path or model name is written into code.

Project-wide locations:

- ``SEARCHLAB_CACHE_DIR``: converted models, indexes, checkpoints, reports (git-ignored).
  Default: ``<repo>/.cache/searchlab`` for a source checkout, else ``~/.cache/searchlab``.
- ``SEARCHLAB_DATA_DIR``: the evaluation data and corpus shipped with the project. Default:
  ``<repo>/data`` (gzip-compressed JSONL; see ``data/SOURCES.md``).
- ``<cache>/data``: datasets and corpora imported by ``searchlab data import``; the loaders look
  here after the shipped data (``shared/data.py``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


def _is_source_checkout() -> bool:
    return (REPO_ROOT / "pyproject.toml").is_file() and os.access(REPO_ROOT, os.W_OK)


def cache_dir() -> Path:
    """Where large artifacts go (models, indexes, checkpoints, reports); created on demand."""
    env = os.environ.get("SEARCHLAB_CACHE_DIR")
    if env:
        path = Path(env)
    elif _is_source_checkout():
        path = REPO_ROOT / ".cache" / "searchlab"
    else:
        path = Path.home() / ".cache" / "searchlab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The read-only evaluation data and corpus shipped in the repo (``<repo>/data``)."""
    env = os.environ.get("SEARCHLAB_DATA_DIR")
    return Path(env) if env else REPO_ROOT / "data"


def user_data_dir() -> Path:
    """Where ``searchlab data import`` writes datasets and corpora: ``<cache>/data`` (not created here)."""
    return cache_dir() / "data"


def jsonl_file(path: Path) -> Path:
    """``path`` (a ``.jsonl``) if it exists, else its compressed twin ``<path>.gz`` if that exists,
    else ``path`` unchanged (so a missing file is reported under the name asked for)."""
    if path.exists() or path.suffix == ".gz":
        return path
    packed = path.with_name(path.name + ".gz")
    return packed if packed.exists() else path


def corpus_path() -> Path:
    """The default passage corpus: 17,600 Wikipedia passages (``corpus/wiki_passages.jsonl[.gz]``)."""
    return jsonl_file(data_dir() / "corpus" / "wiki_passages.jsonl")


Dtype = Literal["auto", "float32", "bfloat16"]
Device = Literal["auto", "cpu", "cuda"]


def resolve_device(device: Device) -> Literal["cpu", "cuda"]:
    """``auto``: CUDA when a GPU is visible, else the CPU; ``cuda`` without one is a ``ValueError``."""
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ValueError("device 'cuda': no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                         "use device 'auto' or 'cpu'")
    return "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): autocast is then a win."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def resolve_dtype(dtype: Dtype, device_type: str = "cpu") -> Literal["float32", "bfloat16"]:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16()) else "float32"


class LLMSettings(BaseModel):
    """Which LLM a component talks to. The same shape for judge, simulator, data and workers."""

    backend: Literal["local", "openai"] = "local"  # in-process transformers | OpenAI-compatible HTTP
    model: str = "smollm2"  # "smollm2" (embedded), a model folder, or the served model's name
    base_url: str | None = None  # OpenAI-compatible server root, e.g. http://127.0.0.1:30000
    api_key: SecretStr | None = None  # bearer token for the server, if it wants one
    timeout_s: float = 120.0  # per HTTP request
    max_retries: int = 3  # capped retries on connection errors / 5xx / 429
    max_batch_size: int = 16  # local backend: prompts per forward pass
    min_shared_prefix: int = 16  # local backend: a head this long shared by a batch's prompts is prefilled once
    # local backend decode loop: "continuous" (shared.engine: a KV row per prompt, finished rows leave the batch
    # and waiting prompts join) or "batch" (the earlier loop: one left-padded batch decoded to its longest row)
    engine: Literal["continuous", "batch"] = "continuous"
    max_concurrency: int = 16  # openai backend: requests in flight at once
    # local backend weights: auto = bf16 where the CPU computes it natively (AVX512-BF16/AMX: batched
    # decoding ~2x faster, same greedy answers in our checks), else float32. Exact log-prob checks use float32.
    dtype: Dtype = "auto"
    # local backend: where the model runs. auto = CUDA when a GPU is visible (dtype auto -> bf16 there), else CPU
    device: Device = "auto"

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v


class ServiceSettings(BaseSettings):
    """Base of every service's settings; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    host: str = "127.0.0.1"  # bind address
    port: int = 8000  # bind port
    api_key: SecretStr | None = None  # optional bearer token required on every route but /health
    max_body_bytes: int = Field(default=1 << 20, gt=0)  # larger request bodies get 413
    log_level: str = "info"


@lru_cache(maxsize=1)
def hf_offline() -> None:
    """Never reach a model hub: everything is embedded or on local disk. Off a terminal, the hub
    libraries' own progress bars (transformers' "Loading weights", datasets') stay quiet too."""
    from shared.progress import interactive

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not interactive():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
