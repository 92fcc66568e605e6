"""What a job config submitted over HTTP may touch: the trainer's data, model and output folders, and its
configured services; nothing else. Each case below was accepted (201) before the confinement (issue #18),
and the probes of the file system got answers that told whether a file exists. A real trainer, real Redis."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.client import ServiceCallError, TrainerClient
from shared.processes import Proc, free_port, start_service

pytestmark = pytest.mark.slow

API_KEY = "confine-key"
RETRIEVER = "http://127.0.0.1:1"  # configured (never called: these jobs are refused or fail before)


@pytest.fixture(scope="module")
def user_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder this trainer's users keep data in (TRAINER_READ_ROOTS): a good record file, a file that
    is not JSONL, and a symlink that points out of it."""
    root = tmp_path_factory.mktemp("userdata")
    record = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "<answer> A </answer>"}]}
    (root / "records.jsonl").write_text(json.dumps(record) + "\n")
    (root / "notes.txt").write_text("meeting notes, not JSONL\n")
    (root / "escape.jsonl").symlink_to("/etc/hostname")
    return root


@pytest.fixture(scope="module")
def trainer(redis_url: str, user_data: Path, tmp_path_factory: pytest.TempPathFactory,
            logs_dir: Path) -> Iterator[Proc]:
    env = {"TRAINER_API_KEY": API_KEY, "TRAINER_REDIS_URL": redis_url,
           "TRAINER_OUTPUT_DIR": str(tmp_path_factory.mktemp("jobs")), "TRAINER_KEY_PREFIX": f"confine-{free_port()}",
           "TRAINER_READ_ROOTS": json.dumps([str(user_data)]), "TRAINER_RETRIEVER_URL": RETRIEVER,
           "TRAINER_TORCH_THREADS": "1"}
    proc = start_service("trainer", env, log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(trainer: Proc) -> TrainerClient:
    return TrainerClient(trainer.url, API_KEY, timeout_s=30)


def _refused(client: TrainerClient, kind: str, config: dict[str, object]) -> str:
    with pytest.raises(ServiceCallError) as err:
        client.request("POST", "/jobs", json={"kind": kind, "config": config})
    assert err.value.status == 422, err.value
    return err.value.message


@pytest.mark.parametrize("kind,config,field", [
    ("sft", {"data": ["/etc/hostname"]}, "config.data"),  # a system file as training data
    ("sft", {"data": ["{data}/escape.jsonl"]}, "config.data"),  # ... through a symlink in an allowed folder
    ("sft", {"data": ["{data}/../../../../etc/hostname"]}, "config.data"),  # ... through '..'
    ("sft", {"data": ["{data}/records.jsonl"], "checkpoint_name": "../../escape-probe"}, "checkpoint_name"),
    ("sft", {"data": ["{data}/records.jsonl"], "model": "/etc"}, "config.model"),
    ("ramp", {"out_dir": "/tmp/elsewhere"}, "config.out_dir"),
    ("ramp", {"name": "../../indexes/wiki_passages"}, "config.name"),
    ("ramp", {"corpus": "/etc/passwd"}, "config.corpus"),
    ("coldstart", {"qa": ["hotpotqa"], "retriever_url": "http://169.254.169.254/latest"}, "config.retriever_url"),
    ("coldstart", {"ramp_path": "/etc/passwd"}, "config.ramp_path"),
    ("rl", {"model": "/etc"}, "config"),
    ("rl", {"prompts": {"kind": "ramp", "path": "/etc/passwd"}}, "config.prompts.path"),
    ("rl", {"engine": "verl", "verl": {"checkpoint_dir": "/srv/ckpt"}}, "checkpoint_dir"),
    ("rl", {"engine": "verl", "verl": {"extra_overrides": ["trainer.default_local_dir=/etc"]}}, "extra_overrides"),
    ("rl", {"engine": "verl", "verl": {"extra_overrides": ["trainer.project_name=${oc.env:TRAINER_API_KEY}"]}},
     "extra_overrides"),
    ("eval", {"methods": ["policy:/etc"]}, "config.methods"),
    ("eval", {"datasets": ["/etc/passwd"]}, "config.datasets"),
    ("eval", {"eval": {"stamp": "../x"}}, "config.eval.stamp"),
    ("distill", {"teacher": "/usr"}, "config.teacher"),
    ("simulator_sft", {"retriever_url": "http://127.0.0.1:6379"}, "config.retriever_url"),
])
def test_a_path_or_url_outside_the_trainers_roots_is_a_422(client: TrainerClient, user_data: Path, kind: str,
                                                          config: dict[str, object], field: str) -> None:
    config = json.loads(json.dumps(config).replace("{data}", str(user_data)))
    assert field in _refused(client, kind, config)


def test_a_refusal_does_not_tell_whether_a_file_exists(client: TrainerClient) -> None:
    there = _refused(client, "sft", {"data": ["/etc/hostname"]})
    absent = _refused(client, "sft", {"data": ["/etc/no-such-file-here"]})
    assert there.replace("/etc/hostname", "X") == absent.replace("/etc/no-such-file-here", "X")
    assert "outside the folders" in there


@pytest.mark.parametrize("kind,config,field", [
    ("rl", {"episode": {"sampling": {"max_new_tokens": 200_000}}}, "max_new_tokens"),
    ("rl", {"episode": {"max_total_tokens": 10_000_000}}, "max_total_tokens"),
    ("rl", {"episode": {"max_turns": 1000}}, "max_turns"),
    ("rl", {"batch_size": 1_000_000}, "batch_size"),
    ("rl", {"group_size": 10_000}, "group_size"),
    ("sft", {"data": ["{data}/records.jsonl"], "micro_batch_size": 100_000}, "micro_batch_size"),
    ("eval", {"eval": {"max_new_tokens": 200_000}}, "max_new_tokens"),
    ("distill", {"samples_per_prompt": 100_000}, "samples_per_prompt"),
    ("simulator_sft", {"max_len": 10_000_000}, "max_len"),
])
def test_every_size_has_an_upper_bound(client: TrainerClient, user_data: Path, kind: str,
                                       config: dict[str, object], field: str) -> None:
    config = json.loads(json.dumps(config).replace("{data}", str(user_data)))
    assert field in _refused(client, kind, config)


def test_the_bounds_are_in_the_openapi_schema(trainer: Proc) -> None:
    schema = httpx.get(trainer.url + "/openapi.json").json()["components"]["schemas"]
    assert {"sftJobConfig", "rlJobConfig", "evalJobConfig"} <= set(schema)
    assert schema["EpisodeSampling"]["properties"]["max_new_tokens"]["maximum"] == 4096
    assert schema["rlJobConfig"]["properties"]["group_size"]["maximum"] == 64


def test_data_inside_the_roots_is_accepted_and_a_non_jsonl_file_fails_saying_why(
        client: TrainerClient, user_data: Path) -> None:
    job = client.submit("sft", {"data": [str(user_data / "notes.txt")], "max_steps": 1})
    status = client.wait(job, timeout_s=300)
    assert status.state == "failed"
    assert f"{user_data / 'notes.txt'}:1: not a JSON line" in (status.error or "")
    assert "JSONDecodeError" not in (status.error or "")


def _raw_get(url: str, path: str) -> int:
    """A GET whose path goes on the wire as written (httpx would normalise '../' away)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                  "Connection: close\r\n\r\n".encode())
        head = s.recv(4096).decode(errors="replace")
    return int(head.split()[1])


def test_an_artifact_path_cannot_leave_the_job_folder(trainer: Proc, client: TrainerClient, user_data: Path) -> None:
    job = client.submit("sft", {"data": [str(user_data / "notes.txt")], "max_steps": 1})
    client.wait(job, timeout_s=300)
    for path in (f"/jobs/{job}/artifacts/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                 f"/jobs/{job}/artifacts/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
                 f"/jobs/{job}/artifacts/..%2f{job}%2fconfig.json"):
        assert _raw_get(trainer.url, path) == 404, path
    assert os.path.isfile("/etc/passwd")  # the file is there; the trainer just never serves it


@pytest.mark.parametrize("last_id", ["not-an-id", "1-2-3", "99999999999999999999999", "$"])
def test_a_malformed_last_event_id_is_a_400_not_a_broken_stream(trainer: Proc, client: TrainerClient,
                                                                user_data: Path, last_id: str) -> None:
    job = client.submit("sft", {"data": [str(user_data / "notes.txt")], "max_steps": 1})
    r = httpx.get(f"{trainer.url}/jobs/{job}/events", timeout=30,
                  headers={"Authorization": f"Bearer {API_KEY}", "Last-Event-ID": last_id})
    assert r.status_code == 400 and "Last-Event-ID" in r.text
