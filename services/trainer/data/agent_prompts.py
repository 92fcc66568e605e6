"""Named prompt templates of the multi-agent cold start (MaskSearch's planner -> rewriter -> observer).

Each agent has a registry of templates (``get_agent_prompt(role, name)``; an unknown name raises
``ValueError`` listing the valid ones), chosen by name in :class:`~services.trainer.data.coldstart_agents.AgentsConfig`.
A template has one text for RAMP tasks (a passage with ``[mask]`` spans) and one for QA questions; counts
(masks, sub-questions, query words) are parameters, never written into the text.

Fields each role's texts are formatted with:

- planner:  ``task`` (the masked passage or the question), ``n_masks``, ``span_word``, ``max_sub``
- rewriter: ``sub_question``, ``query_words``
- observer: ``task``, ``steps`` (every sub-question with its retrieved documents), ``n_masks``, ``span_word``

What each role must answer with (the parsers of :mod:`~services.trainer.data.coldstart_agents` read it):
planner ``Q1: ...`` one per line; rewriter ``Query: ...``; observer ``Clue 1: ...`` per search, then
``Answer: ...`` (RAMP: the spans in mask order separated by `` ; ``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AgentRole = Literal["planner", "rewriter", "observer"]
TaskKind = Literal["ramp", "qa"]


@dataclass(frozen=True)
class AgentPrompt:
    """One agent's prompt: a ``str.format`` pattern per task kind, sent as the user message."""

    name: str
    role: AgentRole
    ramp: str
    qa: str

    def messages(self, kind: TaskKind, **fields: object) -> list[dict[str, str]]:
        return [{"role": "user", "content": (self.ramp if kind == "ramp" else self.qa).format(**fields)}]


AGENT_PROMPTS: dict[AgentRole, dict[str, AgentPrompt]] = {"planner": {}, "rewriter": {}, "observer": {}}


def register_agent_prompt(prompt: AgentPrompt) -> AgentPrompt:
    AGENT_PROMPTS[prompt.role][prompt.name] = prompt
    return prompt


def get_agent_prompt(role: AgentRole, name: str) -> AgentPrompt:
    try:
        return AGENT_PROMPTS[role][name]
    except KeyError:
        raise ValueError(f"unknown {role} prompt {name!r}; valid: {', '.join(sorted(AGENT_PROMPTS[role]))}") from None


register_agent_prompt(AgentPrompt(
    name="masksearch", role="planner",
    ramp=("You plan web searches. The passage below has {n_masks} hidden {span_word}, each written as [mask]. "
          "For each [mask], in order, write one short question whose answer is the hidden text. Write exactly "
          "{n_masks} line(s), each starting with \"Q<number>:\", and nothing else.\n\nPassage: {task}\n"),
    qa=("You plan web searches. Split the question below into at most {max_sub} simple sub-questions, each "
        "answerable with one search, in the order they must be answered. Write one per line, each starting "
        "with \"Q<number>:\", and nothing else.\n\nQuestion: {task}\n"),
))

_REWRITE = ("Rewrite the question as a short keyword query for a search engine, at most {query_words} words. "
            "Reply with one line: \"Query: <the query>\".\n\nQuestion: {sub_question}\n")
register_agent_prompt(AgentPrompt(name="masksearch", role="rewriter", ramp=_REWRITE, qa=_REWRITE))

register_agent_prompt(AgentPrompt(
    name="masksearch", role="observer",
    ramp=("You read search results to fill the {n_masks} hidden {span_word} ([mask]) of a passage.\n\n"
          "Passage: {task}\n\n{steps}\n"
          "For each search, write one line \"Clue <number>: <the fact from its results that answers it>\". "
          "Then write one line \"Answer: \" followed by the {n_masks} hidden {span_word} in the order of the "
          "masks, separated by \" ; \".\n"),
    qa=("You read search results to answer a question.\n\nQuestion: {task}\n\n{steps}\n"
        "For each search, write one line \"Clue <number>: <the fact from its results that answers it>\". "
        "Then write one line \"Answer: <a short answer, a few words>\".\n"),
))
