"""Which key goes to which service (shared.keys), as the settings, the local cluster's state file and the
notebook SDK read it: a service's own key, else the one default; secrets never in a repr or a dump."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared import local_cluster
from shared.client import Cluster
from shared.keys import SERVICES, ClientKeyEnv, ServiceKeys, key_env
from shared.local_cluster import ClusterState

KEYS = {"retriever": "key-r", "judge": "key-j", "simulator": "key-s", "trainer": "key-t"}


def test_a_service_gets_its_own_key_else_the_default_else_none() -> None:
    keys = ServiceKeys.coerce({"retriever": "own", "default": "all"})
    assert keys.of("retriever") == "own" and keys.of("judge") == "all" and keys.fallback() == "all"
    assert ServiceKeys.coerce({"judge": "j"}).of("trainer") is None
    assert ServiceKeys(retriever=SecretStr(""), default=SecretStr("all")).of("retriever") == "all"  # empty: none
    assert ServiceKeys.coerce(None).reveal() == {}
    assert ServiceKeys.coerce("one").reveal() == dict.fromkeys(SERVICES, "one")


def test_generated_keys_are_one_per_service_and_independent() -> None:
    first, second = ServiceKeys.generate().reveal(), ServiceKeys.generate().reveal()
    assert set(first) == set(SERVICES) and len(set(first.values()) | set(second.values())) == 8
    assert all(len(k) >= 32 for k in first.values())


def test_an_unknown_service_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown services \\['retreiver'\\].*valid: retriever"):
        ServiceKeys.coerce({"retreiver": "k"})


def test_keys_stay_out_of_reprs_and_dumps() -> None:
    keys = ServiceKeys.coerce({**KEYS, "default": "key-d"})
    state = ClusterState(run_dir="/x", api_keys=KEYS)
    shown = repr(keys) + str(keys) + json.dumps(keys.model_dump(mode="json")) + repr(state)
    assert not [k for k in [*KEYS.values(), "key-d"] if k in shown]


def test_over_takes_these_keys_first_then_the_others() -> None:
    env = ServiceKeys.coerce({"judge": "env-j", "default": "env-all"})
    state = ServiceKeys.coerce(KEYS)
    assert env.over(state).reveal() == dict.fromkeys(SERVICES, "env-all") | {"judge": "env-j"}
    assert ServiceKeys.coerce({"judge": "env-j"}).over(state).reveal() == KEYS | {"judge": "env-j"}


def test_the_environment_form_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ServiceKeys.coerce({"retriever": "r", "judge": "j", "default": "d"})
    env = key_env(keys)
    assert env == {"SEARCHLAB_RETRIEVER_API_KEY": "r", "SEARCHLAB_JUDGE_API_KEY": "j", "SEARCHLAB_API_KEY": "d"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert ClientKeyEnv().keys().reveal() == keys.reveal()


def test_the_state_file_holds_a_key_per_service_for_its_owner_only(tmp_path: Path) -> None:
    path = local_cluster.save_state(ClusterState(run_dir=str(tmp_path), api_keys=KEYS), tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state = local_cluster.load_state(tmp_path)
    assert state is not None and state.keys().reveal() == KEYS
    assert state.env()["SEARCHLAB_JUDGE_API_KEY"] == "key-j" and "SEARCHLAB_API_KEY" not in state.env()


def test_a_state_file_from_before_per_service_keys_still_loads(tmp_path: Path) -> None:
    (tmp_path / local_cluster.STATE_FILE).write_text(json.dumps({"run_dir": str(tmp_path), "api_key": "old-one"}))
    state = local_cluster.load_state(tmp_path)
    assert state is not None and state.api_keys == dict.fromkeys(SERVICES, "old-one")


def bearer(client: object) -> str:
    return getattr(client, "headers", {}).get("Authorization", "")


def test_the_sdk_gives_each_client_its_own_services_key() -> None:
    urls = {name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(SERVICES)}
    per_service = Cluster(urls, api_key=KEYS)
    for name in SERVICES:
        assert bearer(getattr(per_service, name)) == f"Bearer {KEYS[name]}"
    one = Cluster(urls, api_key="shared-key")  # one key for all, as before
    assert {bearer(getattr(one, name)) for name in SERVICES} == {"Bearer shared-key"}
    assert {bearer(getattr(Cluster(urls), name)) for name in SERVICES} == {""}
    with pytest.raises(ValueError, match="unknown services"):
        Cluster(urls, api_key={"trainr": "k"})


def test_cluster_local_reads_each_key_from_the_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(SERVICES)}
    local_cluster.save_state(ClusterState(run_dir=str(tmp_path), urls={**urls, "redis": "redis://x"}, api_keys=KEYS),
                             tmp_path)
    monkeypatch.setenv("SEARCHLAB_CLUSTER_RUN_DIR", str(tmp_path))
    for name in ["SEARCHLAB_API_KEY", *(f"SEARCHLAB_{s.upper()}_{what}" for s in SERVICES for what in ("URL", "API_KEY"))]:
        monkeypatch.delenv(name, raising=False)
    c = Cluster.local()
    assert c.base_urls == urls
    assert {name: bearer(getattr(c, name)) for name in SERVICES} == {n: f"Bearer {k}" for n, k in KEYS.items()}
    monkeypatch.setenv("SEARCHLAB_JUDGE_API_KEY", "from-env")  # the environment overrides the file
    assert bearer(Cluster.local().judge) == "Bearer from-env" and bearer(Cluster.local().retriever) == "Bearer key-r"
