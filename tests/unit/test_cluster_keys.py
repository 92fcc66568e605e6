"""``searchlab up``'s keys (services/cluster.py): one independent key per service, and each process started
with its own key and the keys of the services it calls, under the names its settings read."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from services import cluster
from services.simulator.config import SimulatorSettings
from services.trainer.config import TrainerSettings
from services.trainer.rollout.settings import WorkerSettings
from services.trainer.verl.loop_config import LoopRuntime
from shared.keys import SERVICES, ServiceKeys

KEYS = ServiceKeys.coerce({"retriever": "key-r", "judge": "key-j", "simulator": "key-s", "trainer": "key-t"})


def test_every_up_makes_four_new_independent_keys() -> None:
    first, second = (cluster.cluster_keys(cluster.ClusterSettings()).reveal() for _ in range(2))
    assert set(first) == set(SERVICES) and len({*first.values(), *second.values()}) == 8


def test_one_configured_key_keys_all_four_as_before() -> None:
    settings = cluster.ClusterSettings(api_key=SecretStr("one-for-all"))
    assert cluster.cluster_keys(settings).reveal() == dict.fromkeys(SERVICES, "one-for-all")


def test_each_process_holds_only_its_own_key_and_those_it_sends() -> None:
    held = {kind: {name: value for name, value in cluster.process_keys(kind, KEYS).items()}
            for kind in (*SERVICES, "worker")}
    assert held["retriever"] == {"RETRIEVER_API_KEY": "key-r"}
    assert held["judge"] == {"JUDGE_API_KEY": "key-j"}
    assert held["simulator"] == {"SIMULATOR_API_KEY": "key-s", "SIMULATOR_RETRIEVER_API_KEY": "key-r"}
    assert held["trainer"] == {"TRAINER_API_KEY": "key-t", "TRAINER_RETRIEVER_API_KEY": "key-r",
                               "TRAINER_JUDGE_API_KEY": "key-j", "TRAINER_SIMULATOR_API_KEY": "key-s"}
    assert held["worker"] == {"WORKER_RETRIEVER_API_KEY": "key-r", "WORKER_SIMULATOR_API_KEY": "key-s",
                              "WORKER_JUDGE_API_KEY": "key-j"}


def _with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_what_up_hands_each_process_is_what_its_settings_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names in cluster.PROCESS_KEYS are read by the settings: each client sends each service its key."""
    _with_env(monkeypatch, cluster.process_keys("worker", KEYS))
    assert WorkerSettings().keys().reveal() == {"retriever": "key-r", "judge": "key-j", "simulator": "key-s"}
    _with_env(monkeypatch, cluster.process_keys("trainer", KEYS))
    trainer = TrainerSettings()
    assert trainer.service_keys().reveal() == {"retriever": "key-r", "judge": "key-j", "simulator": "key-s"}
    assert trainer.api_key is not None and trainer.api_key.get_secret_value() == "key-t"
    _with_env(monkeypatch, cluster.process_keys("simulator", KEYS) | {"SIMULATOR_MODE": "corpus",
                                                                      "SIMULATOR_RETRIEVER_URL": "http://r:1"})
    simulator: Any = SimulatorSettings()
    assert simulator.retriever_api_key.get_secret_value() == "key-r"
    assert "key-r" not in repr(simulator) + repr(WorkerSettings()) + repr(trainer)


@pytest.mark.parametrize("prefix,single,build", [
    ("WORKER_", "WORKER_API_KEY", lambda: WorkerSettings().keys()),
    ("TRAINER_", "TRAINER_SERVICE_API_KEY", lambda: TrainerSettings().service_keys()),
    ("SEARCHLAB_", "SEARCHLAB_API_KEY", lambda: LoopRuntime().keys()),
])
def test_one_key_still_goes_to_every_service(prefix: str, single: str, build: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose and k8s set one secret: the single key is the fallback for every target; a per-service
    key, where set, wins for that service only."""
    for service in SERVICES:
        monkeypatch.delenv(f"{prefix}{service.upper()}_API_KEY", raising=False)
    monkeypatch.setenv(single, "one-secret")
    keys: ServiceKeys = build()
    assert {keys.of(s) for s in ("retriever", "judge", "simulator")} == {"one-secret"}
    monkeypatch.setenv(f"{prefix}JUDGE_API_KEY", "judge-own")
    keys = build()
    assert keys.of("judge") == "judge-own" and keys.of("retriever") == keys.of("simulator") == "one-secret"
