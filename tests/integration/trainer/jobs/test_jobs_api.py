"""The trainer's jobs API over real HTTP with a real Redis: auth, validation, a real SFT job
(events, metrics, artifacts, a loadable checkpoint), cancellation, and a restart that keeps
every job (running -> interrupted, queued -> resumed)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.client import ServiceCallError, TrainerClient
from shared.processes import Proc, free_port, spawn, start_service

pytestmark = pytest.mark.slow

API_KEY = "test-key"


def _records(path: Path) -> Path:
    rows = []
    for i, (q, a) in enumerate([("Who wrote Hamlet?", "William Shakespeare"), ("Capital of France?", "Paris"),
                                ("Largest planet?", "Jupiter"), ("Author of Faust?", "Goethe")]):
        rows.append({
            "id": f"t{i}", "messages": [{"role": "user", "content": f"Question: {q}"}],
            "segments": [
                {"role": "policy", "text": f"<search> {q} </search>"},
                {"role": "observation", "text": f"\n\n<information>Doc 1: {a} is the answer.</information>\n\n"},
                {"role": "policy", "text": f"<answer> {a} </answer>"},
            ],
            "ground_truth": [a], "source": "test",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _records(tmp_path_factory.mktemp("sft") / "records.jsonl")


@pytest.fixture(scope="module")
def trainer_env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("jobs")
    return {"TRAINER_API_KEY": API_KEY, "TRAINER_REDIS_URL": redis_url, "TRAINER_OUTPUT_DIR": str(out),
            "TRAINER_KEY_PREFIX": f"test-jobs-{free_port()}",
            "TRAINER_READ_ROOTS": json.dumps([str(tmp_path_factory.getbasetemp())])}


@pytest.fixture(scope="module")
def trainer(trainer_env: dict[str, str], logs_dir: Path) -> Iterator[Proc]:
    proc = start_service("trainer", trainer_env, log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(trainer: Proc) -> TrainerClient:
    return TrainerClient(trainer.url, API_KEY, timeout_s=30)


def _sft_config(records: Path, **extra: object) -> dict[str, object]:
    return {"data": [str(records)], "micro_batch_size": 2, "grad_accum": 1, "max_steps": 2, "max_length": 128,
            "optim": {"lr": 1e-4}, **extra}


def test_refuses_to_start_without_api_key(redis_url: str, logs_dir: Path) -> None:
    env = {"TRAINER_REDIS_URL": redis_url, "TRAINER_PORT": str(free_port()), "TRAINER_API_KEY": ""}
    proc = spawn("trainer-nokey", [sys.executable, "-m", "services.trainer"], env=env, log_dir=logs_dir)
    try:
        assert proc.popen.wait(60) != 0
        assert "API key is required" in proc.log_tail()
    finally:
        proc.stop()


def test_job_routes_need_the_bearer_token(trainer: Proc) -> None:
    assert httpx.get(trainer.url + "/health").status_code == 200
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/x/events")]:
        r = httpx.request(method, trainer.url + path, json={"kind": "sft", "config": {}})
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(trainer.url + "/jobs", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


@pytest.mark.parametrize("body,field", [
    ({"kind": "sft", "config": {"data": ["/no/such/file.jsonl"]}}, "config.data"),
    ({"kind": "sft", "config": {}}, "config.data"),
    ({"kind": "rl", "config": {"prompts": {"part": "eval"}}}, "config.prompts.part"),
    ({"kind": "rl", "config": {"algo": {"name": "ppo2"}}}, "config.algo.name"),
    ({"kind": "rl", "config": {"group_size": 1}}, "config.group_size"),
    ({"kind": "simulator_sft", "config": {"dataset": "nosuchqa"}}, "config.dataset"),
    ({"kind": "simulator_sft", "config": {"limit": 0}}, "config.limit"),
    ({"kind": "distill", "config": {"keep": "bleu"}}, "config.keep"),
    ({"kind": "distill", "config": {"prompts": {"dataset": "nosuchqa"}}}, "config.prompts.dataset"),
    ({"kind": "distill", "config": {"prompts": {"part": "eval"}}}, "config.prompts.part"),
    ({"kind": "bogus", "config": {}}, "kind"),
])
def test_bad_config_is_a_422_naming_the_field(client: TrainerClient, body: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceCallError) as err:
        client.request("POST", "/jobs", json=body)
    assert err.value.status == 422
    assert field in err.value.message


def test_sft_job_runs_reports_and_yields_a_loadable_checkpoint(client: TrainerClient, records: Path) -> None:
    job_id = client.submit("sft", _sft_config(records))
    events = list(client.events(job_id))
    status = client.wait(job_id, timeout_s=300)
    assert status.state == "succeeded", status.error
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert events[-1] == {**events[-1], "type": "state", "state": "succeeded"}
    assert status.progress == 1.0 and status.step == 2 and status.metrics["loss"] > 0
    assert "checkpoint/model.safetensors" in status.artifacts and "metrics.jsonl" in status.artifacts
    lines = client.artifact(job_id, "metrics.jsonl").decode().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    result = json.loads(client.artifact(job_id, "result.json"))
    assert Path(result["checkpoint"]).is_dir()
    with pytest.raises(ServiceCallError) as err:
        client.artifact(job_id, "../../etc/passwd")
    assert err.value.status == 404
    # the checkpoint is a plain HF folder the workers' backend loads, and training moved the weights
    from safetensors.torch import load_file

    from shared.config import LLMSettings
    from shared.llm import LocalBackend
    from shared.models import resolve

    tuned = load_file(str(Path(result["checkpoint"]) / "model.safetensors"))
    base = load_file(str(resolve("smollm2") / "model.safetensors"))
    name = next(k for k in tuned if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not bool((tuned[name] == base[name]).all())
    backend = LocalBackend(LLMSettings(model=result["checkpoint"]))
    assert backend.generate([backend.encode("Hello")], __import__("shared.llm", fromlist=["SamplingParams"])
                            .SamplingParams(max_new_tokens=2))[0].token_ids


def test_cancel_a_running_job(client: TrainerClient, records: Path) -> None:
    job_id = client.submit("sft", _sft_config(records, max_steps=100_000))
    for event in client.events(job_id):
        if event["type"] == "step":
            break
    assert client.cancel(job_id).state in ("running", "cancelled")
    assert client.wait(job_id, timeout_s=120).state == "cancelled"
    with pytest.raises(ServiceCallError) as err:
        client.job("no-such-job")
    assert err.value.status == 404


def test_restart_keeps_jobs_interrupts_running_and_resumes_queued(trainer_env: dict[str, str], logs_dir: Path,
                                                                  records: Path) -> None:
    env = {**trainer_env, "TRAINER_KEY_PREFIX": trainer_env["TRAINER_KEY_PREFIX"] + "-restart"}
    first = start_service("trainer", env, log_dir=logs_dir)
    try:
        c = TrainerClient(first.url, API_KEY)
        running = c.submit("sft", _sft_config(records, max_steps=100_000))
        queued = c.submit("sft", _sft_config(records))  # one job at a time: this one waits
        for event in c.events(running):
            if event["type"] == "step":
                break
        assert c.job(queued).state == "queued"
    finally:
        first.kill()  # no graceful shutdown: the trainer dies mid-job
    second = start_service("trainer", env, log_dir=logs_dir)
    try:
        c = TrainerClient(second.url, API_KEY)
        listed = {j.id: j for j in c.jobs()}
        assert {running, queued} <= set(listed)
        assert listed[running].state == "interrupted"
        assert "restarted" in (listed[running].error or "")
        assert c.wait(queued, timeout_s=300).state == "succeeded"
    finally:
        second.stop()
