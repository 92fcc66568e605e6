"""Multi-agent cold start (MaskSearch): LLM agents write search trajectories, a judge keeps the correct ones.

One attempt per task (a RAMP sample or a QA ``train``-part question), run stage by stage over a chunk of
``batch_size`` attempts (every stage's LLM calls go out together)::

    plan        = planner(task)                       -> sub-questions q_1..q_m   (1 <= m <= max_sub_questions)
    query_i     = rewriter(q_i)                       -> one search query per sub-question
    docs_i      = retriever(query_i, topk)            the real /retrieve over HTTP
    clues, ans  = observer(task, (q_i, docs_i)_i)     -> one clue per search, the final answer (RAMP: the spans)
    kept        = judge(ans vs gold) >= min_score     the judge service, any method (RAMP: every span)
    record      = <think> plan </think>\\n<search> query_1 </search> | <information> docs_1 </information>
                  | <think> clue_1 next: q_2 </think>\\n<search> query_2 </search> | ... | <think> clue_m </think>
                  \\n<answer> ans </answer>

The record is an :class:`~services.trainer.data.records.SFTRecord` in the scripted cold start's exact format
(the same prompt messages, ``policy`` segments for thoughts, searches and answer, ``observation`` segments
for the documents the retriever really returned, formatted by the task's protocol template), so SFT reads
both alike. Every LLM output is parsed by a total function: junk (no sub-question, no query, no answer, the
wrong number of spans) or a failed LLM call rejects the attempt at that stage and is counted, never raised.
Prompts are named templates (:mod:`services.trainer.data.agent_prompts`). The LLM is any OpenAI-compatible
server (``shared.llm.OpenAIBackend``: SGLang in production, ``transformers serve`` locally).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.trainer.data.agent_prompts import AgentRole, TaskKind, get_agent_prompt
from services.trainer.data.masking import RampSample, fill_masks, ramp_messages, template_name
from services.trainer.data.records import Segment, SFTRecord, validate_record
from shared.client import JudgeClient, ServiceCallError
from shared.confine import ServiceURL
from shared.llm import LLMBackend, SamplingParams
from shared.metrics import gold_answers, keep_threshold
from shared.progress import progress_bar
from shared.protocol import find_blocks, format_documents, get_template, split_answer_spans
from shared.schemas import MAX_TEXT_CHARS, Hit, JudgeMethod

log = logging.getLogger(__name__)

Search = Callable[[list[str], int], list[list[Hit]]]  # queries, top-k -> hits per query
STAGES = ("llm_error", "planner", "rewriter", "observer", "judge")  # where an attempt can be rejected


class AgentLLM(BaseModel):
    """The OpenAI-compatible server the three agents talk to (its bearer token is not part of a config)."""

    model_config = ConfigDict(extra="forbid")

    base_url: ServiceURL | None = None  # e.g. http://sglang:30000 (a job: None -> the trainer's TRAINER_LLM_URL)
    model: str = Field(default="smollm2", min_length=1, max_length=256)  # the served model's name
    temperature: float = Field(default=0.3, ge=0.0, le=2.0)  # every agent's sampling temperature
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=128, ge=8, le=2048)  # per agent call
    seed: int | None = 0  # sent with every call (reproducible where the server honours it)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)  # per HTTP request
    max_retries: int = Field(default=2, ge=0, le=8)  # capped, backed-off retries (shared.client)
    max_concurrency: int = Field(default=8, ge=1, le=256)  # requests in flight at once


class AgentsConfig(BaseModel):
    """``method: "agents"`` of a cold start: the LLM, the agents' prompt names, the judge and the size limits."""

    model_config = ConfigDict(extra="forbid")

    llm: AgentLLM = Field(default_factory=AgentLLM)
    planner: str = "masksearch"  # agent_prompts names, one per role
    rewriter: str = "masksearch"
    observer: str = "masksearch"
    max_sub_questions: int = Field(default=3, ge=1, le=8)  # a plan is cut to it (searches per trajectory)
    query_words: int = Field(default=16, ge=2, le=64)  # a rewritten query is cut to it
    thought_words: int = Field(default=48, ge=4, le=400)  # a sub-question or clue in a thought is cut to it
    doc_words: int = Field(default=60, ge=8, le=400)  # each document as the observer reads it
    judge_url: ServiceURL | None = None  # the judge service (a job: None -> the trainer's TRAINER_JUDGE_URL)
    judge_method: JudgeMethod = "llm"  # llm | em | f1 | acc | cover_em | recall
    min_score: float | None = Field(default=None, ge=0.0, le=1.0)  # kept at >=; None: 0.5 for llm, 1.0 for rules
    batch_size: int = Field(default=8, ge=1, le=256)  # attempts whose stages run together

    @field_validator("planner", "rewriter", "observer")
    @classmethod
    def _known_prompt(cls, v: str, info: ValidationInfo) -> str:
        role: AgentRole = info.field_name  # type: ignore[assignment]
        get_agent_prompt(role, v)  # an unknown name is a 422 listing the valid ones
        return v

    @property
    def threshold(self) -> float:
        return keep_threshold(self.min_score, llm_judge=self.judge_method == "llm")


