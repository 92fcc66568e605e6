"""The simulator's work, importable without HTTP: documents for queries, useful or noisy on demand.

Two generators, registered by name (CONVENTIONS.md §7):

- ``llm``: ZeroSearch's prompts on an LLM backend (:mod:`shared.llm`: SGLang / any OpenAI-compatible
  server, or the embedded SmolLM2 in-process). One batched generation per group of queries with the
  same k; documents parsed from free text; a query that yields fewer than k documents is generated
  again for the missing ones, then filled (:func:`documents.fill_documents`) and reported.
- ``corpus``: grounded and cheap, over the retriever service. Useful = the real hits for the query
  (passages holding the gold answer promoted from a deeper pool when the answer is known);
  noisy = same-topic distractors: hits below the top k that lack the gold answer, then hits for a
  perturbed query.

:class:`Simulator` ties them to the ZeroSearch noise curriculum (:class:`NoiseSchedule`) and the
``/retrieve`` facade, which answers in the retriever's exact format.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.simulator.config import SimMode, SimulatorSettings
from shared.llm import LLMBackend, SamplingParams
from shared.metrics import best_match
from shared.noise_schedule import p_noise
from shared.schemas import (
    Document,
    Hit,
    Quality,
    RetrieveRequest,
    RetrieveResponse,
    SearchMode,
    SimDocument,
    SimulateRequest,
    SimulateResponse,
)
from shared.simulation.documents import Doc, fill_documents, hit_to_doc, parse_documents, window_around
from shared.simulation.prompts import get_template

log = logging.getLogger(__name__)


class SimulatorInputError(ValueError):
    """A request the simulator cannot serve as asked (the service answers 422)."""


@dataclass
class SimJob:
    """One query to write documents for."""

    query: str
    k: int
    quality: Quality
    mode: SimMode
    question: str | None = None
    gold: list[str] = field(default_factory=list)
    search_mode: SearchMode | None = None  # corpus mode: the retriever's dense | bm25 | hybrid


@dataclass
class SimResult:
    docs: list[Doc]
    quality: Quality
    mode: SimMode
    filled: int = 0  # documents added because generation gave too few
    regenerated: int = 0  # extra generation rounds this query needed (llm mode)


def contains_answer(text: str, gold: Sequence[str]) -> bool:
    """Cover-EM: does ``text`` contain one of the gold answers (normalized, on token boundaries)?"""
    return bool(gold) and best_match(text, gold, "cover_em").score > 0


def _doc_id(mode: str, quality: str, query: str, rank: int, text: str) -> str:
    digest = hashlib.sha1(f"{query}\x00{text}".encode()).hexdigest()[:10]
    return f"sim-{mode}-{quality}-{rank}-{digest}"


# --------------------------------------------------------------------------- generators


class Generator(Protocol):
    def run(self, jobs: Sequence[SimJob]) -> list[SimResult]: ...


class LLMGenerator:
    """ZeroSearch prompts on an LLM backend; batched per k, parsed, regenerated, filled."""

    def __init__(self, backend: LLMBackend, settings: SimulatorSettings):
        self.backend = backend
        self.settings = settings
        get_template(settings.template, "useful")  # unknown template names fail at start-up

    def _sampling(self, k: int, round_: int) -> SamplingParams:
        s = self.settings
        per_doc = s.tokens_per_doc or int(1.6 * s.words) + 12  # ~1.3 tokens a word, plus "Doc i (Title: ...)"
        temperature = s.temperature if round_ == 0 else max(s.temperature, 0.7)  # a retry must differ
        return SamplingParams(max_new_tokens=min(s.max_new_tokens, k * per_doc), temperature=temperature,
                              top_p=s.top_p, stop=[f"Doc {k + 1}"], seed=s.seed + round_)

    def _generate(self, jobs: Sequence[SimJob], counts: Sequence[int], round_: int) -> list[list[Doc]]:
        """One generation per job asking for ``counts[i]`` documents; batched by count."""
        s = self.settings
        out: list[list[Doc]] = [[] for _ in jobs]
        by_count: dict[int, list[int]] = {}
        for i, n in enumerate(counts):
            by_count.setdefault(n, []).append(i)
        for n, idx in sorted(by_count.items()):
            convs = [get_template(s.template, jobs[i].quality).render(jobs[i].query, n, s.words, jobs[i].question,
                                                                      jobs[i].gold) for i in idx]
            texts = self.backend.chat(convs, self._sampling(n, round_))
            for i, text in zip(idx, texts, strict=True):
                out[i] = parse_documents(text, s.words, int(s.words * s.max_words_factor))
        return out

    def run(self, jobs: Sequence[SimJob]) -> list[SimResult]:
        docs = self._generate(jobs, [j.k for j in jobs], 0)
        rounds = [0] * len(jobs)
        for round_ in range(1, self.settings.max_regenerations + 1):
            short = [i for i, j in enumerate(jobs) if len(docs[i]) < j.k]
            if not short:
                break
            more = self._generate([jobs[i] for i in short], [jobs[i].k - len(docs[i]) for i in short], round_)
            for i, extra in zip(short, more, strict=True):
                known = {d.text for d in docs[i]}
                docs[i].extend(d for d in extra if d.text not in known)
                rounds[i] = round_
        results = []
        for i, job in enumerate(jobs):
            got, filled = fill_documents(docs[i], job.k, job.query, self.settings.words)
            if filled:
                log.info("llm gave %d/%d documents for %r; filled %d", len(docs[i]), job.k, job.query, filled)
            for rank, d in enumerate(got):
                d.id = _doc_id("llm", job.quality, job.query, rank, d.text)
                d.score = 1.0 / (rank + 1)
            results.append(SimResult(got, job.quality, "llm", filled, rounds[i]))
        return results


class Searcher(Protocol):
    """The retriever as the corpus generator sees it: :class:`shared.client.RetrieverClient` fits."""

    def retrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None) -> list[list[Hit]]: ...


_STOPWORDS = frozenset("a an the of in on at to for by with from and or is was were are be been who what which when "
                       "where why how did does do whose whom that this as it its".split())


def perturb_query(query: str) -> str:
    """A plausible but off-target query: the query without its most specific words.

    Capitalized words and numbers (names, dates) go first; otherwise the longest content words.
    """
    words = query.split()
    specific = [w for w in words[1:] if w[:1].isupper() or any(c.isdigit() for c in w)]
    drop = set(specific) if specific and len(specific) < len(words) else set(
        sorted((w for w in words if w.lower() not in _STOPWORDS), key=len, reverse=True)[:max(1, len(words) // 3)])
    kept = [w for w in words if w not in drop]
    return " ".join(kept) if kept and kept != words else " ".join(words[: max(1, len(words) // 2)])


class CorpusGenerator:
    """Real passages from the retriever service: useful = hits, noisy = same-topic distractors."""

    def __init__(self, searcher: Searcher, settings: SimulatorSettings):
        self.searcher = searcher
        self.settings = settings

    def _clip(self, doc: Doc, gold: Sequence[str]) -> Doc:
        cap = int(self.settings.words * self.settings.max_words_factor)
        return Doc(doc.title, window_around(doc.text, cap, gold), doc.id, doc.score)

    def _search(self, queries: list[str], topk: int, modes: Sequence[SearchMode | None]) -> list[list[Doc]]:
        out: list[list[Doc]] = [[] for _ in queries]
        by_mode: dict[SearchMode | None, list[int]] = {}
        for i, m in enumerate(modes):
            by_mode.setdefault(m, []).append(i)
        for mode, idx in by_mode.items():
            hits = self.searcher.retrieve([queries[i] for i in idx], topk=topk, mode=mode)
            for i, row in zip(idx, hits, strict=True):
                out[i] = [hit_to_doc(h) for h in row]
        return out

    def run(self, jobs: Sequence[SimJob]) -> list[SimResult]:
        if not jobs:
            return []
        pool = min(max(self.settings.corpus_pool, 3 * max(j.k for j in jobs)), self.settings.corpus_pool_cap)
        pools = self._search([j.query for j in jobs], pool, [j.search_mode for j in jobs])
        noisy_short = []
        picked: list[list[Doc]] = []
        for i, job in enumerate(jobs):
            if job.quality == "useful":
                picked.append(self._useful(job, pools[i]))
            else:
                picked.append(self._noisy(job, pools[i], exclude=set()))
                if len(picked[i]) < job.k:
                    noisy_short.append(i)
        if noisy_short:  # not enough distractors in the pool: hits for a perturbed query
            more = self._search([perturb_query(jobs[i].query) for i in noisy_short], pool,
                                [jobs[i].search_mode for i in noisy_short])
            for i, extra in zip(noisy_short, more, strict=True):
                seen = {d.id for d in picked[i]} | {d.id for d in pools[i][: jobs[i].k]}
                picked[i] += self._noisy(jobs[i], extra, exclude=seen, skip_top=False)[: jobs[i].k - len(picked[i])]
        results = []
        for job, docs in zip(jobs, picked, strict=True):
            docs = [self._clip(d, job.gold if job.quality == "useful" else ()) for d in docs]
            got, filled = fill_documents(docs, job.k, job.query, self.settings.words)
            results.append(SimResult(got, job.quality, "corpus", filled))
        return results

    def _useful(self, job: SimJob, pool: list[Doc]) -> list[Doc]:
        if job.gold and self.settings.corpus_promote_gold:
            with_answer = [d for d in pool if contains_answer(d.text, job.gold)]
            rest = [d for d in pool if not contains_answer(d.text, job.gold)]
            return (with_answer + rest)[: job.k]
        return pool[: job.k]

    def _noisy(self, job: SimJob, pool: list[Doc], exclude: set[str], skip_top: bool = True) -> list[Doc]:
        """Passages ranked below the top k (same topic, less on point) that lack the gold answer."""
        candidates = pool[job.k:] if skip_top else pool
        out = [d for d in candidates if d.id not in exclude and not contains_answer(d.text, job.gold)]
        return out[: job.k]


# --------------------------------------------------------------------------- curriculum


class NoiseSchedule:
    """ZeroSearch's p_noise(step) with a current step the trainer moves (``POST /schedule``)."""

    def __init__(self, settings: SimulatorSettings):
        self.start = settings.p_noise_start
        self.end = settings.p_noise_end
        self.base = settings.p_noise_base
        self.total_steps = settings.total_steps
        self.step = settings.step
        self._lock = threading.Lock()

    def set(self, step: int, total_steps: int | None = None) -> None:
        with self._lock:
            self.step = step
            if total_steps is not None:
                self.total_steps = total_steps

    def current(self) -> float:
        with self._lock:
            return p_noise(self.step, self.total_steps, self.start, self.end, self.base)


