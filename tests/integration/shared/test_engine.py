"""The continuous engine on the embedded SmolLM2 (float32): KV kept across turns, rows joining and leaving.

Exactness: every generated token's log-prob equals the one a separate forward pass over the whole
sequence gives, whether the sequence decoded alone or in a batch with others of other lengths, after
its row was swapped, its head copied from another row, or its cache cut back to a shorter prefix.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator

import pytest

from shared.config import LLMSettings
from shared.engine import ContinuousEngine
from shared.llm import Generation, LocalBackend, SamplingParams
from shared.protocol import get_template

pytestmark = pytest.mark.slow

QUESTIONS = ["Who wrote Hamlet?", "Which river flows through Cairo?", "What is the capital of France?"]
OBSERVATION = "\n<information>Doc 1(Title: Notes) The answer is in the documents above.</information>\n"


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LocalBackend(LLMSettings(model="smollm2", dtype="float32", max_batch_size=4))
    torch.set_num_threads(threads)


def drain(engine: ContinuousEngine) -> dict[Hashable, Generation]:
    out: dict[Hashable, Generation] = {}
    while engine.busy():
        out.update(engine.step())
    return out


def assert_exact(backend: LocalBackend, context: list[int], gen: Generation) -> None:
    assert gen.token_ids and len(gen.token_ids) == len(gen.logprobs)
    reference = backend.sequence_logprobs(context, gen.token_ids)
    assert max(abs(a - b) for a, b in zip(reference, gen.logprobs, strict=True)) < 1e-3


def prompts(backend: LocalBackend) -> list[list[int]]:
    template = get_template("search_r1")
    return [backend.apply_chat_template(template.build_messages(q)) for q in QUESTIONS]


def two_turns(backend: LocalBackend, engine: ContinuousEngine, keys: list[int]) -> None:
    """Turn 1 for every key, then turn 2 after an observation, checking each turn against a full forward."""
    heads = prompts(backend)
    for k in keys:
        engine.submit(k, heads[k], SamplingParams(max_new_tokens=6 + 3 * k, temperature=1.0, seed=k))
    first = drain(engine)
    observation = backend.encode(OBSERVATION)
    contexts = {}
    for k in keys:
        assert_exact(backend, heads[k], first[k])
        contexts[k] = heads[k] + first[k].token_ids + observation
        engine.submit(k, contexts[k], SamplingParams(max_new_tokens=8, temperature=1.0, seed=10 + k))
    second = drain(engine)
    for k in keys:
        assert_exact(backend, contexts[k], second[k])


def test_second_turn_alone_prefills_only_the_new_tokens_and_stays_exact(backend: LocalBackend) -> None:
    engine = backend.engine(slots=1)
    two_turns(backend, engine, [0])
    heads = prompts(backend)
    # the second turn reused the whole first turn: only its prompt and the observation were prefilled
    assert engine.prefilled <= len(heads[0]) + len(backend.encode(OBSERVATION)) + 1
    assert engine.reused >= len(heads[0])


def test_batched_turns_of_different_lengths_are_exact(backend: LocalBackend) -> None:
    engine = backend.engine(slots=3)
    two_turns(backend, engine, [0, 1, 2])
    assert engine.reused > 0  # the template's instructions were shared between rows


def test_a_sequence_joins_a_running_batch_and_rows_are_swapped(backend: LocalBackend) -> None:
    """"short" ends first and waits (as for a search) in row 1; "late" joins in row 2 and is swapped into
    row 1 so the decoding rows stay 0..n-1; "short"'s next turn then runs from row 2."""
    heads = prompts(backend)
    engine = backend.engine(slots=3)
    engine.submit("long", heads[0], SamplingParams(max_new_tokens=14))
    engine.submit("short", heads[1], SamplingParams(max_new_tokens=2))
    got: dict[Hashable, Generation] = {}
    while "short" not in got:
        got.update(engine.step())
    engine.submit("late", heads[2], SamplingParams(max_new_tokens=5))
    got.update(drain(engine))
    assert engine.seqs["short"].slot == 2  # moved out of the decoding block
    for key, head in (("long", heads[0]), ("short", heads[1]), ("late", heads[2])):
        assert_exact(backend, head, got[key])
    # the same greedy tokens as each prompt alone
    alone = [backend.generate([h], SamplingParams(max_new_tokens=n))[0] for h, n in ((heads[0], 14), (heads[2], 5))]
    assert [got["long"].token_ids, got["late"].token_ids] == [g.token_ids for g in alone]
    context = heads[1] + got["short"].token_ids + backend.encode(OBSERVATION)
    engine.submit("short", context, SamplingParams(max_new_tokens=6, temperature=1.0, seed=4))
    assert_exact(backend, context, drain(engine)["short"])


def test_a_cut_generation_is_resubmitted_from_the_shorter_prefix(backend: LocalBackend) -> None:
    """The agent may keep fewer tokens than were generated (a fake observation tag cut off): the row goes back."""
    head = prompts(backend)[0]
    engine = backend.engine(slots=2)
    engine.submit("a", head, SamplingParams(max_new_tokens=10))
    first = drain(engine)["a"]
    kept = head + first.token_ids[:4] + backend.encode(OBSERVATION)
    engine.submit("a", kept, SamplingParams(max_new_tokens=6, temperature=1.0, seed=2))
    assert_exact(backend, kept, drain(engine)["a"])


def test_generate_through_the_engine_queues_prompts_beyond_its_rows(backend: LocalBackend) -> None:
    heads = prompts(backend)
    sampling = SamplingParams(max_new_tokens=6)
    many = backend.generate(heads + heads, sampling)  # 6 prompts, 4 rows: two wait for a free row
    assert [g.token_ids for g in many[:3]] == [g.token_ids for g in many[3:]]
    for head, gen in zip(heads + heads, many, strict=True):
        assert_exact(backend, head, gen)