# --------------------------------------------------------------------------- one attempt


@dataclass
class Attempt:
    """One task through the agents: filled in stage by stage; ``rejected`` names the stage that stopped it."""

    kind: TaskKind
    id: str  # the record id: "ramp:<sample id>" | "<dataset>:<qid>"
    source: str  # "ramp" | the QA dataset
    task: str  # what the agents read: the masked passage or the question
    messages: list[dict[str, str]]  # the policy's prompt in the record (the protocol template's messages)
    ground_truth: list[str]  # RAMP: the spans in mask order; QA: the gold answers
    template: str  # protocol template of the record's observations
    sample: RampSample | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    sub_questions: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    hits: list[list[Hit]] = field(default_factory=list)
    clues: list[str | None] = field(default_factory=list)
    answer: str | None = None  # what goes inside <answer>
    spans: list[str] = field(default_factory=list)  # RAMP: the observer's spans
    score: float | None = None  # the judge's (RAMP: the lowest span score)
    rejected: str | None = None  # one of STAGES
    raw: dict[str, str] = field(default_factory=dict)  # each agent's output (cut), for the report

    @property
    def n_masks(self) -> int:
        return self.sample.n_masks if self.sample is not None else 0

    @property
    def live(self) -> bool:
        return self.rejected is None


def ramp_attempt(sample: RampSample) -> Attempt:
    return Attempt(kind="ramp", id=f"ramp:{sample.id}", source="ramp", task=sample.masked,
                   messages=ramp_messages(sample), ground_truth=list(sample.spans),
                   template=template_name(sample.answer_format), sample=sample,
                   meta={"source_id": sample.source_id, "n_masks": sample.n_masks})


def qa_attempt(row: dict[str, Any], dataset: str) -> Attempt:
    question = " ".join(str(row["question"]).split())
    return Attempt(kind="qa", id=f"{dataset}:{row['id']}", source=dataset, task=question,
                   messages=get_template("search_r1").build_messages(question), ground_truth=gold_answers(row),
                   template="search_r1", meta={"qid": row["id"]})


# --------------------------------------------------------------------------- parsing (total functions)

_PROTOCOL_TAG = re.compile(r"</?\s*(think|search|answer|information|result)\s*>", re.IGNORECASE)
_NUMBERED = re.compile(r"^\s*(?:[-*]\s*)?(?:(?:sub-?)?q(?:uestion)?\s*\d*|\d+)\s*[:.)]\s*(.+)$", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:\*\*)?\s*({label})\s*(\d*)\s*(?:\*\*)?\s*[:\-]\s*(.*)$", re.IGNORECASE)


def clean(text: str, max_words: int) -> str:
    """``text`` without protocol tags or markdown emphasis, on one line, cut to ``max_words`` words."""
    text = _PROTOCOL_TAG.sub(" ", text).replace("**", " ")
    return " ".join(text.split()[:max_words]).strip(" \"'`")


def _has_words(text: str) -> bool:
    return bool(re.search(r"\w\w", text))


