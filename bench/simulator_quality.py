"""Simulator quality: how often *useful* vs *noisy* document sets contain the gold answer.

On HotpotQA questions from the project's *eval* part (yes/no questions left out: "yes" or "no"
turn up in any text), each question is the query; the simulator writes k documents useful and k
noisy (gold answer given, as in training), and we count the document sets whose text contains a
gold answer (cover-EM, :mod:`shared.metrics`). Rows:

- ``llm``     the base simulator model (embedded SmolLM2, ZeroSearch prompts, in-process);
- ``llm_ft``  the same after simulator SFT on real retrieval of *train* questions (finetune.py);
- ``corpus``  grounded mode over the real retriever (MiniLM dense index).

The index is, by default, a bench corpus: every supporting passage of the questions used (eval and
train) plus ``--distractors`` other passages of the shared corpus, so it builds in minutes on a
busy CPU; ``--full-corpus`` uses (or builds) the service's default index of all 17,600 passages,
which makes retrieval harder and the corpus rows lower.

Useful must contain the answer far more often than noisy: that gap is the simulator's reason to
exist. Run (CPU, minutes):

    python bench/simulator_quality.py --questions 40 --ft-questions 100
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.simulator.config import SimulatorSettings
from services.simulator.engine import (
    CorpusGenerator,
    Generator,
    LLMGenerator,
    SimJob,
    SimResult,
    contains_answer,
)
from services.trainer.learn.simulator_sft import (
    FinetuneConfig,
    MetricLabeller,
    build_examples,
    sft,
)
from shared.config import LLMSettings, cache_dir
from shared.data import load_split
from shared.schemas import Hit, Quality, SearchMode, SimMode


class InProcessSearcher:
    """The bench's in-process retriever seen as the examples' searcher (the service does this over HTTP)."""

    def __init__(self, retriever: Any):
        self.retriever = retriever

    def retrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None) -> list[list[Hit]]:
        kwargs: dict[str, Any] = {"topk": topk or 5}
        if mode is not None:
            kwargs["mode"] = mode
        return list(self.retriever.search(queries, **kwargs))

def is_yes_no(row: dict[str, Any]) -> bool:
    return all(str(a).strip().lower() in ("yes", "no") for a in row["answers"])


def bench_index(rows: list[dict[str, Any]], distractors: int) -> Path:
    """An index over the questions' supporting passages plus ``distractors`` other passages."""
    from services.retriever.index import ensure_index
    from shared.data import load_corpus, write_jsonl

    wanted = {pid for r in rows for pid in r.get("supporting_passage_ids", [])}
    passages, others = [], 0
    for passage in load_corpus():
        if passage["id"] in wanted:
            passages.append(passage)
        elif others < distractors:
            passages.append(passage)
            others += 1
    path = cache_dir() / "bench" / "simulator_corpus.jsonl"
    write_jsonl(path, passages)
    print(f"bench corpus: {len(passages)} passages ({len(passages) - others} supporting, {others} distractors)")
    return ensure_index(path, cache_dir() / "indexes" / "bench-simulator")


def rate(name: str, generator: Generator, rows: list[dict[str, Any]], k: int, mode: SimMode, quality: Quality,
         chunk: int) -> dict[str, Any]:
    """How often the document sets of one quality contain a gold answer, and how much was filled."""
    start = time.perf_counter()
    jobs = [SimJob(query=r["question"], k=k, quality=quality, mode=mode, question=r["question"],
                   gold=[str(a) for a in r["answers"]]) for r in rows]
    results: list[SimResult] = []
    for s in range(0, len(jobs), chunk):
        results += generator.run(jobs[s:s + chunk])
    hits = [contains_answer(" ".join(d.text for d in res.docs), job.gold) for job, res in zip(jobs, results,
                                                                                                strict=True)]
    out = {quality: sum(hits) / len(hits),
           f"{quality}_filled": sum(r.filled for r in results) / (len(results) * k),
           f"{quality}_words": sum(len(d.text.split()) for r in results for d in r.docs) / (len(results) * k),
           f"{quality}_example": results[0].docs[:2],
           f"{quality}_seconds": time.perf_counter() - start}
    print(f"  {name} {quality}: {out[quality]:.3f} ({out[f'{quality}_seconds']:.0f}s)", flush=True)
    return out


