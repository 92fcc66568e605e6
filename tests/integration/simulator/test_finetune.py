"""Simulator fine-tuning for real: examples from a real retriever labelled by the real judge service,
a CPU SFT run of the embedded SmolLM2, and the saved folder served by the simulator service."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.trainer.learn.simulator_sft import (
    FinetuneConfig,
    JudgeLabeller,
    MetricLabeller,
    SimExample,
    build_examples,
    load_examples,
    sft,
)
from shared.client import JudgeClient, RetrieverClient, SimulatorClient
from shared.data import load_split
from shared.metrics import best_match
from shared.processes import Proc, start_service

pytestmark = pytest.mark.slow

K, WORDS = 3, 12


@pytest.fixture(scope="module")
def examples(small_retriever: Proc, judge_server: Proc) -> list[SimExample]:
    # train-part questions whose supporting passages the small corpus holds (the first 30 of the file)
    train_ids = {r["id"] for r in load_split("hotpotqa", "train")}
    rows = [r for r in load_split("hotpotqa", "all", limit=30) if r["id"] in train_ids][:6]
    labeller = JudgeLabeller(JudgeClient(judge_server.url))
    return build_examples(rows, RetrieverClient(small_retriever.url), labeller, k=K, words=WORDS, sets_per_query=2)


def test_examples_are_real_retrieval_labelled_by_the_judge(examples: list[SimExample]) -> None:
    assert len(examples) == 12
    for e in examples:
        assert len(e.documents) == K and len(e.source_ids) == K and all(i.startswith("wiki-") for i in e.source_ids)
        assert all(len(d["text"].split()) <= WORDS for d in e.documents)
        text = " ".join(d["text"] for d in e.documents)
        assert (e.quality == "useful") == (best_match(text, e.gold, "cover_em").score > 0)
    labels = MetricLabeller().contains_gold([(e.question, e.gold, " ".join(d["text"] for d in e.documents))
                                             for e in examples])
    assert [e.quality == "useful" for e in examples] == labels  # judge and shared.metrics agree
    assert {e.quality for e in examples} == {"useful", "noisy"}
    useful = next(e for e in examples if e.quality == "useful")
    assert useful.gold[0] in useful.messages("zerosearch", WORDS)[0]["content"]  # answer injected for useful
    assert useful.target().startswith("Doc 1 (Title: ")


def test_sft_on_cpu_gives_a_model_the_service_loads(examples: list[SimExample], tmp_path_factory: pytest.TempPathFactory,
                                                     logs_dir: Path) -> None:
    out = tmp_path_factory.mktemp("simulator-sft")
    report = sft(examples, "smollm2", out, FinetuneConfig(epochs=1, batch_size=4, lr=1e-4, words=WORDS,
                                                           max_len=384))
    assert report.steps == 3 and report.examples == 12 and report.tokens_trained > 12 * K * 5
    assert all(loss == loss and loss < 20 for loss in report.losses)  # finite
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert len(load_examples(out / "train_examples.jsonl")) == 12

    env = {"SIMULATOR_MODE": "llm", "SIMULATOR_LLM__MODEL": str(out), "SIMULATOR_WORDS": str(WORDS),
           "SIMULATOR_TOKENS_PER_DOC": "28"}
    proc = start_service("simulator", env, log_dir=logs_dir)
    try:
        info = httpx.get(proc.url + "/info").json()["details"]
        assert info["model"] == str(out) and info["llm_backend"] == "local"
        response = SimulatorClient(proc.url, timeout_s=900).simulate(
            {"query": "Florida Senate", "question": "How many members has the Florida Senate?", "gold": ["40"],
             "k": 2, "quality": "useful"})
        assert len(response.documents) == 2 and all(d.title and d.text for d in response.documents)
    finally:
        proc.stop()
