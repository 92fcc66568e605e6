"""searchlab's agent loop inside verl, on CPU, through verl's own code wherever it runs without a GPU.

What runs for real: verl's ``AgentLoopWorker.generate_sequences`` (our subclass that adds the global step:
agent-loop selection by ``default_agent_loop``, the registry filled from our ``agent_loop.yaml``, hydra
instantiation of ``SearchlabAgentLoop`` per sample, verl's chat template, padding, the output
``DataProto``), verl's ``RLHFDataset`` over our parquet, verl's ``RewardLoopWorker`` with our reward
(streamed per sample, as in a run), Redis, searchlab rollout workers as subprocesses, the retriever and
the simulator on loopback, and our SGLang-compatible policy server (``/generate`` on CPU) where verl's
SGLang rollout server stands.

What stands in, and why: verl's ``AsyncLLMServerManager`` routes to ``SGLangHttpServer`` Ray actors that
wrap GPU SGLang engines, so it cannot run here; :class:`HTTPServerManager` has the same ``generate``
signature, ``TokenOutput`` and max-token rule and sends the same request to ``/generate`` of the policy
server. The workers are constructed directly instead of as Ray actors (``ray.remote`` only changes where
they run; :mod:`services.trainer.verl.local`), and ``LocalActor`` answers ``handle.compute_score.remote(data)``
like a Ray actor handle.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from services.trainer.rollout.queue import EPISODES, GROUP
from services.trainer.verl.agent_loop import runs
from services.trainer.verl.local import LocalAgentLoopWorker, http_server_manager
from shared.noise_schedule import p_noise
from shared.processes import Proc

pytestmark = pytest.mark.slow

# environment text: observation blocks, and after the final nudge the answer block it opens
OBSERVATIONS = re.compile(r"(\s*<information>.*?</information>\s*)+(<answer>)?", re.S)


def batch_of(config: Any, parquet: Path, prompts: int, n: int, step: int) -> Any:
    """A step's generation batch, as verl's trainer builds it: dataset rows, a uid per prompt, n per prompt."""
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    tokenizer = AutoTokenizer.from_pretrained(config.actor_rollout_ref.model.path)
    dataset = RLHFDataset(str(parquet), tokenizer, config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(prompts)]))
    batch.non_tensor_batch["uid"] = np.array([uuid.uuid4().hex for _ in range(prompts)], dtype=object)
    gen = batch.repeat(repeat_times=n, interleave=True)
    gen.meta_info["global_steps"] = step
    return gen


def generate(config: Any, url: str, batch: Any) -> Any:
    """verl's ``generate_sequences`` of one agent-loop worker, with verl's reward worker streaming scores."""
    from verl.experimental.reward_loop import RewardLoopWorker

    async def go() -> Any:
        worker = LocalAgentLoopWorker(config, http_server_manager(config, [url]), RewardLoopWorker(config))
        return await worker.generate_sequences(batch)

    return asyncio.run(go())


def samples(out: Any) -> Iterator[dict[str, Any]]:
    """Each output row unpadded: prompt, response, mask, rollout log-probs, reward, the loop's trace."""
    width = out.batch["prompts"].shape[1]
    for i in range(len(out)):
        attention = out.batch["attention_mask"][i]
        length = int(attention[width:].sum())
        yield {"prompt": out.batch["prompts"][i][attention[:width].bool()].tolist(),
               "response": out.batch["responses"][i][:length].tolist(),
               "mask": out.batch["response_mask"][i][:length].tolist(),
               "logprobs": out.batch["rollout_log_probs"][i][:length].tolist(),
               "reward": float(out.batch["rm_scores"][i].sum()), "score": float(out.non_tensor_batch["score"][i]),
               "trace": out.non_tensor_batch["searchlab"][i]}


