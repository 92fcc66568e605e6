"""The multi-agent cold start's pure parts: parsing what the agents say (junk included) and assembling an
attempt into an SFT record in the scripted cold start's format."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.data.agent_prompts import get_agent_prompt
from services.trainer.data.coldstart import ColdStartConfig
from services.trainer.data.coldstart_agents import (
    AgentsConfig,
    assemble,
    parse_observer,
    parse_query,
    parse_sub_questions,
    qa_attempt,
    ramp_attempt,
)
from services.trainer.data.masking import RampSample
from services.trainer.data.records import validate_record
from shared.schemas import Document, Hit

JUNK = ["", "   \n\n", "<|im_end|>", "I don't know.", "<answer></answer>", "Q1:", "Answer:", "### ### ###",
        "\x00\x01", "Clue 99: far away", "1." * 500]


def hit(doc_id: str, title: str, text: str) -> Hit:
    return Hit(document=Document(id=doc_id, contents=f"\"{title}\"\n{text}"), score=1.0)


def sample() -> RampSample:
    text = "Paris is the capital of France and lies on the Seine."
    masked = "Paris is the capital of [mask] and lies on the [mask]."
    return RampSample(id="wiki-1#0", source_id="wiki-1", title="Paris", text=text, masked=masked,
                      spans=["France", "Seine"], kinds=["entity", "entity"], offsets=[[24, 30], [46, 51]], n_masks=2)


def test_sub_questions_come_from_numbered_lines_in_order() -> None:
    text = "Sure! Here is the plan:\nQ1: What country is Paris the capital of?\n2) Which river flows through " \
           "<search>Paris</search>?\n- Q3: What country is Paris the capital of?\nQ4: extra"
    assert parse_sub_questions(text, limit=3, max_words=20) == [
        "What country is Paris the capital of?", "Which river flows through Paris ?", "extra"]
    assert parse_sub_questions("Who wrote Hamlet?", 3, 20) == ["Who wrote Hamlet?"]  # one bare question
    assert parse_sub_questions("Q1: " + "word " * 100, 3, 5) == ["word word word word word"]


@pytest.mark.parametrize("junk", JUNK)
def test_junk_never_raises_and_gives_nothing_usable(junk: str) -> None:
    assert parse_sub_questions(junk, 3, 20) == [] or junk.startswith("1.")
    clues, answer = parse_observer(junk, 2, 20)
    assert len(clues) == 2 and all(c is None for c in clues)
    assert answer is None or junk == "I don't know."  # a reply without "Answer:" has no answer
    parse_query(junk, 8)  # total: any string in, a query or None out


def test_query_takes_the_labelled_line_without_tags() -> None:
    assert parse_query("Here you go.\nQuery: \"capital of <answer>France</answer>\"", 8) == "capital of France"
    assert parse_query("capital city France", 2) == "capital city"
    assert parse_query("Query:", 8) is None and parse_query("", 8) is None


def test_observer_gives_clues_by_number_and_the_last_answer() -> None:
    text = "Clue 2: The Seine flows through Paris.\n**Clue 1:** Paris is the capital of France.\n" \
           "Answer: Germany\nFinal answer: France ; Seine"
    clues, answer = parse_observer(text, 2, 20)
    assert clues == ["Paris is the capital of France.", "The Seine flows through Paris."]
    assert answer == "France ; Seine"
    assert parse_observer("reasoning... <answer> Paris </answer>", 1, 20)[1] == "Paris"
    assert parse_observer("Clue: Paris is in France. Answer: France", 1, 20) == (["Paris is in France."], "France")
    assert parse_observer("Clue: x\n\nThe answer is: Paris\nmore text", 1, 20)[1] == "Paris"


def test_assembled_record_has_the_scripted_format() -> None:
    a = ramp_attempt(sample())
    a.sub_questions = ["What country is Paris the capital of?", "Which river is Paris on?"]
    a.queries = ["Paris capital country", "Paris river"]
    a.hits = [[hit("wiki-2", "France", "Paris is the capital of France.")],
              [hit("wiki-3", "Seine", "The Seine flows through Paris.")]]
    a.clues = ["Doc 1 says Paris is the capital of France.", None]
    a.answer = "France ; Seine"
    record = assemble(a)
    validate_record(record)
    roles = [s.role for s in record.segments]
    assert roles == ["policy", "observation", "policy", "observation", "policy"]
    assert record.segments[0].text.startswith("<think> I need to find out: (1) What country")
    assert record.segments[0].text.endswith("</think>\n<search> Paris capital country </search>")
    assert record.segments[1].text == "\n\n<information>Doc 1(Title: France) Paris is the capital of France." \
                                      "</information>\n\n"
    assert "Next: Which river is Paris on?" in record.segments[2].text
    assert record.segments[-1].text.endswith("Every mask is filled. </think>\n<answer> France ; Seine </answer>")
    assert record.messages == sample().messages() and record.ground_truth == ["France", "Seine"]
    assert record.id == "ramp:wiki-1#0" and record.source == "ramp" and record.meta["method"] == "agents"
    assert record.meta["retrieved_ids"] == [["wiki-2"], ["wiki-3"]]

    q = qa_attempt({"id": "q1", "question": "Which  country is Paris in", "answer": "France"}, "hotpotqa")
    q.sub_questions, q.queries, q.hits, q.answer = ["Where is Paris?"], ["Paris"], [a.hits[0]], "France"
    qa = assemble(q)
    assert qa.messages[-1]["content"].endswith("Question: Which country is Paris in?\n")
    assert qa.segments[-1].text.endswith("<answer> France </answer>") and qa.ground_truth == ["France"]
    q.hits = []
    with pytest.raises(ValueError):
        assemble(q)


def test_config_is_bounded_and_names_known_prompts() -> None:
    assert get_agent_prompt("planner", "masksearch").role == "planner"
    with pytest.raises(ValidationError, match="unknown planner prompt 'nope'; valid: masksearch"):
        AgentsConfig(planner="nope")
    for bad in ({"max_sub_questions": 100}, {"llm": {"max_new_tokens": 100_000}}, {"llm": {"temperature": 9}},
                {"batch_size": 0}, {"llm": {"typo": 1}}):
        with pytest.raises(ValidationError):
            AgentsConfig.model_validate(bad)
    assert AgentsConfig().threshold == 0.5 and AgentsConfig(judge_method="cover_em").threshold == 1.0
    config = ColdStartConfig(retriever_url="http://r", method="agents")
    assert config.agents.llm.base_url is None  # a job fills it from the trainer's settings
    with pytest.raises(ValidationError):
        ColdStartConfig(retriever_url="http://r", method="llm")  # type: ignore[arg-type]
