"""Retriever CLI: serve an index, or build one.

    python -m services.retriever                     # serve (settings from RETRIEVER_* env vars)
    python -m services.retriever build --corpus data.jsonl[.gz] --out <dir> [--index auto|flat|hnsw|ivfpq]
        [--encoder minilm|e5:<path>|<folder>] [--bm25|--no-bm25] [--limit N] [--no-sort]
        [--dtype auto|float32|bfloat16] [--plan] [--force]

``build`` first prints its plan (passages, bytes, index type and parameters, expected RAM, disk and
time; ``services/retriever/plan.py``), then streams the corpus into the index; ``--plan`` stops after
the plan. ``--index auto`` (the default) picks flat, HNSW or IVF-PQ and their parameters from the
corpus size; BM25 is on up to ``plan.BM25_AUTO_MAX`` passages unless ``--bm25``/``--no-bm25`` say.
``build`` reuses ``--out`` when it already holds an index of the same corpus built the same way
(``--force`` rebuilds). ``build_main(argv)`` is what ``searchlab index build`` calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from services.retriever.index import INDEX_TYPES, BuildOptions, RunOptions, build_index, ensure_index
from services.retriever.plan import (
    BM25_AUTO_MAX,
    BuildPlan,
    auto_options,
    encoder_dim,
    plan_build,
    scan_corpus,
)

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``build`` arguments (also mounted by ``searchlab index build``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m services.retriever build",
                                               description="Build a retriever index folder from a JSONL corpus.")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="JSONL(.gz) corpus ({id,title,text} or FlashRAG {id,contents}); default: the shipped one")
    parser.add_argument("--out", type=Path, default=None,
                        help="index folder to write; default: <cache>/indexes/<RETRIEVER_INDEX_NAME>")
    parser.add_argument("--index", "--index-type", dest="index_type", choices=("auto", *INDEX_TYPES), default="auto",
                        help="auto: flat below 100k passages, hnsw below 1M, ivfpq above (parameters from the size)")
    parser.add_argument("--encoder", default="minilm",
                        help="'minilm', 'e5:<path>', '<kind>:<path>' or a sentence-transformers folder")
    bm25 = parser.add_mutually_exclusive_group()
    bm25.add_argument("--bm25", dest="bm25", action="store_true", default=None,
                      help=f"build the BM25 index even above {BM25_AUTO_MAX:,} passages (bm25s holds it in RAM)")
    bm25.add_argument("--no-bm25", dest="bm25", action="store_false", help="skip the BM25 index (no bm25/hybrid modes)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N passages")
    parser.add_argument("--batch-size", type=int, default=RunOptions.batch_size)
    parser.add_argument("--no-sort", action="store_true", help="encode in corpus order (for comparison)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ivf-nlist", type=int, default=0, help="0: about 4*sqrt(n)")
    parser.add_argument("--pq-m", type=int, default=0, help="bytes per vector; 0: dim/8")
    parser.add_argument("--ivf-train-size", type=int, default=BuildOptions.ivf_train_size,
                        help="passages IVF-PQ trains on (from the corpus start)")
    parser.add_argument("--chunk-size", type=int, default=RunOptions.chunk_size,
                        help="passages read, encoded and added together (RAM grows with it)")
    parser.add_argument("--threads", type=int, default=0, help="torch/FAISS threads; 0: torch's default (all cores)")
    parser.add_argument("--plan", action="store_true", help="print the build plan and stop")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    return parser


def plan_for(args: argparse.Namespace, corpus: Path, run: RunOptions) -> tuple[BuildOptions, BuildPlan]:
    """The concrete build options (``--index auto`` resolved) and the plan, from one pass over ``corpus``."""
    scan = scan_corpus(corpus)
    n = min(scan.count, args.limit) if args.limit is not None else scan.count
    dim = encoder_dim(args.encoder)
    options = BuildOptions(encoder=args.encoder, index_type="flat", hnsw_m=args.hnsw_m, ivf_nlist=args.ivf_nlist,
                           pq_m=args.pq_m, ivf_train_size=args.ivf_train_size)
    if args.index_type == "auto":
        options = auto_options(options, n, dim, bm25=args.bm25)
    else:
        options = replace(options, index_type=args.index_type,
                          bm25=n <= BM25_AUTO_MAX if args.bm25 is None else args.bm25)
    return options, plan_build(scan, options, dim, run, args.limit)


def run_build(args: argparse.Namespace) -> Path | None:
    """Plan, print the plan, build (or reuse) the index; None when only the plan was asked for."""
    from services.retriever.config import RetrieverSettings
    settings = RetrieverSettings()
    corpus = args.corpus or settings.resolved_corpus()
    out = args.out or settings.resolved_index_dir()
    run = RunOptions(dtype=args.dtype, batch_size=args.batch_size, chunk_size=args.chunk_size,
                     sort_by_length=not args.no_sort, threads=args.threads)
    options, plan = plan_for(args, corpus, run)
    sys.stdout.write(f"{corpus} -> {out}\n{plan.describe()}\n")
    sys.stdout.flush()
    if args.plan:
        return None
    if args.force:
        build_index(corpus, out, options=options, run=run, limit=args.limit)
    else:
        ensure_index(corpus, out, options=options, run=run, limit=args.limit)
    return out


def build_main(argv: list[str] | None = None) -> int:
    """``searchlab index build ...`` / ``python -m services.retriever build ...``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = run_build(build_parser().parse_args(argv))
    if out is None:
        return 0
    manifest = json.loads((out / "manifest.json").read_text())
    log.info("index at %s: %s", out, json.dumps(manifest["build"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "build":
        return build_main(argv[1:])
    if argv and argv[0] not in ("serve",):
        log.error("unknown command %r: use no argument (serve) or 'build'", argv[0])
        return 2

    from services.retriever.app import create_retriever_app
    from services.retriever.config import RetrieverSettings
    from shared.service import serve

    settings = RetrieverSettings()
    app = create_retriever_app(settings)
    serve(app, settings)
    if app.state.load_error:
        log.error("stopped: %s", app.state.load_error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
