"""The verl engine's CPU-runnable parts, checked with verl's own code: config tree and dataclasses,
RLHFDataset, the tool schema, and the custom-reward loading path with its reward manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from services.trainer.verl import run as verl_engine
from services.trainer.verl.run import VerlConfig
from shared.data import load_split, split_of


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, verl_engine.VerlRun]:
    out = {}
    for algorithm in ("grpo", "dapo"):
        cfg = VerlConfig(model_path="/models/policy", retriever_url="http://127.0.0.1:8001/", algorithm=algorithm,
                         judge_url="http://127.0.0.1:8002" if algorithm == "dapo" else None)
        out[algorithm] = verl_engine.prepare(cfg, tmp_path_factory.mktemp(algorithm), ["musique"])
    return out


def test_grpo_config_composes_in_verl_tree(run_dirs: dict[str, verl_engine.VerlRun]) -> None:
    run = run_dirs["grpo"]
    cfg = verl_engine.compose(run.overrides)
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.rollout.n == 5
    assert cfg.actor_rollout_ref.rollout.multi_turn.enable is True
    assert cfg.actor_rollout_ref.rollout.multi_turn.tool_config_path == str(run.tool_config)
    assert cfg.actor_rollout_ref.actor.kl_loss_type == "low_var_kl"
    assert Path(cfg.reward.custom_reward_function.path).is_file()
    assert cfg.reward.custom_reward_function.reward_kwargs.metric == "f1"
    assert run.command()[1:3] == ["-m", "verl.trainer.main_ppo"]


def test_dapo_preset(run_dirs: dict[str, verl_engine.VerlRun]) -> None:
    cfg = verl_engine.compose(run_dirs["dapo"].overrides)
    actor = cfg.actor_rollout_ref.actor
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (0.2, 0.28, "token-mean")
    assert cfg.reward.reward_manager.name == "dapo"
    assert cfg.reward.reward_kwargs.overlong_buffer_cfg.len == 512
    assert cfg.reward.custom_reward_function.reward_kwargs.judge_url == "http://127.0.0.1:8002"


def test_bad_override_is_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="verl config rejected"):
        verl_engine.compose(["actor_rollout_ref.actor.no_such_field=1"])


def test_training_data_is_train_part_only(run_dirs: dict[str, verl_engine.VerlRun]) -> None:
    import pandas as pd

    train = pd.read_parquet(run_dirs["grpo"].train_parquet)
    val = pd.read_parquet(run_dirs["grpo"].val_parquet)
    assert len(train) == len(load_split("musique", "train")) and len(val) == len(load_split("musique", "eval"))
    assert {split_of("musique", e["id"]) for e in train["extra_info"]} == {"train"}
    assert not set(e["id"] for e in train["extra_info"]) & set(e["id"] for e in val["extra_info"])


def test_rlhf_dataset_loads_our_parquet(run_dirs: dict[str, verl_engine.VerlRun], smollm2_path: Path) -> None:
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 1024, "filter_overlong_prompts": True,
                               "return_raw_chat": True, "truncation": "error"})
    dataset = RLHFDataset(str(run_dirs["grpo"].train_parquet), tokenizer, config)
    assert len(dataset) == len(load_split("musique", "train"))  # none filtered as overlong
    item = dataset[0]
    messages = item["raw_prompt"]  # verl's agent loop applies the chat template to these
    assert messages[0]["role"] == "user"
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    assert "<search>" in text and "Question:" in text
    assert item["index"] == 0
    assert item["tools_kwargs"]["search"]["create_kwargs"]["ground_truth"]["target"]


def test_tool_config_fits_verls_tool_schema(run_dirs: dict[str, verl_engine.VerlRun]) -> None:
    from verl.tools.schemas import OpenAIFunctionToolSchema

    tools = yaml.safe_load(run_dirs["grpo"].tool_config.read_text())["tools"]
    [tool] = tools
    assert tool["class_name"] == "verl.tools.search_tool.SearchTool"
    assert tool["config"]["retrieval_service_url"] == "http://127.0.0.1:8001/retrieve"
    schema = OpenAIFunctionToolSchema.model_validate(tool["tool_schema"])
    assert schema.function.name == "search"
    assert "query_list" in schema.function.parameters.properties


def _data_proto(tokenizer: Any, response: str, gold: list[str]) -> Any:
    from verl import DataProto

    prompt = tokenizer("Question: who?", return_tensors="pt")["input_ids"][0]
    resp = tokenizer(response, return_tensors="pt")["input_ids"][0]
    width = resp.shape[0] + 4  # right-padded response, as verl lays it out
    responses = torch.full((1, width), tokenizer.pad_token_id)
    responses[0, : resp.shape[0]] = resp
    attention = torch.cat([torch.ones(1, prompt.shape[0]), torch.zeros(1, width)], dim=1).long()
    attention[0, prompt.shape[0]: prompt.shape[0] + resp.shape[0]] = 1
    return DataProto.from_dict(
        tensors={"prompts": prompt.unsqueeze(0), "responses": responses, "attention_mask": attention},
        non_tensors={"data_source": np.array(["hotpotqa"], dtype=object),
                     "reward_model": np.array([{"ground_truth": {"target": gold}}], dtype=object),
                     "extra_info": np.array([{"question": "who?"}], dtype=object)},
    ), resp.shape[0]


def test_verl_loads_our_reward_and_scores_responses(run_dirs: dict[str, verl_engine.VerlRun],
                                                    smollm2_path: Path) -> None:
    from transformers import AutoTokenizer
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.workers.reward_manager.naive import NaiveRewardManager

    cfg = verl_engine.compose(run_dirs["grpo"].overrides)
    fn = get_custom_reward_fn(cfg)
    assert fn is not None
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path))
    manager = NaiveRewardManager(tokenizer, num_examine=0, compute_score=fn)
    good = ("<think>I should look it up.</think><search>capital of France</search>"
            "<information>Doc 1(Title: Paris) Paris is the capital of France.</information>"
            "<think>It is Paris.</think><answer>Paris</answer>")
    scores = {}
    for name, response in {"good": good, "wrong": good.replace("<answer>Paris", "<answer>Lyon"),
                           "none": "I think it is Paris."}.items():
        data, length = _data_proto(tokenizer, response, ["Paris"])
        out = manager(data, return_dict=True)
        tensor = out["reward_tensor"]
        assert tensor[0, length - 1] == tensor.sum()  # the reward sits on the last response token
        scores[name] = float(tensor.sum())
    assert scores["good"] == pytest.approx(1.2)  # format 0.2 + answer F1 1.0
    assert scores["wrong"] == pytest.approx(0.2)
    assert scores["none"] == 0.0
