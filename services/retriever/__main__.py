"""Retriever CLI: serve an index, or build one.

    python -m services.retriever                     # serve (settings from RETRIEVER_* env vars)
    python -m services.retriever build --corpus data.jsonl --out <dir> [--index-type flat|hnsw|ivfpq]
        [--encoder minilm|e5:<path>|<folder>] [--no-bm25] [--limit N] [--no-sort] [--dtype auto|float32|bfloat16]
        [--force]

``build`` reuses ``--out`` when it already holds an index of the same corpus built the same way
(``--force`` rebuilds). ``build_main(argv)`` is what ``searchlab index build`` calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from services.retriever.index import INDEX_TYPES, BuildOptions, RunOptions, build_index, ensure_index

log = logging.getLogger(__name__)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``build`` arguments (also mounted by ``searchlab index build``)."""
    parser = parser or argparse.ArgumentParser(prog="python -m services.retriever build",
                                               description="Build a retriever index folder from a JSONL corpus.")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="JSONL corpus ({id,title,text} or FlashRAG {id,contents}); default: the shared corpus")
    parser.add_argument("--out", type=Path, default=None,
                        help="index folder to write; default: <cache>/indexes/<RETRIEVER_INDEX_NAME>")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default="flat")
    parser.add_argument("--encoder", default="minilm",
                        help="'minilm', 'e5:<path>', '<kind>:<path>' or a sentence-transformers folder")
    parser.add_argument("--no-bm25", action="store_true", help="skip the BM25 index (no bm25/hybrid modes)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N passages")
    parser.add_argument("--batch-size", type=int, default=RunOptions.batch_size)
    parser.add_argument("--no-sort", action="store_true", help="encode in corpus order (for comparison)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ivf-nlist", type=int, default=0, help="0: about 4*sqrt(n)")
    parser.add_argument("--pq-m", type=int, default=0, help="bytes per vector; 0: dim/8")
    parser.add_argument("--threads", type=int, default=0, help="torch/FAISS threads; 0: torch's default (all cores)")
    parser.add_argument("--force", action="store_true", help="rebuild even if --out is up to date")
    return parser


def run_build(args: argparse.Namespace) -> Path:
    from services.retriever.config import RetrieverSettings
    settings = RetrieverSettings()
    corpus = args.corpus or settings.resolved_corpus()
    out = args.out or settings.resolved_index_dir()
    options = BuildOptions(encoder=args.encoder, index_type=args.index_type, bm25=not args.no_bm25,
                           hnsw_m=args.hnsw_m, ivf_nlist=args.ivf_nlist, pq_m=args.pq_m)
    run = RunOptions(dtype=args.dtype, batch_size=args.batch_size, sort_by_length=not args.no_sort,
                     threads=args.threads)
    if args.force:
        build_index(corpus, out, options=options, run=run, limit=args.limit)
    else:
        ensure_index(corpus, out, options=options, run=run, limit=args.limit)
    return out


def build_main(argv: list[str] | None = None) -> int:
    """``searchlab index build ...`` / ``python -m services.retriever build ...``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = run_build(build_parser().parse_args(argv))
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