@pytest.fixture(scope="module")
def tokenizer(smollm2_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


def check_trajectory(s: dict[str, Any], decode: Any) -> int:
    """The mask is 0 exactly on observation tokens; returns the number of observation blocks."""
    blocks = 0
    for value, a, b in runs(s["mask"]):
        text = decode(s["response"][a:b])
        if value == 0:
            assert OBSERVATIONS.fullmatch(text), text
            assert all(lp == 0.0 for lp in s["logprobs"][a:b])
            blocks += text.count("<information>")
        else:
            assert "<information>" not in text and "</information>" not in text, text
    assert s["reward"] == pytest.approx(s["score"])  # verl's rm_scores carry our compute_score
    return blocks


def _workers(start_worker: Any, redis_url: str, policy_url: str, retriever: str, simulator: str,
             *names: str, **settings: Any) -> list[Proc]:
    return [start_worker(redis_url, name, llm__backend="openai", llm__base_url=policy_url, llm__model="smollm2",
                         retriever_url=retriever, simulator_url=simulator, remote_inflight=16, **settings)
            for name in names]


def test_queue_mode_episodes_search_for_real(verl_config: Any, few_shot_parquet: Path, policy_server: Proc,
                                             private_redis: Proc, small_retriever: Proc, corpus_simulator: Proc,
                                             start_worker: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    from shared.config import LLMSettings
    from shared.llm import LocalBackend

    monkeypatch.setenv("SEARCHLAB_REDIS_URL", private_redis.url)
    _workers(start_worker, private_redis.url, policy_server.url, small_retriever.url, corpus_simulator.url, "w1")
    config = verl_config(dispatch="queue")
    out = generate(config, policy_server.url, batch_of(config, few_shot_parquet, prompts=2, n=2, step=1))
    assert len(out) == 4
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    rows = list(samples(out))
    for s in rows:
        assert check_trajectory(s, decode) >= 1
        assert s["trace"]["searches"] >= 1 and s["trace"]["search_failures"] == 0
        assert "Doc 1(Title:" in decode(s["response"])  # the retriever's documents reached the policy
        assert s["trace"]["error"] == ""
    # the sampling log-probs the worker recorded are the model's own: a separate forward pass agrees
    local = LocalBackend(LLMSettings(model="smollm2", dtype="float32"))
    s = rows[0]
    teacher = local.sequence_logprobs(s["prompt"], s["response"])
    own = [(got, want) for got, want, m in zip(s["logprobs"], teacher, s["mask"], strict=True) if m == 1]
    assert own and max(abs(got - want) for got, want in own) < 0.05


def test_inline_mode_with_the_simulator_and_the_noise_curriculum(verl_config: Any, few_shot_parquet: Path,
                                                                 policy_server: Proc, tokenizer: Any) -> None:
    config = verl_config(recipe="zerosearch", dispatch="inline")
    out = generate(config, policy_server.url, batch_of(config, few_shot_parquet, prompts=2, n=1, step=2))
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for s in samples(out):
        assert check_trajectory(s, decode) >= 1
        assert s["trace"]["searches"] >= 1 and s["trace"]["search_failures"] == 0
        assert "Doc 1(Title:" in decode(s["response"])  # simulated documents, in the retriever's format


def test_each_sample_gets_the_step_s_noise_and_validation_the_retriever(verl_config: Any, smollm2_path: Path,
                                                                        policy_server: Proc) -> None:
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry

    config = verl_config(recipe="zerosearch", dispatch="inline")  # the simulator, p_noise 0 -> 0.5 (base 4)
    total = int(config.trainer.total_training_steps)

    async def requests() -> list[Any]:
        worker = LocalAgentLoopWorker(config, http_server_manager(config, [policy_server.url]))
        loop = hydra.utils.instantiate(_agent_loop_registry["searchlab"], trainer_config=DictConfigWrap(config),
                                       server_manager=worker.server_manager, tokenizer=worker.tokenizer,
                                       processor=None, dataset_cls=worker.dataset_cls,
                                       data_config=DictConfigWrap(config.data))
        row = {"raw_prompt": [], "reward_model": {"ground_truth": {"target": ["x"]}},
               "extra_info": {"question": "q"}, "uid": "g"}
        return [loop.request([1, 2], {"temperature": 1.0}, {**row, "searchlab_step": step, "searchlab_validate": v})
                for step, v in ((0, False), (total // 2, False), (total, False), (total, True))]

    start, mid, end, validation = asyncio.run(requests())
    assert start.search_backend == mid.search_backend == end.search_backend == "simulator"
    assert start.p_noise == 0.0 and end.p_noise == pytest.approx(0.5)
    assert mid.p_noise == pytest.approx(p_noise(total // 2, total, 0.0, 0.5, 4.0))
    assert validation.search_backend == "retriever" and validation.p_noise is None
    assert start.group_id == "g" and start.ground_truth == ["x"]


def test_a_worker_killed_mid_episode_is_survived(verl_config: Any, few_shot_parquet: Path, policy_server: Proc,
                                                 private_redis: Proc, small_retriever: Proc, corpus_simulator: Proc,
                                                 start_worker: Any, waiter: Any, tokenizer: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHLAB_REDIS_URL", private_redis.url)
    urls = (private_redis.url, policy_server.url, small_retriever.url, corpus_simulator.url)
    [doomed] = _workers(start_worker, *urls, "doomed", visibility_timeout_s=4)
    config = verl_config(dispatch="queue")
    batch = batch_of(config, few_shot_parquet, prompts=2, n=1, step=1)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(out=generate(config, policy_server.url, batch)))
    thread.start()
    r = redis.Redis.from_url(private_redis.url, decode_responses=True)

    def doomed_holds_episodes() -> bool:
        consumers = {c["name"]: c["pending"] for c in r.xinfo_consumers(EPISODES, GROUP)}
        return consumers.get("doomed", 0) > 0

    waiter(doomed_holds_episodes, 120, "the first worker to take the episodes", [doomed])
    doomed.kill()  # mid-episode: its entries stay pending
    [rescuer] = _workers(start_worker, *urls, "rescuer", visibility_timeout_s=4)
    thread.join(timeout=600)
    assert not thread.is_alive() and "out" in box
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    for s in samples(box["out"]):
        check_trajectory(s, decode)
        assert s["trace"]["error"] == "" and s["trace"]["searches"] >= 1
    time.sleep(0.5)
    assert "reclaimed" in rescuer.log_tail()
    assert r.xlen("searchlab:episodes:dead") == 0
