"""The embedded SmolLM2 through both LLM backends: in-process and a real OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import LLMSettings
from shared.llm import LocalBackend, SamplingParams, get_backend
from shared.processes import Proc

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    backend = get_backend(LLMSettings(backend="local", model="smollm2", max_batch_size=4, dtype="float32"))
    assert isinstance(backend, LocalBackend)
    return backend


def test_local_chat_answers(local: LocalBackend) -> None:
    [text] = local.chat([QUESTION], SamplingParams(max_new_tokens=24))
    assert text.strip()
    assert "paris" in text.lower()


def test_generate_logprobs_match_a_separate_forward_pass(local: LocalBackend) -> None:
    prompts = [local.apply_chat_template(QUESTION), local.apply_chat_template([{"role": "user", "content": "Hi"}])]
    gens = local.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.8, seed=3))
    for prompt, gen in zip(prompts, gens, strict=True):
        assert gen.token_ids and len(gen.token_ids) == len(gen.logprobs)
        reference = local.sequence_logprobs(prompt, gen.token_ids)
        assert max(abs(a - b) for a, b in zip(reference, gen.logprobs, strict=True)) < 1e-3


def test_batched_greedy_equals_one_at_a_time(local: LocalBackend) -> None:
    short = local.apply_chat_template([{"role": "user", "content": "Name a fruit."}])
    long = local.apply_chat_template(QUESTION)
    sampling = SamplingParams(max_new_tokens=10)
    together = local.generate([long, short], sampling)
    alone = [local.generate([p], sampling)[0] for p in (long, short)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


def test_shared_prompt_head_is_prefilled_once_with_the_same_result(local: LocalBackend) -> None:
    """Agent prompts share the template's instructions (and a GRPO group its whole prompt): the
    shared head is prefilled once; greedy tokens and log-probs are those of separate prefills."""
    from shared.protocol import get_template

    template = get_template("search_r1")
    questions = ["Who wrote Hamlet?", "Which river flows through Cairo?", "Who wrote Hamlet?"]
    prompts = [local.apply_chat_template(template.build_messages(q)) for q in questions]
    assert local._shared_prefix(prompts) > 100
    sampling = SamplingParams(max_new_tokens=12)
    shared = local.generate(prompts, sampling)
    saved = local.settings.min_shared_prefix
    local.settings.min_shared_prefix = 10**9
    try:
        assert local._shared_prefix(prompts) == 0
        separate = local.generate(prompts, sampling)
    finally:
        local.settings.min_shared_prefix = saved
    assert [g.token_ids for g in shared] == [g.token_ids for g in separate]
    assert shared[0].token_ids == shared[2].token_ids
    for a, b in zip(shared, separate, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-3


def test_stop_string_ends_generation(local: LocalBackend) -> None:
    prompt = local.encode("Write the tag <search> then a query then </search>. Here: <search> capital of France")
    [gen] = local.generate([prompt], SamplingParams(max_new_tokens=40, stop=["</search>", "\n"]))
    assert gen.finish_reason in ("stop", "length")
    if gen.stop_string is not None:
        assert gen.text.rstrip().endswith(gen.stop_string.strip()) or gen.stop_string == "\n"
        assert gen.text.count(gen.stop_string) == 1


def test_openai_backend_round_trips_through_a_real_server(openai_server: Proc, smollm2_path: Path) -> None:
    backend = get_backend(LLMSettings(backend="openai", base_url=openai_server.url, model=str(smollm2_path),
                                      timeout_s=120, max_concurrency=2))
    texts = backend.chat([QUESTION, [{"role": "user", "content": "Say hello."}]], SamplingParams(max_new_tokens=20))
    assert len(texts) == 2
    assert all(t.strip() for t in texts)
    assert "paris" in texts[0].lower()


def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="local, openai"):
        get_backend(LLMSettings.model_construct(backend="nope"))  # type: ignore[arg-type]


def test_missing_model_names_the_fix() -> None:
    from shared.models import ModelNotFound, resolve

    with pytest.raises(ModelNotFound, match="smollm2"):
        resolve("/no/such/model")
