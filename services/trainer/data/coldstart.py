"""Cold-start trajectories for SFT warm-up: scripted (no teacher model) or written by LLM agents.

``method: "scripted"`` (the default) is described here; ``method: "agents"`` is MaskSearch's multi-agent
cold start (planner -> rewriter -> observer on an OpenAI-compatible LLM, judge-filtered):
:mod:`services.trainer.data.coldstart_agents`. Both read the same RAMP samples and QA ``train`` parts,
search the same real retriever and write the same records; the report has the same keys for both
(``attempts``, ``accepted``, ``accept_rate``, ``trajectories_per_hour``, ``rejects``).

Every scripted trajectory searches a **real retriever** (``shared.client.RetrieverClient`` over HTTP), and
is kept only when what it read actually contains what it answers, so no record ever claims
knowledge it did not retrieve.

- **RAMP** (``ramp_records``): for each ``[mask]`` in order, the query is the words around it
  (other masks dropped); the thought quotes the retrieved sentence that holds the span. Kept only
  when every span occurs in the observations.
- **QA** (``qa_records``): questions with known supporting passages (HotpotQA, 2Wiki, MuSiQue),
  from the ``train`` part of the fixed split only (``shared.data.load_split``), never ``eval``.
  First query: the question; then the title of each supporting passage not yet retrieved. Kept
  only when a gold answer occurs in the observations. A yes/no question's answer is never in a
  document: with ``yes_no`` it is kept when every supporting passage was retrieved (the facts the
  comparison needs were read), and its thought names the passages compared; without, it is skipped.

Output: :class:`~services.trainer.data.records.SFTRecord` JSONL (policy / observation segments).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from services.trainer.data.coldstart_agents import (
    STAGES,
    AgentsConfig,
    AgentTeam,
    agent_records,
    qa_attempt,
    ramp_attempt,
)
from services.trainer.data.export import read_samples
from services.trainer.data.masking import RampSample, ramp_messages, template_name
from services.trainer.data.records import Segment, SFTRecord, write_records
from shared.client import JudgeClient, RetrieverClient
from shared.config import cache_dir
from shared.confine import InputFile, OutputDir, SafeName, ServiceURL
from shared.data import load_split, split_of
from shared.metrics import gold_answers, normalize_answer
from shared.progress import progress_bar
from shared.protocol import MASK_TOKEN, get_template
from shared.schemas import Hit, SearchMode

log = logging.getLogger(__name__)


class ColdStartConfig(BaseModel):
    method: Literal["scripted", "agents"] = "scripted"  # scripted trajectories | LLM agents + judge (``agents``)
    retriever_url: ServiceURL  # a running retriever (or the simulator's /retrieve facade)
    api_key: SecretStr | None = None  # its bearer token, if any
    agents: AgentsConfig = Field(default_factory=AgentsConfig)  # method "agents": LLM, prompt names, judge, sizes
    llm_api_key: SecretStr | None = None  # method "agents": the LLM server's bearer token, if any
    judge_api_key: SecretStr | None = None  # method "agents": the judge's bearer token, if any
    ramp_path: InputFile | None = None  # RAMP samples JSONL (a ramp job's ramp.jsonl)
    ramp_limit: int = Field(default=1000, ge=0, le=10_000_000)  # RAMP samples to try
    qa: list[str] = Field(default_factory=list, max_length=32)  # QA sets with supporting passages (their train part)
    qa_limit: int = Field(default=1000, ge=0, le=10_000_000)  # questions to try per QA set
    topk: int = Field(default=3, ge=1, le=20)  # documents per search
    mode: SearchMode | None = None  # dense | bm25 | hybrid (None: the retriever's default)
    exclude_source: bool = False  # RAMP: drop the masked passage itself from the results
    context_words: int = Field(default=8, ge=2, le=256)  # RAMP query: words on each side of the mask
    max_qa_searches: int = Field(default=3, ge=1, le=16)  # QA: the question + up to N-1 title searches
    yes_no: bool = False  # QA: keep yes/no questions whose supporting passages were all retrieved
    batch_size: int = Field(default=32, ge=1, le=1024)  # queries per /retrieve call
    out_dir: OutputDir | None = None  # default <cache>/coldstart/<name>
    name: SafeName = "default"
    seed: int = 0

    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else cache_dir() / "coldstart" / self.name


# --------------------------------------------------------------------------- text helpers


def mask_query(masked: str, index: int, context_words: int) -> str:
    """The words around mask ``index`` (0-based), other masks removed: a search query for it."""
    parts = masked.split(MASK_TOKEN)
    left = " ".join(parts[:index + 1]).split()[-context_words:]
    right = " ".join(parts[index + 1:]).split()[:context_words]
    return " ".join(left + right).strip()


def contains(haystack: str, needle: str) -> bool:
    """``needle`` verbatim in ``haystack``, or as a whole-word match after answer normalization."""
    if needle in haystack:
        return True
    n = normalize_answer(needle)
    return bool(n) and f" {n} " in f" {normalize_answer(haystack)} "


def snippet(text: str, needle: str, width: int = 40) -> str:
    """A few words of ``text`` around ``needle`` (for a thought that quotes its evidence).

    Short on purpose: the policy learns to write this quote, and every token of it is decoded in RL and eval."""
    at = text.find(needle)
    if at < 0:
        at = text.lower().find(needle.lower())
    if at < 0:
        return ""
    lo = max(0, at - width)
    hi = min(len(text), at + len(needle) + width)
    lo = text.find(" ", lo, at) + 1 if lo > 0 else 0
    cut = text.rfind(" ", at + len(needle), hi)
    hi = cut if hi < len(text) and cut > 0 else hi
    return " ".join(text[lo:hi].split())


def _hit_dicts(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    return [h.model_dump() for h in hits]


def _hit_text(hit: Hit) -> str:
    return hit.document.contents.partition("\n")[2] or hit.document.contents


class _Searcher:
    """Batched retrieval through the real client (chunks of ``batch_size`` queries)."""

    def __init__(self, config: ColdStartConfig):
        key = config.api_key.get_secret_value() if config.api_key else None
        self.client = RetrieverClient(config.retriever_url, key)
        self.config = config
        self.calls = 0
        self.queries = 0

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        out: list[list[Hit]] = []
        size = self.config.batch_size
        for i in range(0, len(queries), size):
            out.extend(self.client.retrieve(queries[i:i + size], topk=topk, mode=self.config.mode))
            self.calls += 1
        self.queries += len(queries)
        return out

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- RAMP


def ramp_trajectory(sample: RampSample, queries: list[str], results: list[list[Hit]],
                    ) -> SFTRecord | None:
    """The scripted trajectory of one sample, or ``None`` when a span was not retrieved."""
    template = get_template(template_name(sample.answer_format))
    n = sample.n_masks
    word = "span" if n == 1 else "spans"
    segments: list[Segment] = []
    thought = (f"<think> The passage has {n} masked {word}. I will search for each mask with the words "
               f"around it. </think>\n")
    for i, (query, hits) in enumerate(zip(queries, results, strict=True)):
        segments.append(Segment("policy", f"{thought}<search> {query} </search>"))
        observation = template.format_observation(_hit_dicts(hits))
        span = sample.spans[i]
        if not contains(observation, span):
            return None
        doc = next((j for j, h in enumerate(hits) if contains(h.document.contents, span)), None)
        if doc is None:
            return None  # only matched across document boundaries of the formatted observation
        evidence = snippet(_hit_text(hits[doc]), span) or span
        segments.append(Segment("observation", observation))
        thought = (f"<think> Doc {doc + 1} says \"{evidence}\", so mask {i + 1} is \"{span}\". </think>\n")
    final = "<think> Every mask is filled. </think>\n" if n > 1 else ""
    segments.append(Segment("policy", f"{thought}{final}<answer> {sample.answer} </answer>"))
    gt = [sample.answer] if sample.answer_format == "paragraph" else list(sample.spans)
    return SFTRecord(id=f"ramp:{sample.id}", messages=ramp_messages(sample), segments=segments,
                     ground_truth=gt, source="ramp",
                     meta={"source_id": sample.source_id, "n_masks": n, "queries": queries,
                           "retrieved_ids": [[h.document.id for h in hits] for hits in results],
                           "source_retrieved": any(h.document.id == sample.source_id for r in results for h in r)})


def ramp_records(samples: Sequence[RampSample], searcher: _Searcher, config: ColdStartConfig,
                 ) -> tuple[list[SFTRecord], Counter[str]]:
    stats: Counter[str] = Counter()
    records: list[SFTRecord] = []
    topk = config.topk + (1 if config.exclude_source else 0)
    for start in progress_bar(range(0, len(samples), config.batch_size), desc="coldstart ramp", unit="batch",
                              disable=None):
        chunk = samples[start:start + config.batch_size]
        queries = [[mask_query(s.masked, i, config.context_words) for i in range(s.n_masks)] for s in chunk]
        flat = searcher.search([q for qs in queries for q in qs], topk)
        pos = 0
        for sample, qs in zip(chunk, queries, strict=True):
            results = flat[pos:pos + len(qs)]
            pos += len(qs)
            if config.exclude_source:
                results = [[h for h in r if h.document.id != sample.source_id][:config.topk] for r in results]
            record = ramp_trajectory(sample, qs, results)
            stats["ramp_tried"] += 1
            if record is not None:
                stats["ramp_kept"] += 1
                records.append(record)
    return records, stats


# --------------------------------------------------------------------------- QA

_YES_NO = {"yes", "no"}


def _found_answer(observations: str, golds: Sequence[str]) -> str | None:
    return next((g for g in golds if contains(observations, g)), None)


def _yes_no_answer(row: dict[str, Any], steps: list[tuple[str, list[Hit]]]) -> str | None:
    """The yes/no gold of ``row`` when every one of its supporting passages is among what was retrieved."""
    answer = next((g for g in gold_answers(row) if normalize_answer(g) in _YES_NO), None)
    wanted = {str(x) for x in row.get("supporting_passage_ids", [])}
    seen = {h.document.id for _, hs in steps for h in hs}
    return normalize_answer(answer) if answer is not None and wanted and wanted <= seen else None


def qa_trajectory(row: dict[str, Any], steps: list[tuple[str, list[Hit]]], answer: str) -> SFTRecord:
    template = get_template("search_r1")
    segments: list[Segment] = []
    thought = "<think> I need to search for the facts this question depends on. </think>\n"
    for i, (query, hits) in enumerate(steps):
        segments.append(Segment("policy", f"{thought}<search> {query} </search>"))
        segments.append(Segment("observation", template.format_observation(_hit_dicts(hits))))
        if i + 1 < len(steps):
            thought = f"<think> I still need to know more about {steps[i + 1][0]}. </think>\n"
    if normalize_answer(answer) in _YES_NO:  # nothing to quote: name what was compared
        titles = [t for _, t in _supporting(row)] or ["the results"]
        thought = f"<think> Comparing what the results say about {' and '.join(titles)}, the answer is {answer}. "
    else:
        doc = next((j for j, h in enumerate(steps[-1][1]) if contains(h.document.contents, answer)), None)
        where = next((h for _, hs in steps for h in hs if contains(h.document.contents, answer)), None)
        evidence = (snippet(_hit_text(where), answer) if where is not None else "") or answer
        source = f"Doc {doc + 1}" if doc is not None else "An earlier result"
        thought = f"<think> {source} says \"{evidence}\", so the answer is {answer}. "
    segments.append(Segment("policy", f"{thought}</think>\n<answer> {answer} </answer>"))
    return SFTRecord(id=f"{row['source']}:{row['id']}", messages=template.build_messages(str(row["question"])),
                     segments=segments, ground_truth=gold_answers(row), source=str(row["source"]),
                     meta={"qid": row["id"], "queries": [q for q, _ in steps],
                           "retrieved_ids": [[h.document.id for h in hs] for _, hs in steps],
                           "supporting_passage_ids": row.get("supporting_passage_ids", [])})


def qa_records(dataset: str, searcher: _Searcher, config: ColdStartConfig) -> tuple[list[SFTRecord], Counter[str]]:
    """Trajectories for the ``train`` part of ``dataset`` (never ``eval``)."""
    rows = qa_rows(dataset, config.qa_limit)
    stats: Counter[str] = Counter()
    records: list[SFTRecord] = []
    for start in progress_bar(range(0, len(rows), config.batch_size), desc=f"coldstart {dataset}", unit="batch",
                              disable=None):
        chunk = rows[start:start + config.batch_size]
        steps: list[list[tuple[str, list[Hit]]]] = [[] for _ in chunk]
        active = list(range(len(chunk)))
        queries = {i: " ".join(str(chunk[i]["question"]).split()) for i in active}
        for _ in range(config.max_qa_searches):
            if not queries:
                break
            order = sorted(queries)
            for i, hits in zip(order, searcher.search([queries[i] for i in order], config.topk), strict=True):
                steps[i].append((queries[i], hits))
            queries = {}
            for i in order:
                seen = {h.document.id for _, hs in steps[i] for h in hs}
                missing = [t for pid, t in _supporting(chunk[i]) if pid not in seen]
                if missing and missing[0] not in [q for q, _ in steps[i]]:
                    queries[i] = missing[0]
        for row, row_steps in zip(chunk, steps, strict=True):
            stats[f"{dataset}_tried"] += 1
            if split_of(dataset, str(row["id"])) != "train":
                raise AssertionError(f"{dataset}:{row['id']} is in the eval part")  # load_split guarantees it
            golds = [g for g in gold_answers(row) if normalize_answer(g) not in _YES_NO]
            observations = "".join(get_template("search_r1").format_observation(_hit_dicts(hs))
                                   for _, hs in row_steps)
            answer = _found_answer(observations, golds)
            if answer is None and config.yes_no:
                answer = _yes_no_answer(row, row_steps)
            if answer is None:
                continue
            stats[f"{dataset}_kept"] += 1
            records.append(qa_trajectory({**row, "source": dataset}, row_steps, answer))
    return records, stats


def qa_rows(dataset: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` questions of ``dataset``'s ``train`` part that have supporting passages."""
    return [r for r in load_split(dataset, "train") if r.get("supporting_passage_ids")][:limit]


