"""Job configs of the pipeline-wrapping kinds (services/trainer/jobs/runners.py): ``simulator_sft`` maps onto
the simulator's FinetuneConfig and refuses bad values at submission, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.trainer.jobs.runners import SimulatorSFTJobConfig


def test_simulator_sft_config_maps_onto_the_finetune_config() -> None:
    config = SimulatorSFTJobConfig(dataset="2wiki", epochs=2, lr=1e-4, batch_size=2, max_len=256, bf16=False, words=12)
    assert config.dataset == "2wikimultihopqa"  # the alias, stored canonical
    ft = config.finetune_config()
    assert (ft.epochs, ft.lr, ft.batch_size, ft.max_len, ft.bf16, ft.words) == (2, 1e-4, 2, 256, False, 12)
    assert SimulatorSFTJobConfig().label is None  # judge when the trainer has a judge URL, else metric


def test_simulator_sft_config_survives_the_job_store_round_trip() -> None:
    config = SimulatorSFTJobConfig(limit=4, k=3, label="metric")
    assert SimulatorSFTJobConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize("config,field", [
    ({"dataset": "nosuchqa"}, "dataset"),
    ({"dataset": "/tmp/questions.jsonl"}, "dataset"),  # names only: questions come from a train part
    ({"limit": 0}, "limit"),
    ({"k": 0}, "k"),
    ({"k": 21}, "k"),
    ({"label": "llm"}, "label"),
    ({"base_model": "/no/such/model"}, "base_model"),
    ({"epoch": 2}, "epoch"),  # misspelt: refused, not ignored
])
def test_bad_simulator_sft_config_names_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SimulatorSFTJobConfig.model_validate(config)
    assert field in str(err.value)


def test_distill_rounds_settings_need_rounds_and_survive_the_stored_round_trip() -> None:
    from services.trainer.jobs.configs import DistillJobConfig

    stored = DistillJobConfig().model_dump(mode="json")  # what the job record holds: every default
    assert DistillJobConfig.model_validate(stored).rounds == 1  # re-validated when the job runs
    with pytest.raises(ValidationError, match="set rounds > 1"):
        DistillJobConfig(sft={"max_steps": 3})
    rounds = DistillJobConfig(rounds=2, sft={"max_steps": 3}, eval={"n": 4})
    assert DistillJobConfig.model_validate(rounds.model_dump(mode="json")).sft.max_steps == 3
