"""RAMP dataset builder: corpus passages -> masked samples -> JSONL, verl parquet and a report.

    python -m services.trainer.data ramp --samples 20000 --selector heuristic --strategy random --seed 0

:func:`build_ramp` is what the CLI and the trainer's ``ramp`` job call. Passages are visited in a
seeded random order; each gives up to ``samples_per_passage`` samples with different mask counts
until ``samples`` are made. The same config and seed give the same files.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.trainer.data.difficulty import ScorerConfig, SpanScorer
from services.trainer.data.export import read_samples, write_samples, write_verl_parquet
from services.trainer.data.lexicon import Lexicon
from services.trainer.data.mask_curriculum import bucket_by_masks
from services.trainer.data.masking import RampSample, fill_masks, samples_for_passage
from services.trainer.data.report import write_ramp_report
from services.trainer.data.spans import Span, get_selector
from shared.config import LLMSettings, cache_dir, corpus_path
from shared.confine import InputFile, OutputDir, SafeName
from shared.data import Passage, load_passages
from shared.progress import progress_bar
from shared.protocol import MASK_TOKEN

log = logging.getLogger(__name__)

Progress = Callable[[float], None]


class RampConfig(BaseModel):
    corpus: InputFile | None = None  # JSONL of {id,title,text} (or {id,contents}); default: the shared corpus
    out_dir: OutputDir | None = None  # where files go; default: <cache>/ramp/<name>
    name: SafeName = "default"  # dataset name (output folder under <cache>/ramp)
    samples: int = Field(default=20_000, gt=0, le=10_000_000)  # target number of samples
    samples_per_passage: int = Field(default=2, ge=1, le=4)  # each with a different mask count
    max_passages: int | None = Field(default=None, gt=0, le=100_000_000)  # only the first N passages of the corpus
    selector: Literal["heuristic", "llm"] = "heuristic"  # span candidates from rules or an LLM
    strategy: Literal["random", "ppl"] = "random"  # which candidates get masked
    mask_counts: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], max_length=16)  # allowed masks per sample
    answer_format: Literal["spans", "paragraph"] = "spans"  # "a ; b" or the whole passage
    max_candidates: int = Field(default=12, ge=1, le=256)  # candidates kept per passage (bounds ppl scoring cost)
    chunk_size: int = Field(default=64, ge=1, le=4096)  # passages per selector / scorer call
    seed: int = 0
    llm: LLMSettings = Field(default_factory=LLMSettings)  # the llm selector's model
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)  # the ppl strategy's model
    parquet: bool = True  # also write verl parquet (all + one file per mask count)
    report: bool = True  # write report.md / report.json / histograms.png

    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else cache_dir() / "ramp" / self.name


_CORPORA: dict[tuple[str, float, int], tuple[list[Passage], Lexicon]] = {}


def load_corpus(path: str) -> tuple[list[Passage], Lexicon]:
    """Passages and lexicon of a corpus file, kept in memory while the file is unchanged (jobs reuse it).

    The lexicon covers the whole corpus (every title is an entity), even when a build uses a slice.
    """
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_mtime, stat.st_size)
    if key not in _CORPORA:
        passages = load_passages(path)
        _CORPORA.clear()  # one corpus at a time: 17,600 passages are ~30 MB in memory
        _CORPORA[key] = (passages, Lexicon.build(passages))
    return _CORPORA[key]


def load_samples(path: str | Path) -> list[RampSample]:
    """The samples of a ``ramp.jsonl`` written by :func:`build_ramp`."""
    return read_samples(path)


def is_verbatim(sample: RampSample) -> bool:
    """All spans verbatim in the source passage, masks in order, and filling them restores it."""
    if sample.n_masks != len(sample.spans) or sample.masked.count(MASK_TOKEN) != sample.n_masks:
        return False
    if any(s not in sample.text for s in sample.spans) or sample.masked.lstrip().startswith(MASK_TOKEN):
        return False
    return fill_masks(sample.masked, sample.spans) == sample.text


def verbatim_rate(samples: Sequence[RampSample]) -> float:
    return sum(is_verbatim(s) for s in samples) / len(samples) if samples else 0.0


def _limit_candidates(passage: Passage, spans: list[Span], limit: int, seed: int) -> list[Span]:
    if len(spans) <= limit:
        return spans
    rng = random.Random(f"{seed}:{passage.id}:candidates")
    return sorted(rng.sample(spans, limit), key=lambda s: s.start)


def generate_samples(passages: Sequence[Passage], lexicon: Lexicon, config: RampConfig,
                     progress: Progress | None = None, scorer: SpanScorer | None = None) -> list[RampSample]:
    """Samples from ``passages`` (visited in a seeded order) until ``config.samples`` are made."""
    order = list(passages)
    random.Random(config.seed).shuffle(order)
    selector = get_selector(config.selector, lexicon, config.llm)
    if config.strategy == "ppl" and scorer is None:
        scorer = SpanScorer(config.scorer)
    samples: list[RampSample] = []
    bar = progress_bar(total=config.samples, desc=f"ramp {config.selector}/{config.strategy}", unit="sample",
               mininterval=1.0, disable=None)
    for start in range(0, len(order), config.chunk_size):
        chunk = order[start:start + config.chunk_size]
        candidates = [_limit_candidates(p, c, config.max_candidates, config.seed)
                      for p, c in zip(chunk, selector.select(chunk), strict=True)]
        losses: list[list[float] | None] = [None] * len(chunk)
        if scorer is not None:
            losses = list(scorer.score(list(zip(chunk, candidates, strict=True))))
        before = len(samples)
        for p, cands, loss in zip(chunk, candidates, losses, strict=True):
            samples.extend(samples_for_passage(
                p, cands, n_samples=config.samples_per_passage, mask_counts=config.mask_counts,
                strategy=config.strategy, selector=config.selector, seed=config.seed,
                answer_format=config.answer_format, losses=loss))
            if len(samples) >= config.samples:
                break
        bar.update(min(len(samples), config.samples) - min(before, config.samples))
        if progress is not None:
            progress(min(1.0, len(samples) / config.samples))
        if len(samples) >= config.samples:
            break
    bar.close()
    if len(samples) < config.samples:
        log.warning("the corpus gave only %d of the %d samples asked for (raise samples_per_passage)",
                    len(samples), config.samples)
    return samples[:config.samples]


def summarize(samples: Sequence[RampSample]) -> dict[str, Any]:
    kinds = Counter(k for s in samples for k in s.kinds)
    masks = Counter(s.n_masks for s in samples)
    losses = [v for s in samples for v in (s.losses or [])]
    return {
        "samples": len(samples),
        "passages": len({s.source_id for s in samples}),
        "verbatim_rate": verbatim_rate(samples),
        "span_kinds": dict(kinds.most_common()),
        "mask_counts": {k: masks[k] for k in sorted(masks)},
        "mean_span_loss": sum(losses) / len(losses) if losses else None,
    }


def build_ramp(config: RampConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build a RAMP dataset and write it (see the module docstring); returns the report dict."""
    t0 = time.perf_counter()
    corpus = config.corpus or str(corpus_path())
    all_passages, lexicon = load_corpus(corpus)
    passages = all_passages[:config.max_passages] if config.max_passages else all_passages
    t1 = time.perf_counter()
    samples = generate_samples(passages, lexicon, config, progress)
    t2 = time.perf_counter()
    out = config.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    files = {"jsonl": str(out / "ramp.jsonl")}
    write_samples(files["jsonl"], samples)
    if config.parquet and samples:
        files["parquet"] = str(out / "ramp.parquet")
        write_verl_parquet(files["parquet"], samples)
        for k, bucket in bucket_by_masks(samples).items():
            files[f"parquet_k{k}"] = str(out / f"ramp_k{k}.parquet")
            write_verl_parquet(files[f"parquet_k{k}"], bucket)
    report: dict[str, Any] = {
        "config": config.model_dump(mode="json", exclude={"llm": {"api_key"}}),
        "corpus": corpus,
        **summarize(samples),
        "load_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
        "samples_per_s": round(len(samples) / max(t2 - t1, 1e-9), 3),
        "files": files,
        "examples": [s.to_dict() for s in samples[::max(1, len(samples) // 5)][:5]],  # spread over the set
    }
    if config.report:
        report["files"].update(write_ramp_report(out, report))
    log.info("ramp: %d samples from %d passages in %.1fs (%.0f samples/s), verbatim %.3f -> %s",
             len(samples), report["passages"], t2 - t1, report["samples_per_s"], report["verbatim_rate"], out)
    return report