def parse_sub_questions(text: str, limit: int, max_words: int) -> list[str]:
    """The planner's ``Q1: ...`` lines (``Q:``, ``Question 2:`` and numbered lines count too), in order,
    deduplicated; a reply that is a single question without a label is that question. At most ``limit``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    found = [m.group(1) for ln in lines if (m := _NUMBERED.match(ln))]
    if not found and len(lines) == 1 and lines[0].strip().endswith("?"):
        found = lines
    out: list[str] = []
    for q in found:
        q = clean(q, max_words)
        if _has_words(q) and q.lower() not in {o.lower() for o in out}:
            out.append(q)
    return out[:limit]


def parse_query(text: str, max_words: int) -> str | None:
    """The rewriter's ``Query: ...`` (else its first non-empty line), cut to ``max_words``; None when empty."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    labelled = re.compile(_LABEL.pattern.format(label="query|search query"), re.IGNORECASE)
    found = [m.group(3) for ln in lines if (m := labelled.match(ln))]
    chosen = next((q for q in found if q.strip()), "") if found else (lines[0] if lines else "")
    query = clean(chosen, max_words)
    return query if _has_words(query) else None


_ANSWER_LABEL = re.compile(r"\b(?:final\s+|the\s+)?answer(?:\s+is)?\s*:", re.IGNORECASE)


def parse_observer(text: str, n_steps: int, max_words: int) -> tuple[list[str | None], str | None]:
    """The observer's ``Clue i:`` lines (None where one is missing) and the text after its last ``Answer:``
    (``The answer is:`` and ``Final answer:`` count, also after a clue on the same line) to the end of that
    line, else an ``<answer>`` block if it wrote one; the answer is None when there is none or it is empty."""
    clues: list[str | None] = [None] * n_steps
    answer: str | None = None
    clue_label = re.compile(_LABEL.pattern.format(label="clue"), re.IGNORECASE)
    for ln in text.splitlines():
        labels = list(_ANSWER_LABEL.finditer(ln))
        if labels:
            answer = ln[labels[-1].end():]
            ln = ln[:labels[0].start()]
        m = clue_label.match(ln)
        if m is None:
            continue
        number, content = m.group(2), clean(m.group(3), max_words)
        i = int(number) - 1 if number else next((j for j, c in enumerate(clues) if c is None), n_steps)
        if 0 <= i < n_steps and _has_words(content):
            clues[i] = content
    if answer is None:
        blocks = find_blocks(text, "answer")
        answer = blocks[-1].content if blocks else None
    answer = clean(answer, 400) if answer is not None else None
    return clues, answer or None


# --------------------------------------------------------------------------- the record


def _think(*parts: str) -> str:
    return "<think> " + " ".join(p.strip() for p in parts if p.strip()) + " </think>\n"


def assemble(attempt: Attempt) -> SFTRecord:
    """The SFT record of a finished attempt (thoughts, searches, real observations, answer); see the module
    docstring. Raises ``ValueError`` when the attempt has no answer or its steps do not line up."""
    if attempt.answer is None or not attempt.queries:
        raise ValueError(f"{attempt.id}: no answer or no search to assemble")
    if not len(attempt.queries) == len(attempt.hits) == len(attempt.sub_questions):
        raise ValueError(f"{attempt.id}: sub-questions, queries and results do not line up")
    template = get_template(attempt.template)
    plan = " ".join(f"({i + 1}) {q}" for i, q in enumerate(attempt.sub_questions))
    clues = attempt.clues + [None] * (len(attempt.queries) - len(attempt.clues))
    segments: list[Segment] = []
    thought = _think("I need to find out:", plan)
    for i, (query, hits) in enumerate(zip(attempt.queries, attempt.hits, strict=True)):
        segments.append(Segment("policy", f"{thought}<search> {query} </search>"))
        segments.append(Segment("observation", template.format_observation([h.model_dump() for h in hits])))
        clue = clues[i] or f"I have read the results for \"{query}\"."
        if i + 1 < len(attempt.queries):
            thought = _think(clue, f"Next: {attempt.sub_questions[i + 1]}")
        else:
            thought = _think(clue, "Every mask is filled." if attempt.kind == "ramp" and attempt.n_masks > 1 else "")
    segments.append(Segment("policy", f"{thought}<answer> {attempt.answer} </answer>"))
    record = SFTRecord(
        id=attempt.id, messages=[dict(m) for m in attempt.messages], segments=segments,
        ground_truth=list(attempt.ground_truth), source=attempt.source,
        meta={**attempt.meta, "method": "agents", "sub_questions": attempt.sub_questions,
              "queries": attempt.queries, "clues": clues, "judge_score": attempt.score,
              "retrieved_ids": [[h.document.id for h in hits] for hits in attempt.hits]})
    validate_record(record)
    return record


