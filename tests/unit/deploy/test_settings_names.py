"""Every setting the deployments pass is one a service really reads, with a value it accepts.

pydantic-settings ignores unknown variables (extra="ignore"), so a misspelt name in an env file
or a Secret would silently do nothing; these tests resolve each name against the settings
classes, then build each class from the cpu and the gpu environment.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import REPO, read_env_file
from pydantic import BaseModel

SETTINGS = {
    "RETRIEVER": "services.retriever.config:RetrieverSettings",
    "JUDGE": "services.judge.config:JudgeSettings",
    "SIMULATOR": "services.simulator.config:SimulatorSettings",
    "TRAINER": "services.trainer.config:TrainerSettings",
    "WORKER": "services.trainer.rollout.settings:WorkerSettings",
}
# read by libraries (SGLang 0.5.6: srt/layers/sampler.py reads the last one) and by the redis pod (its
# requirepass, redis-cli's password), not by a searchlab service
LIBRARY_VARS = {"HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "SGLANG_RETURN_ORIGINAL_LOGPROB",
                "REDIS_PASSWORD", "REDISCLI_AUTH"}
BASE_ENV = REPO / "k8s" / "base" / "searchlab.env"
LLM_ENV = {overlay: REPO / "k8s" / "overlays" / overlay / "llm.env" for overlay in ("cpu", "gpu")}


def settings_class(prefix: str) -> type[BaseModel]:
    module, name = SETTINGS[prefix].split(":")
    cls: type[BaseModel] = getattr(importlib.import_module(module), name)
    return cls


def resolve(key: str) -> str | None:
    """None if ``key`` names a real setting, else why not."""
    if key in LIBRARY_VARS:
        return None
    if key.startswith("SEARCHLAB_"):
        sources = " ".join(p.read_text() for p in [*REPO.glob("shared/*.py"), *REPO.glob("services/**/*.py")])
        return None if key in sources else f"{key} is read nowhere in shared/ or services/"
    prefix, _, rest = key.partition("_")
    if prefix not in SETTINGS:
        return f"{key}: no service has the prefix {prefix}_"
    model: Any = settings_class(prefix)
    for part in rest.lower().split("__"):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return f"{key}: {model.__name__} has no field '{part}'"
        model = fields[part].annotation
    return None


def deployment_keys() -> set[str]:
    keys = set(read_env_file(BASE_ENV))
    for path in LLM_ENV.values():
        keys |= set(read_env_file(path))
    keys |= set(read_env_file(REPO / "k8s" / "base" / "secrets.env.example"))
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        keys |= set(service.get("environment") or {})
    return keys


@pytest.mark.parametrize("key", sorted(deployment_keys()))
def test_setting_name_is_read_by_a_service(key: str) -> None:
    problem = resolve(key)
    assert problem is None, problem


def test_a_misspelt_setting_is_caught() -> None:
    assert resolve("WORKER_PORT") is not None  # workers serve no HTTP
    assert resolve("JUDGE_LLM__BACKEN") is not None
    assert resolve("RETRIEVER_INDEX_DIR") is None


@pytest.mark.parametrize("overlay", sorted(LLM_ENV))
def test_services_accept_the_deployed_values(overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {**read_env_file(BASE_ENV), **read_env_file(LLM_ENV[overlay]),
           **read_env_file(REPO / "k8s" / "base" / "secrets.env.example")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SEARCHLAB_CACHE_DIR", str(tmp_path))  # /cache does not exist here
    for prefix in SETTINGS:
        settings: Any = settings_class(prefix)()
        if prefix != "WORKER":
            assert settings.host == "0.0.0.0" and settings.port == int(env[f"{prefix}_PORT"])
            assert settings.api_key is not None, f"{prefix} would run without auth"
        if prefix in ("JUDGE", "SIMULATOR", "WORKER"):
            assert settings.llm.backend == env[f"{prefix}_LLM__BACKEND"]
