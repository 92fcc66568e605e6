"""Fixtures of the verl agent-loop tests: what stands where verl's GPU pieces stand, and the services.

- ``policy_server``: searchlab's SGLang-compatible policy server (``POST /generate``, SmolLM2 on CPU) in
  the place of verl's SGLang rollout server;
- ``corpus_simulator``: the ZeroSearch simulator in corpus mode over the shared small retriever;
- ``verl_run``: a run directory written by ``prepare`` (small lengths for CPU), composed into the config
  verl's ``main_ppo`` would hand its workers, plus a parquet whose prompts carry two worked examples, so
  that the untrained SmolLM2 reliably writes ``<search>`` (the trajectories must hold real searches).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.processes import Proc, free_port, spawn, start_service, wait_http

EXAMPLES = [
    {"role": "user", "content": "Question: Who wrote Hamlet?"},
    {"role": "assistant", "content": "<think> I need to search. </think> <search> Who wrote Hamlet? </search>"},
    {"role": "user", "content": "Question: What is the capital of Peru?"},
    {"role": "assistant", "content": "<think> I need to search. </think> <search> What is the capital of Peru? "
                                     "</search>"},
]


@pytest.fixture(scope="module")
def policy_server(logs_dir: Path) -> Iterator[Proc]:
    port = free_port()
    proc = spawn("policy", [sys.executable, "-m", "services.trainer.rollout.policy_server"],
                 env={"POLICY_PORT": str(port), "POLICY_MAX_BATCH": "8", "POLICY_BATCH_WAIT_MS": "20",
                      "OMP_NUM_THREADS": "1"}, log_dir=logs_dir)
    proc.url = f"http://127.0.0.1:{port}"
    wait_http(proc, proc.url + "/ready", 240)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def corpus_simulator(small_retriever: Proc, logs_dir: Path) -> Iterator[Proc]:
    env = {"SIMULATOR_MODE": "corpus", "SIMULATOR_RETRIEVER_URL": small_retriever.url, "SIMULATOR_MAX_K": "8"}
    proc = start_service("simulator", env, log_dir=logs_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def few_shot_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HotpotQA train rows as verl rows (our row builder), each prompt preceded by two worked examples."""
    from services.trainer.verl.run import qa_to_verl_row, write_parquet
    from shared.data import load_split

    rows = []
    for i, r in enumerate(load_split("hotpotqa", "train", 6)):
        row = qa_to_verl_row(r, i, "train")
        row["prompt"] = [*EXAMPLES, {"role": "user", "content": f"Question: {r['question']}"}]
        rows.append(row)
    return write_parquet(rows, tmp_path_factory.mktemp("fewshot") / "train.parquet")


VerlRunFactory = Callable[..., Any]


@pytest.fixture(scope="module")
def verl_config(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path, small_retriever: Proc,
                corpus_simulator: Proc) -> VerlRunFactory:
    """``verl_config(dispatch=..., search=...)`` -> the composed verl config of a prepared run."""
    from services.trainer.verl.overrides import compose
    from services.trainer.verl.run import VerlConfig, prepare

    def make(**update: Any) -> Any:
        cfg = VerlConfig(model_path=str(smollm2_path), retriever_url=small_retriever.url,
                         simulator_url=corpus_simulator.url, train_batch_size=2, max_prompt_length=1024,
                         max_response_length=320, max_turns=2, max_turn_tokens=40, obs_max_tokens=96,
                         temperature=0.0, n_gpus_per_node=1, tensor_parallel=1, micro_batch_size_per_gpu=1,
                         episode_timeout_s=300, **update)
        run = prepare(cfg, tmp_path_factory.mktemp("verl-run"), ["musique"])
        return compose(run.stages[0].overrides)

    return make