def evaluate(name: str, make: Callable[[], Generator], rows: list[dict[str, Any]], k: int, mode: SimMode,
             chunk: int, pool: ThreadPoolExecutor) -> Future[dict[str, Any]]:
    """Useful and noisy rates, the two qualities run side by side (each with its own generator:
    torch releases the GIL, so on a shared CPU two single-threaded workers beat one two-threaded)."""
    parts = [pool.submit(rate, name, make(), rows, k, mode, q, chunk) for q in ("useful", "noisy")]

    def merge() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in parts:
            out.update(part.result())
        out["seconds"] = max(out["useful_seconds"], out["noisy_seconds"])
        return out

    return pool.submit(merge)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=40, help="eval questions")
    p.add_argument("--ft-questions", type=int, default=100, help="train questions for the SFT data")
    p.add_argument("--sets-per-query", type=int, default=2, help="document sets per train question (ranks 1-k, k+1-2k)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--words", type=int, default=30)
    p.add_argument("--regenerations", type=int, default=1, help="extra generations for short document sets")
    p.add_argument("--max-examples", type=int, default=0, help="cap on SFT examples (0 = all built)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch", type=int, default=16, help="generation batch size")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="generation dtype")
    p.add_argument("--index-dir", type=Path, default=None, help="use this retriever index folder")
    p.add_argument("--full-corpus", action="store_true", help="the default index over all 17,600 passages")
    p.add_argument("--distractors", type=int, default=1500, help="bench corpus: passages besides the supporting")
    p.add_argument("--ft-model", type=Path, default=None, help="reuse this fine-tuned folder instead of training")
    p.add_argument("--out", type=Path, default=None, help="where the fine-tuned model goes")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from services.retriever.config import RetrieverSettings
    from services.retriever.engine import Retriever
    from shared.llm import LocalBackend

    rows = [r for r in load_split("hotpotqa", "eval") if not is_yes_no(r)][: args.questions]
    train_rows = [r for r in load_split("hotpotqa", "train") if not is_yes_no(r)][: args.ft_questions]
    if args.index_dir:
        index_dir = args.index_dir
    elif args.full_corpus:
        from services.retriever.index import ensure_index
        from shared.config import corpus_path

        index_dir = ensure_index(corpus_path(), RetrieverSettings().resolved_index_dir())
    else:
        index_dir = bench_index(rows + train_rows, args.distractors)
    searcher = InProcessSearcher(Retriever.load(index_dir))
    settings = SimulatorSettings(_env_file=None, mode="corpus", retriever_url="http://in-process",  # type: ignore[call-arg]
                                 words=args.words, max_k=max(10, args.k), default_k=args.k,
                                 max_regenerations=args.regenerations)
    print(f"simulator quality on {len(rows)} HotpotQA eval questions (yes/no excluded), k={args.k}, "
          f"words={args.words}, index {index_dir.name}", flush=True)

    table: dict[str, dict[str, Any]] = {}
    pool = ThreadPoolExecutor(max_workers=6)
    table["corpus"] = evaluate("corpus", lambda: CorpusGenerator(searcher, settings), rows, args.k, "corpus", 64,
                               pool).result()

    # the base model's rates and the fine-tuning are independent: run them side by side
    llm = LLMSettings(model="smollm2", max_batch_size=args.batch, dtype=args.dtype)
    base = evaluate("llm", lambda: LLMGenerator(LocalBackend(llm), settings), rows, args.k, "llm", args.batch, pool)
    if args.ft_model is None:
        examples = build_examples(train_rows, searcher, MetricLabeller(), k=args.k, words=args.words,
                                  sets_per_query=args.sets_per_query)
        examples = examples[: args.max_examples] if args.max_examples > 0 else examples
        out = args.out or cache_dir() / "models" / "simulator-sft-bench"
        report = sft(examples, "smollm2", out, FinetuneConfig(epochs=args.epochs, lr=args.lr, words=args.words))
        ft_model = Path(report.out_dir)
        ft_info = (f"SFT: {report.examples} examples ({report.useful} useful / {report.noisy} noisy by cover-EM) "
                   f"from {len(train_rows)} train questions, {report.steps} steps, loss {report.first_loss:.2f} -> "
                   f"{report.last_loss:.2f}, {report.seconds:.0f}s -> {ft_model}")
    else:
        ft_model = args.ft_model
        ft_info = f"SFT model reused from {ft_model}"
    print(ft_info, flush=True)
    ft = LLMSettings(model=str(ft_model), max_batch_size=args.batch, dtype=args.dtype)
    tuned = evaluate("llm_ft", lambda: LLMGenerator(LocalBackend(ft), settings), rows, args.k, "llm", args.batch,
                     pool)
    table["llm"], table["llm_ft"] = base.result(), tuned.result()
    pool.shutdown()

    print()
    print(f"{'mode':<8} {'useful':>7} {'noisy':>7} {'gap':>7} {'filled u/n':>11} {'words/doc u/n':>14} {'time':>7}")
    for name in ("llm", "llm_ft", "corpus"):
        r = table[name]
        print(f"{name:<8} {r['useful']:>7.3f} {r['noisy']:>7.3f} {r['useful'] - r['noisy']:>7.3f} "
              f"{r['useful_filled']:>5.2f}/{r['noisy_filled']:<5.2f} {r['useful_words']:>6.1f}/{r['noisy_words']:<7.1f}"
              f"{r['seconds']:>6.0f}s")
    print()
    print("first documents of the first question:")
    for name in ("llm", "llm_ft", "corpus"):
        for quality in ("useful", "noisy"):
            for d in table[name][f"{quality}_example"]:
                print(f"  [{name} {quality}] ({d.title}) {d.text[:160]}")
    print()
    print(f"BENCH simulator_quality llm_useful={table['llm']['useful']:.3f} llm_noisy={table['llm']['noisy']:.3f} "
          f"llm_ft_useful={table['llm_ft']['useful']:.3f} llm_ft_noisy={table['llm_ft']['noisy']:.3f} "
          f"corpus_useful={table['corpus']['useful']:.3f} corpus_noisy={table['corpus']['noisy']:.3f} "
          f"questions={len(rows)} k={args.k}")


if __name__ == "__main__":
    main()
