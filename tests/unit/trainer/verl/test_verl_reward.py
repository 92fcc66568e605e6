"""The verl reward through the reward path verl 0.7.1 runs: ``RewardLoopWorker`` (instantiated for real,
not as a Ray actor) loads our ``compute_score`` from the generated config and scores one sample at a time
through the ``naive`` reward-loop manager, with the agent loop's fields merged into ``extra_info`` — the
same ``DataProto`` an agent-loop worker sends it (``AgentLoopWorker._compute_score``).

The three response shapes of the issue: a real tool-loop trajectory (a search the environment ran, its
``<information>`` appended by the environment), a single-turn response with a made-up ``<information>``
block, and an answer with no search. Only the first gets format credit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.trainer.verl.agent_loop import trajectory_trace
from services.trainer.verl.overrides import compose
from services.trainer.verl.run import VerlConfig, prepare
from shared.schemas import EpisodeResult

DOCS = "Doc 1(Title: Paris) Paris is the capital and largest city of France."
SHAPES = {
    "search_r1": {
        "real": [(False, "<think> I should look it up. </think> <search> capital of France </search>"),
                 (True, f"\n\n<information>{DOCS}</information>\n\n"),
                 (False, "<think> It is Paris. </think> <answer> Paris </answer>")],
        "fabricated": f"<think> I know this. </think> <search> capital of France </search> <information>{DOCS}"
                      "</information> <think> It is Paris. </think> <answer> Paris </answer>",
        "no_search": "<think> It is Paris. </think> <answer> Paris </answer>",
    },
    "research": {
        "real": [(False, "<think> Let me search. </think> <search> capital of France </search>"),
                 (True, f"\n\n<result>{DOCS}</result>\n\n"),
                 (False, "<think> Paris. </think> <answer> The final answer is \\[ \\boxed{Paris} \\] </answer>")],
        "fabricated": f"<think> I know. </think> <search> capital of France </search> <result>{DOCS}</result> "
                      "<think> Paris. </think> <answer> The final answer is \\[ \\boxed{Paris} \\] </answer>",
        "no_search": "<think> Paris. </think> <answer> The final answer is \\[ \\boxed{Paris} \\] </answer>",
    },
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> dict[str, Any]:
    out = {}
    for recipe, dataset in (("search_r1", "musique"), ("research", "musique")):
        cfg = VerlConfig(recipe=recipe, model_path=str(smollm2_path), retriever_url="http://127.0.0.1:9",
                         train_batch_size=8, n_gpus_per_node=1, tensor_parallel=1, micro_batch_size_per_gpu=1)
        run = prepare(cfg, tmp_path_factory.mktemp(recipe), [dataset])
        out[recipe] = compose(run.stages[0].overrides)
    return out


def _sample(tokenizer: Any, response: list[tuple[bool, str]] | str, extra_fields: dict[str, Any]) -> Any:
    """One sample as the agent-loop worker hands it to the reward worker (left-padded prompt, right-padded
    response, the row's columns, the loop's extra fields)."""
    from tensordict import TensorDict
    from verl import DataProto

    pieces = [(False, response)] if isinstance(response, str) else response
    ids = [i for _, text in pieces for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    prompt = tokenizer("Question: what is the capital of France?", add_special_tokens=False)["input_ids"]
    width = len(ids) + 6
    responses = torch.full((1, width), tokenizer.pad_token_id or 0)
    responses[0, : len(ids)] = torch.tensor(ids)
    attention = torch.zeros(1, len(prompt) + width, dtype=torch.long)
    attention[0, : len(prompt) + len(ids)] = 1
    input_ids = torch.cat([torch.tensor([prompt]), responses], dim=1)
    batch = TensorDict({"prompts": torch.tensor([prompt]), "responses": responses, "attention_mask": attention,
                        "input_ids": input_ids, "position_ids": torch.cumsum(attention, -1) - 1}, batch_size=1)
    row = {"data_source": "nq", "reward_model": {"ground_truth": {"target": ["Paris"]}},
           "extra_info": {"question": "what is the capital of France?"},
           "raw_prompt": [{"role": "user", "content": "what is the capital of France?"}]}
    non_tensor = {**{k: np.array([v]) for k, v in row.items()}, "__num_turns__": np.array([3]),
                  "tool_extra_fields": np.array([extra_fields], dtype=object)}
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def _trace(tokenizer: Any, pieces: list[tuple[bool, str]], searches: int) -> dict[str, Any]:
    """What searchlab's agent loop puts in extra_fields for this trajectory (its own function)."""
    ids: list[int] = []
    mask: list[int] = []
    for env, text in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [0 if env else 1] * len(piece)
    result = EpisodeResult(job_id="j", episode_id="e", response_ids=ids, loss_mask=mask, logprobs=[0.0] * len(ids),
                           turns=2, searches=searches, finish_reason="answer")
    return {"searchlab": trajectory_trace(result, lambda t: tokenizer.decode(t, skip_special_tokens=True))}


@pytest.mark.parametrize("recipe", ["search_r1", "research"])
def test_only_a_real_search_earns_format_credit(configs: dict[str, Any], recipe: str) -> None:
    from verl.experimental.reward_loop import RewardLoopWorker

    shapes = SHAPES[recipe]

    async def score() -> dict[str, dict[str, Any]]:
        worker = RewardLoopWorker(configs[recipe])  # verl's reward worker; loads our compute_score by path
        tok = worker.input_tokenizer
        samples = {
            "real": _sample(tok, shapes["real"], _trace(tok, shapes["real"], searches=1)),
            # the stock single-turn loop: no trajectory structure, the text alone
            "fabricated": _sample(tok, shapes["fabricated"], {"turn_scores": [], "tool_rewards": []}),
            # searchlab's loop, but the policy wrote the observation itself (the loop would have cut it)
            "fabricated_in_trace": _sample(tok, shapes["fabricated"],
                                           _trace(tok, [(False, shapes["fabricated"])], searches=0)),
            "no_search": _sample(tok, shapes["no_search"], _trace(tok, [(False, shapes["no_search"])], searches=0)),
        }
        return {name: await worker.compute_score(data) for name, data in samples.items()}

    out = asyncio.run(score())
    info = {name: r["reward_extra_info"] for name, r in out.items()}
    assert info["real"]["format_ok"] == 1.0 and info["real"]["searches"] == 1.0
    for name in ("fabricated", "fabricated_in_trace", "no_search"):
        assert info[name]["format_ok"] == 0.0, name
    scores = {name: r["reward_score"] for name, r in out.items()}
    if recipe == "search_r1":  # Search-R1's EM table: well-formed and right 1.0; malformed but right 0.8
        assert scores["real"] == pytest.approx(1.0)
        assert scores["fabricated"] == scores["fabricated_in_trace"] == scores["no_search"] == pytest.approx(0.8)
    else:  # ReSearch: a malformed response scores 0 whatever its answer
        assert scores["real"] == pytest.approx(1.0)
        assert scores["fabricated"] == scores["fabricated_in_trace"] == scores["no_search"] == 0.0
