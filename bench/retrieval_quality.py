"""Retrieval quality on the multi-hop dev sets: recall@k of the gold (supporting) passages.

    .venv/bin/python bench/retrieval_quality.py [--index-dir DIR] [--threads N]

For HotpotQA, 2WikiMultihopQA and MuSiQue dev (every question carries ``supporting_passage_ids``
into the 17,600-passage corpus), and for dense (MiniLM + FAISS Flat), BM25 and hybrid (RRF):

- ``any@k``: fraction of questions with at least one gold passage in the top k;
- ``all@k``: fraction with every gold passage in the top k (multi-hop needs all of them).

Uses the same index folder as ``bench/retriever.py`` (built once, reused). Prints a markdown table
and ends with one ``BENCH`` line (``<set>_<mode>_r5`` = any@5, ``..._r5all`` = all@5).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.retriever.config import corpus_index_dir
from services.retriever.engine import Retriever, set_threads
from services.retriever.index import RunOptions, ensure_index
from shared.config import corpus_path
from shared.data import dataset_path, read_jsonl

DATASETS = {"hotpotqa": "hotpotqa", "2wiki": "2wikimultihopqa", "musique": "musique"}
MODES = ("dense", "bm25", "hybrid")
KS = (1, 3, 5, 10)


def load_questions(name: str) -> list[tuple[str, set[str]]]:
    rows = list(read_jsonl(dataset_path(name)))
    return [(r["question"], set(r["supporting_passage_ids"])) for r in rows if r.get("supporting_passage_ids")]


def recall(retriever: Retriever, questions: list[tuple[str, set[str]]], mode: str) -> dict[str, float]:
    ranked: list[list[str]] = []
    for i in range(0, len(questions), 64):
        batch = [q for q, _ in questions[i:i + 64]]
        ranked += [[h.document.id for h in hits] for hits in retriever.search(batch, topk=max(KS), mode=mode)]  # type: ignore[arg-type]
    out = {}
    for k in KS:
        top = [set(r[:k]) for r in ranked]
        out[f"any@{k}"] = sum(bool(t & gold) for t, (_, gold) in zip(top, questions, strict=True)) / len(questions)
        out[f"all@{k}"] = sum(gold <= t for t, (_, gold) in zip(top, questions, strict=True)) / len(questions)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir", type=Path, default=corpus_index_dir(corpus_path()))
    parser.add_argument("--threads", type=int, default=0, help="torch/FAISS threads (0: all cores but one)")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    index_dir = ensure_index(corpus_path(), args.index_dir, run=RunOptions(threads=threads))
    retriever = Retriever.load(index_dir)

    results: dict[tuple[str, str], dict[str, float]] = {}
    counts = {}
    for short, name in DATASETS.items():
        questions = load_questions(name)
        counts[short] = len(questions)
        for mode in MODES:
            results[(short, mode)] = recall(retriever, questions, mode)
            print(f"  {short:8} {mode:6} any@5 {results[(short, mode)]['any@5']:.3f}", flush=True)
    retriever.close()

    header = " | ".join(f"any@{k}" for k in KS) + " | " + " | ".join(f"all@{k}" for k in KS)
    print(f"\n| dataset (questions) | mode | {header} |")
    print("|---|---|" + "---|" * (2 * len(KS)))
    for (short, mode), r in results.items():
        cells = " | ".join(f"{r[f'any@{k}']:.3f}" for k in KS) + " | " + \
            " | ".join(f"{r[f'all@{k}']:.3f}" for k in KS)
        print(f"| {short} ({counts[short]}) | {mode} | {cells} |")
    parts = [f"{short}_{mode}_r5={r['any@5']:.3f}" for (short, mode), r in results.items()]
    parts += [f"{short}_{mode}_r5all={r['all@5']:.3f}" for (short, mode), r in results.items()]
    print("BENCH retrieval_quality " + " ".join(parts))


if __name__ == "__main__":
    main()