# --------------------------------------------------------------------------- the agents


@dataclass
class AgentTeam:
    """Planner, rewriter and observer on one LLM backend, the retriever's ``search`` and the judge."""

    config: AgentsConfig
    backend: LLMBackend  # chat() only: shared.llm.OpenAIBackend in a job
    search: Search
    judge_client: JudgeClient
    topk: int  # documents per search
    exclude_source: bool = False  # RAMP: drop the masked passage itself from the results
    stats: Counter[str] = field(default_factory=Counter)  # LLM calls and errors, judge errors

    @property
    def sampling(self) -> SamplingParams:
        llm = self.config.llm
        return SamplingParams(max_new_tokens=llm.max_new_tokens, temperature=llm.temperature, top_p=llm.top_p,
                              seed=llm.seed)

    def run(self, attempts: list[Attempt]) -> list[Attempt]:
        """Every stage over ``attempts`` (in place); returns them, each accepted or ``rejected`` at a stage."""
        for stage in (self.plan, self.rewrite, self.retrieve, self.observe, self.judge):
            stage([a for a in attempts if a.live])
        return attempts

    # -- LLM calls ---------------------------------------------------------------------
    def _chat(self, conversations: list[list[dict[str, str]]]) -> list[str | None]:
        """One reply per conversation; a call that fails after the client's retries gives None."""
        self.stats["llm_calls"] += len(conversations)
        if not conversations:
            return []
        try:
            return list(self.backend.chat(conversations, self.sampling))
        except ServiceCallError:
            pass
        out: list[str | None] = []
        for c in conversations:  # one by one, so one bad call costs only its own attempt
            try:
                out.append(self.backend.chat([c], self.sampling)[0])
            except ServiceCallError as exc:
                log.warning("coldstart agents: LLM call failed: %s", exc)
                self.stats["llm_errors"] += 1
                out.append(None)
        return out

    def _fields(self, a: Attempt) -> dict[str, Any]:
        n = max(1, a.n_masks)
        return {"task": a.task[:MAX_TEXT_CHARS], "n_masks": n, "span_word": "span" if n == 1 else "spans",
                "max_sub": self.config.max_sub_questions}

    # -- stages ------------------------------------------------------------------------
    def plan(self, attempts: list[Attempt]) -> None:
        prompt = get_agent_prompt("planner", self.config.planner)
        replies = self._chat([prompt.messages(a.kind, **self._fields(a)) for a in attempts])
        for a, reply in zip(attempts, replies, strict=True):
            if reply is None:
                a.rejected = "llm_error"
                continue
            a.raw["planner"] = reply[:1000]
            a.sub_questions = parse_sub_questions(reply, self.config.max_sub_questions, self.config.thought_words)
            if not a.sub_questions:
                a.rejected = "planner"

    def rewrite(self, attempts: list[Attempt]) -> None:
        prompt = get_agent_prompt("rewriter", self.config.rewriter)
        asks = [(a, q) for a in attempts for q in a.sub_questions]
        replies = self._chat([prompt.messages(a.kind, sub_question=q, query_words=self.config.query_words)
                              for a, q in asks])
        for (a, _), reply in zip(asks, replies, strict=True):
            if a.rejected:
                continue
            if reply is None:
                a.rejected = "llm_error"
                continue
            a.raw["rewriter"] = (a.raw.get("rewriter", "") + reply[:300] + "\n")[-1000:]
            query = parse_query(reply, self.config.query_words)
            if query is None:
                a.rejected = "rewriter"
            else:
                a.queries.append(query)

    def retrieve(self, attempts: list[Attempt]) -> None:
        queries = [q for a in attempts for q in a.queries]
        extra = 1 if self.exclude_source else 0
        results = iter(self.search(queries, self.topk + extra))
        for a in attempts:
            for _ in a.queries:
                hits = next(results)
                if self.exclude_source and a.sample is not None:
                    hits = [h for h in hits if h.document.id != a.sample.source_id]
                a.hits.append(hits[:self.topk])

    def _steps_text(self, a: Attempt) -> str:
        words = self.config.doc_words
        parts = []
        for i, (q, hits) in enumerate(zip(a.sub_questions, a.hits, strict=True)):
            docs = [{"title": h.document.contents.partition("\n")[0].strip().strip('"'),
                     "text": " ".join(h.document.contents.partition("\n")[2].split()[:words])} for h in hits]
            parts.append(f"Search {i + 1}: {q}\nResults:\n{format_documents(docs)}")
        return "\n".join(parts)

    def observe(self, attempts: list[Attempt]) -> None:
        prompt = get_agent_prompt("observer", self.config.observer)
        replies = self._chat([prompt.messages(a.kind, steps=self._steps_text(a), **self._fields(a))
                              for a in attempts])
        for a, reply in zip(attempts, replies, strict=True):
            if reply is None:
                a.rejected = "llm_error"
                continue
            a.raw["observer"] = reply[:1000]
            a.clues, answer = parse_observer(reply, len(a.queries), self.config.thought_words)
            if answer is None:
                a.rejected = "observer"
            elif a.sample is None:
                a.answer = answer
            else:
                spans = split_answer_spans(answer)
                if len(spans) != a.sample.n_masks or not all(spans):
                    a.rejected = "observer"  # the wrong number of spans: it cannot fill the masks
                    continue
                a.spans = spans
                a.answer = " ; ".join(spans) if a.sample.answer_format == "spans" else fill_masks(a.task, spans)

    def judge(self, attempts: list[Attempt]) -> None:
        """Score each answer with the judge service (RAMP: each span against its own gold); an attempt is kept
        when its (lowest) score reaches the threshold. A judge call that fails rejects its attempts."""
        items: list[tuple[Attempt, dict[str, Any]]] = []
        for a in attempts:
            if a.sample is not None:
                items += [(a, {"question": f"{a.task} (mask {i + 1})"[:MAX_TEXT_CHARS], "gold": [gold],
                               "prediction": span[:MAX_TEXT_CHARS]})
                          for i, (gold, span) in enumerate(zip(a.sample.spans, a.spans, strict=True))]
            else:
                items.append((a, {"question": a.task[:MAX_TEXT_CHARS], "gold": a.ground_truth[:64] or [""],
                                  "prediction": (a.answer or "")[:MAX_TEXT_CHARS]}))
        scores: dict[int, float] = {}
        chunk = 64
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            try:
                got = self.judge_client.judge([body for _, body in part], self.config.judge_method).scores
            except ServiceCallError as exc:
                log.warning("coldstart agents: judge call failed: %s", exc)
                self.stats["judge_errors"] += len(part)
                for a, _ in part:
                    a.rejected = "judge"
                continue
            for (a, _), score in zip(part, got, strict=True):
                scores[id(a)] = min(scores.get(id(a), score), score)
        for a in attempts:
            if a.rejected:
                continue
            a.score = scores.get(id(a))
            if a.score is None or a.score < self.config.threshold:
                a.rejected = "judge"


