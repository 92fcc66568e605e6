"""One trajectory's record and the environment's texts: what the agent's state machine works on.

:class:`Trajectory` is the single record per episode (CONVENTIONS.md §6): the request, the token record
(policy tokens with mask 1 and their log-probs, observation tokens with mask 0 and log-prob 0.0), the
response text by segment, and the loop's counters. The environment's texts (baseline prompts, the
invalid-action hint, the final nudge, a failed search) are named here, never inlined in loop code.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from shared.llm import Generation
from shared.protocol import Template
from shared.schemas import EpisodeRequest

# --------------------------------------------------------------------------- named prompts and observations

BASELINE_PROMPTS: dict[str, str] = {
    "direct": (
        "Answer the given question from your own knowledge with a short answer (a name, a date, a number or a "
        "few words), inside <answer> and </answer>, without explanations. Question: {question}\n"
    ),
    "rag": (
        "Answer the given question using the documents below, with a short answer (a name, a date, a number "
        "or a few words), inside <answer> and </answer>, without explanations.\n"
        "Documents:\n{documents}\nQuestion: {question}\n"
    ),
}
ANSWER_PREFILL = "<answer>"  # direct / rag: the assistant turn starts inside the answer block
# Environment texts never contain tag literals: a "<answer>" inside an observation would be parsed as one.
INVALID_ACTION = ("My previous action is invalid. If I want to search, I should put the query between the search "
                  "tags. If I want to give the final answer, I should put it between the answer tags. "
                  "Let me try again.")
FINAL_NUDGE = "The search budget is used up. Give the final answer now, between the answer tags."
SEARCH_FAILED = "The search failed ({error}); no documents were retrieved."
NO_DOCUMENTS = "No documents were found for this query."
MIN_TURN_TOKENS = 8  # a turn needs at least this much response budget left, else the episode ends
SCORE_METRICS = ("em", "acc", "cover_em", "f1", "recall")  # shared.metrics names; definitions in METRIC_DEFINITIONS


class AgentState(enum.Enum):
    GENERATE = "generate"  # waiting for the policy's next turn
    SEARCH = "search"  # waiting for the search backend
    DONE = "done"


@dataclass
class Trajectory:
    """One episode's whole state: the request, the token record and the loop's counters."""

    request: EpisodeRequest
    template: Template
    state: AgentState = AgentState.GENERATE
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)  # response text, one entry per turn / observation
    prefill: str = ""  # text already in the prompt that belongs to the answer (direct / rag)
    turns: int = 0
    searches: int = 0
    search_failures: int = 0
    invalid_actions: int = 0
    final_turn: bool = False  # the next generation must answer
    forced_answer: bool = False  # the environment opened the answer block for the final turn (mask 0)
    pending_query: str | None = None
    finish_reason: str = ""
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def remaining(self) -> int:
        return self.request.max_total_tokens - len(self.response_ids)

    @property
    def text(self) -> str:
        return "".join(self.segments)

    def finish(self, reason: str) -> None:
        self.state, self.finish_reason = AgentState.DONE, reason

    def add_policy(self, gen: Generation, text: str) -> None:
        self.response_ids += gen.token_ids
        self.loss_mask += [1] * len(gen.token_ids)
        self.logprobs += gen.logprobs
        self.segments.append(text)

    def add_observation(self, ids: list[int], text: str) -> None:
        self.response_ids += ids
        self.loss_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.segments.append(text)
