"""An ``rl`` job on the verl engine through the real jobs API: accepted, prepared and validated into the same run
directory ``searchlab train --engine verl`` writes, its command recorded (not launched); an unknown engine or
a bad verl field is a 422."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main as searchlab
from shared.client import ServiceCallError, TrainerClient
from shared.processes import Proc

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("config,field", [
    ({"engine": "ray"}, "config.engine"),
    ({"engine": "verl", "verl": {"recipe_name": "search_r1"}}, "recipe_name"),
    ({"engine": "verl", "verl": {"dispatch": "carrier-pigeon"}}, "dispatch"),
    ({"verl": {"recipe": "search_r1"}}, "engine 'verl'"),
    ({"launch": "ray"}, "engine 'verl'"),
    ({"engine": "verl", "launch": "slurm"}, "config.launch"),
])
def test_an_unknown_engine_or_verl_field_is_a_422(job_client: TrainerClient, config: dict[str, object],
                                                  field: str) -> None:
    with pytest.raises(ServiceCallError) as err:
        job_client.request("POST", "/jobs", json={"kind": "rl", "config": config})
    assert err.value.status == 422 and field in err.value.message


def test_a_verl_rl_job_writes_the_clis_run_and_records_the_command(job_client: TrainerClient, tmp_path: Path,
                                                                   small_retriever: Proc, smollm2_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    job = job_client.submit("rl", {"engine": "verl", "model": "smollm2",
                                   "verl": {"recipe": "search_r1", "train_batch_size": 8}})
    status = job_client.wait(job, timeout_s=600)
    assert status.state == "succeeded", status.error
    result = json.loads(job_client.artifact(job, "result.json"))
    assert result["engine"] == "verl" and result["launched"] is False
    assert "verl.trainer.main_ppo" in result["command"]
    assert "verl/command.sh" in status.artifacts and "verl/stages/1-qa/overrides.txt" in status.artifacts

    cli_out = tmp_path / "cli"
    assert searchlab(["train", "--engine", "verl", "--recipe", "search_r1", "--out", str(cli_out), "--model",
                      str(smollm2_path), "--retriever-url", small_retriever.url, "--train-batch-size", "8",
                      "--dry-run"]) == 0
    capsys.readouterr()
    job_dir = Path(result["run_dir"])
    job_overrides = (job_dir / "stages/1-qa/overrides.txt").read_text().replace(str(job_dir), "<run>")
    cli_overrides = (cli_out / "stages/1-qa/overrides.txt").read_text().replace(str(cli_out), "<run>")
    assert job_overrides == cli_overrides
    assert (job_dir / "stages/1-qa/agent_loop.yaml").read_text().replace(str(job_dir), "<run>") == \
        (cli_out / "stages/1-qa/agent_loop.yaml").read_text().replace(str(cli_out), "<run>")


def test_launch_ray_without_a_ray_cluster_fails_saying_what_to_set(job_client: TrainerClient) -> None:
    job = job_client.submit("rl", {"engine": "verl", "model": "smollm2", "launch": "ray",
                                   "verl": {"recipe": "search_r1", "train_batch_size": 8}})
    status = job_client.wait(job, timeout_s=120)
    assert status.state == "failed" and "TRAINER_RAY_ADDRESS" in (status.error or "")