# --------------------------------------------------------------------------- the run


def agent_records(attempts: Sequence[Attempt], team: AgentTeam,
                  ) -> tuple[list[SFTRecord], Counter[str], list[dict[str, Any]]]:
    """Run ``attempts`` through ``team`` in chunks; returns the kept records, the counts (``<source>_tried`` /
    ``_kept``, ``rejected_<stage>``, LLM calls) and one line per attempt (what each agent said, the verdict)."""
    records: list[SFTRecord] = []
    stats: Counter[str] = Counter()
    lines: list[dict[str, Any]] = []
    size = team.config.batch_size
    for start in progress_bar(range(0, len(attempts), size), desc="coldstart agents", unit="batch", disable=None):
        for a in team.run(list(attempts[start:start + size])):
            stats[f"{a.source}_tried"] += 1
            if a.live:
                try:
                    records.append(assemble(a))
                except ValueError:
                    a.rejected = "observer"
            if a.live:
                stats[f"{a.source}_kept"] += 1
            else:
                stats[f"rejected_{a.rejected}"] += 1
            lines.append({"id": a.id, "accepted": a.live, "rejected": a.rejected, "score": a.score,
                          "sub_questions": a.sub_questions, "queries": a.queries, "answer": a.answer,
                          "ground_truth": a.ground_truth, "raw": a.raw})
    stats.update(team.stats)
    return records, stats, lines