def _supporting(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(passage id, title) of each supporting passage, titles from ``supporting_titles`` when aligned."""
    ids = [str(x) for x in row.get("supporting_passage_ids", [])]
    titles = [str(t) for t in row.get("supporting_titles", [])]
    if len(titles) != len(ids):
        titles = titles[:len(ids)] + [""] * (len(ids) - len(titles))
    return [(pid, re.sub(r"\s+", " ", t).strip()) for pid, t in zip(ids, titles, strict=True) if t]


# --------------------------------------------------------------------------- job


def build_coldstart(config: ColdStartConfig) -> dict[str, Any]:
    """Write ``coldstart.jsonl`` (SFT records) and a report; returns the report dict."""
    if not config.ramp_path and not config.qa:
        raise ValueError("nothing to do: give ramp_path and/or qa datasets")
    t0 = time.perf_counter()
    searcher = _Searcher(config)
    records: list[SFTRecord] = []
    stats: Counter[str] = Counter()
    attempts_log: list[dict[str, Any]] = []
    samples = read_samples(config.ramp_path)[:config.ramp_limit] if config.ramp_path else []
    try:
        if config.method == "agents":
            records, stats, attempts_log = _agent_run(config, samples, searcher)
        else:
            if samples:
                got, st = ramp_records(samples, searcher, config)
                records += got
                stats += st
            for dataset in config.qa:
                got, st = qa_records(dataset, searcher, config)
                records += got
                stats += st
    finally:
        searcher.close()
    elapsed = time.perf_counter() - t0
    out = config.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "coldstart.jsonl"
    write_records(path, records)
    files = {"records": str(path), "report_md": str(out / "report.md")}
    if config.method == "agents":
        files["attempts"] = str(out / "attempts.jsonl")
        with open(out / "attempts.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in attempts_log)
    tried = sum(v for k, v in stats.items() if k.endswith("_tried"))
    rejects = ({stage: stats[f"rejected_{stage}"] for stage in STAGES} if config.method == "agents"
               else {"not_retrieved": tried - len(records)})
    report: dict[str, Any] = {
        "config": config.model_dump(mode="json", exclude={"api_key", "llm_api_key", "judge_api_key"}),
        "method": config.method,
        "records": len(records),
        "tried": tried,
        "keep_rate": round(len(records) / tried, 4) if tried else 0.0,
        # the same four numbers for both methods: attempts made, trajectories kept, their rate and speed
        "attempts": tried,
        "accepted": len(records),
        "accept_rate": round(len(records) / tried, 4) if tried else 0.0,
        "trajectories_per_hour": round(3600 * len(records) / max(elapsed, 1e-9), 1),
        "rejects": rejects,
        "stats": dict(stats),
        "searches": searcher.queries,
        "retrieve_calls": searcher.calls,
        "seconds": round(elapsed, 2),
        "records_per_s": round(len(records) / max(elapsed, 1e-9), 1),
        "files": files,
        "examples": [r.to_dict() for r in records[:2]],
    }
    _write_report(out / "report.md", report)
    log.info("coldstart (%s): kept %d of %d trajectories (%d searches) in %.1fs -> %s", config.method, len(records),
             tried, searcher.queries, elapsed, path)
    return report


def _agent_run(config: ColdStartConfig, samples: Sequence[RampSample], searcher: _Searcher,
               ) -> tuple[list[SFTRecord], Counter[str], list[dict[str, Any]]]:
    """``method: "agents"``: every RAMP sample, then every QA question, through the agents and the judge."""
    from shared.config import LLMSettings
    from shared.llm import OpenAIBackend

    agents = config.agents
    if not agents.llm.base_url:
        raise ValueError("method 'agents' needs agents.llm.base_url (an OpenAI-compatible server)")
    if not agents.judge_url:
        raise ValueError("method 'agents' needs agents.judge_url (the judge service that keeps correct ones)")
    llm = agents.llm
    backend = OpenAIBackend(LLMSettings(backend="openai", model=llm.model, base_url=llm.base_url,
                                        api_key=config.llm_api_key, timeout_s=llm.timeout_s,
                                        max_retries=llm.max_retries, max_concurrency=llm.max_concurrency))
    key = config.judge_api_key.get_secret_value() if config.judge_api_key else None
    judge = JudgeClient(agents.judge_url, key, timeout_s=max(60.0, llm.timeout_s))
    attempts = [ramp_attempt(s) for s in samples]
    attempts += [qa_attempt(row, dataset) for dataset in config.qa for row in qa_rows(dataset, config.qa_limit)]
    team = AgentTeam(agents, backend, searcher.search, judge, config.topk, exclude_source=config.exclude_source)
    try:
        return agent_records(attempts, team)
    finally:
        judge.close()
        backend.http.close()


def _write_report(path: Path, report: dict[str, Any]) -> None:
    lines = ["# Cold-start trajectories", "",
             f"- method {report['method']}: {report['accepted']} records kept of {report['attempts']} attempts "
             f"(accept rate {report['accept_rate']}, {report['trajectories_per_hour']} trajectories/hour)",
             "- rejected: " + ", ".join(f"{k} {v}" for k, v in report["rejects"].items()),
             f"- {report['searches']} real searches in {report['retrieve_calls']} /retrieve calls, "
             f"{report['seconds']} s", "", "| part | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report["stats"].items())]
    for ex in report["examples"]:
        lines += ["", f"## {ex['id']}", "", "```", ex["messages"][-1]["content"][-400:], "---",
                  "".join(s["text"] for s in ex["segments"])[:2500], "```"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