# --------------------------------------------------------------------------- simulator

GENERATORS: dict[str, Callable[..., Generator]] = {"llm": LLMGenerator, "corpus": CorpusGenerator}


_WS = re.compile(r"\s+")


class Simulator:
    """Validates requests, routes jobs to their generator in batches, draws qualities for the facade."""

    def __init__(self, settings: SimulatorSettings, generators: dict[SimMode, Generator]):
        if settings.mode not in generators:
            raise ValueError(f"the default mode '{settings.mode}' has no generator; have: {sorted(generators)}")
        self.settings = settings
        self.generators = generators
        self.schedule = NoiseSchedule(settings)
        self._rng = random.Random(settings.seed)
        self._rng_lock = threading.Lock()
        self.counts: dict[str, int] = {"useful": 0, "noisy": 0, "filled": 0}

    # -- requests -> jobs ---------------------------------------------------------------
    def _check_k(self, k: int) -> int:
        if not 1 <= k <= self.settings.max_k:
            raise SimulatorInputError(f"k must be between 1 and {self.settings.max_k}, got {k}")
        return k

    def _check_mode(self, mode: SimMode | None) -> SimMode:
        mode = mode or self.settings.mode
        if mode not in self.generators:
            raise SimulatorInputError(f"mode '{mode}' is not available on this simulator; available: "
                                      f"{', '.join(sorted(self.generators))}")
        return mode

    def _check_query(self, query: str) -> str:
        query = _WS.sub(" ", query).strip()
        if not query:
            raise SimulatorInputError("query must not be empty")
        if len(query) > self.settings.max_query_chars:
            raise SimulatorInputError(f"query is {len(query)} characters long; the limit is "
                                      f"{self.settings.max_query_chars}")
        return query

    def job_for(self, request: SimulateRequest) -> SimJob:
        return SimJob(query=self._check_query(request.query), k=self._check_k(request.k), quality=request.quality,
                      mode=self._check_mode(request.mode), question=request.question,
                      gold=[g for g in (request.gold or []) if g.strip()])

    def draw_quality(self, p: float) -> Quality:
        with self._rng_lock:
            return "noisy" if self._rng.random() < p else "useful"

    def facade_jobs(self, request: RetrieveRequest) -> list[SimJob]:
        """One job per query of a ``/retrieve`` request, each quality drawn from p_noise."""
        queries = request.query_list()
        if not queries:
            raise SimulatorInputError("queries must not be empty")
        k = self._check_k(request.topk if request.topk is not None else self.settings.default_k)
        p = request.p_noise if request.p_noise is not None else self.schedule.current()
        gold = [g for g in (request.gold or []) if g.strip()]
        return [SimJob(query=self._check_query(q), k=k, quality=self.draw_quality(p), mode=self.settings.mode,
                       question=request.question, gold=gold, search_mode=request.mode) for q in queries]

    # -- the work ---------------------------------------------------------------------
    def run(self, jobs: Sequence[SimJob]) -> list[SimResult]:
        """Results for ``jobs`` in order; one batched call per generator."""
        results: list[SimResult | None] = [None] * len(jobs)
        by_mode: dict[SimMode, list[int]] = {}
        for i, job in enumerate(jobs):
            by_mode.setdefault(job.mode, []).append(i)
        for mode, idx in by_mode.items():
            for i, result in zip(idx, self.generators[mode].run([jobs[i] for i in idx]), strict=True):
                results[i] = result
                self.counts[result.quality] += 1
                self.counts["filled"] += result.filled
        return [r for r in results if r is not None]

    def simulate(self, request: SimulateRequest) -> SimulateResponse:
        return to_simulate_response(self.run([self.job_for(request)])[0])

    def retrieve(self, request: RetrieveRequest) -> RetrieveResponse:
        return to_retrieve_response(self.run(self.facade_jobs(request)))


def to_simulate_response(result: SimResult) -> SimulateResponse:
    return SimulateResponse(documents=[SimDocument(title=d.title, text=d.text) for d in result.docs],
                            quality=result.quality, filled=result.filled, mode=result.mode)


def to_retrieve_response(results: Sequence[SimResult]) -> RetrieveResponse:
    """The retriever's exact format: ``contents`` is ``"Title"\\ntext`` (FlashRAG / Search-R1)."""
    return RetrieveResponse(result=[
        [Hit(document=Document(id=d.id or _doc_id(r.mode, r.quality, "", rank, d.text),
                               contents=f'"{d.title}"\n{d.text}'), score=d.score)
         for rank, d in enumerate(r.docs)]
        for r in results
    ])
