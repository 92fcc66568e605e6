"""Index builds at scale: passages/s, peak RSS and bytes on disk per passage, against the build plan.

    .venv/bin/python bench/index_scale.py [--passages 200000] [--index ivfpq] [--threads 0] [--keep DIR]

1. A corpus of ``--passages`` passages: the shipped 17,600 repeated, each copy with changed ids
   (``wiki-000123~r4``), written to a temporary ``.jsonl`` (a large corpus's usual form).
2. ``python -m services.retriever build`` over it in a child process (the real CLI: it prints its
   plan, then streams the corpus); the child's peak RSS comes from ``os.wait4``.
3. A 300-passage build the same way: the fixed cost (interpreter, torch, encoder) to subtract.
4. The table: measured vs planned RAM and disk, throughput, per-passage costs; then the wiki-18
   extrapolation (21,015,324 DPR passages, their mean size taken from the shipped FlashRAG wiki-18
   sample) from the measured per-passage figures, next to what ``plan.py`` predicts.

``--index`` defaults to ``ivfpq`` with the parameters ``--index auto`` would give a corpus of this size
if it chose IVF-PQ: the type wiki-18 needs, so its plan extrapolates a measured build of the same kind.
BM25 is built as the CLI decides (on up to ``plan.BM25_AUTO_MAX`` passages). About 15-20 minutes
for 200k passages on 2 cores. Ends with one ``BENCH index_scale ...`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.retriever.index import BuildOptions, RunOptions
from services.retriever.plan import (
    MB,
    MEASURED,
    CorpusScan,
    auto_options,
    encoder_dim,
    ivfpq_options,
    plan_build,
    scan_corpus,
)
from shared.config import REPO_ROOT, corpus_path, data_dir
from shared.data import open_text

WIKI18_PASSAGES = 21_015_324  # DPR psgs_w100.tsv, the wiki-18 corpus of FlashRAG / Search-R1


def write_corpus(n: int, out: Path) -> Path:
    """``n`` passages: the shipped corpus repeated, ids changed from the second copy on."""
    lines = [json.loads(line) for line in open_text(corpus_path())]
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            row = dict(lines[i % len(lines)])
            copy = i // len(lines)
            if copy:
                row["id"] = f"{row['id']}~r{copy}"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def build(corpus: Path, out: Path, index: str, threads: int, extra: list[str]) -> dict[str, Any]:
    """Build in a child process; the manifest's build stats plus the child's peak RSS and disk use."""
    cmd = [sys.executable, "-m", "services.retriever", "build", "--corpus", str(corpus), "--out", str(out),
           "--index", index, "--force", "--threads", str(threads), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    plan_lines = [line.rstrip() for line in proc.stdout]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {' '.join(cmd)}")
    manifest = json.loads((out / "manifest.json").read_text())
    disk = {p.relative_to(out).parts[0]: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    parts: dict[str, int] = {}
    for name, size in disk.items():
        parts[name] = parts.get(name, 0) + size
    return {"manifest": manifest, "peak_rss": usage.ru_maxrss * 1024, "wall_s": time.perf_counter() - started,
            "disk": sum(parts.values()), "parts": parts, "plan": plan_lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--index", default="ivfpq", choices=("auto", "flat", "hnsw", "ivfpq"))
    parser.add_argument("--threads", type=int, default=0, help="torch/FAISS threads of the build (0: all cores)")
    parser.add_argument("--extra", default="", help="more build arguments, e.g. '--no-bm25'")
    parser.add_argument("--keep", type=Path, default=None, help="keep the corpus and index under this folder")
    args = parser.parse_args()
    threads = args.threads or (os.cpu_count() or 1)
    dim = encoder_dim("minilm")

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench-index-scale-")
    work = args.keep or Path(tmp_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = write_corpus(args.passages, work / "corpus.jsonl")
        scan = scan_corpus(corpus)
        options = auto_options(BuildOptions(), args.passages, dim)
        extra = args.extra.split()
        if args.index == "ivfpq":  # the IVF-PQ parameters auto gives a corpus this size, as wiki-18 gets
            options = ivfpq_options(options, args.passages, dim)
            extra += ["--ivf-nlist", str(options.ivf_nlist), "--pq-m", str(options.pq_m),
                      "--ivf-train-size", str(options.ivf_train_size)]
        elif args.index != "auto":
            options = replace(options, index_type=args.index)
        if "--no-bm25" in extra:
            options = replace(options, bm25=False)
        plan = plan_build(scan, options, dim, RunOptions())
        print(f"# index_scale: {args.passages:,} passages ({scan.bytes / MB:.1f} MB), index {options.index_type}, "
              f"{threads} thread(s), load avg {os.getloadavg()[0]:.1f}", flush=True)

        base = build(write_corpus(300, work / "base.jsonl"), work / "base-idx", "flat", threads, ["--no-bm25"])
        print(f"  fixed cost (300-passage flat build, no BM25): peak RSS {base['peak_rss'] / MB:.0f} MB", flush=True)
        big = build(corpus, work / "idx", args.index, threads, extra)
        for line in big["plan"]:
            print(f"  {line}")
    finally:
        if args.keep is None:
            tmp_ctx.cleanup()

    stats = big["manifest"]["build"]
    n = int(stats["count"])
    pps, peak = float(stats["passages_per_s"]), big["peak_rss"]
    parts = {k: v / n for k, v in big["parts"].items()}  # bytes per passage of each part of the folder
    print("\n| passages | index | bm25 | wall s | passages/s | encode passages/s | passages/CPU-s | peak RSS MB "
          "| plan RAM MB | disk MB | plan disk MB | bytes/passage |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {n:,} | {big['manifest']['index']['type']} | {'on' if big['manifest']['bm25'] else 'off'} "
          f"| {stats['seconds']:.0f} | {pps:.1f} | {stats['encode_passages_per_s']:.1f} "
          f"| {stats['passages_per_cpu_s']:.1f} | {peak / MB:.0f} | {plan.ram_bytes / MB:.0f} | {big['disk'] / MB:.0f} "
          f"| {plan.disk_bytes / MB:.0f} | {big['disk'] / n:.0f} |")
    print("\ndisk by part (bytes/passage): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(parts.items())))
    print(f"index: {big['manifest']['index']}; peak RSS above the fixed cost: {(peak - base['peak_rss']) / n:.0f} "
          f"bytes/passage")

    # -- wiki-18: plan.py's prediction, and the same plan with this run's measured costs in place
    sample = scan_corpus(data_dir() / "corpus" / "flashrag_wiki_sample.jsonl.gz")
    wiki = CorpusScan("wiki-18", "", WIKI18_PASSAGES, sample.bytes * WIKI18_PASSAGES // sample.count, 0)
    wiki_options = auto_options(BuildOptions(), WIKI18_PASSAGES, dim)
    measured = replace(MEASURED, base_rss=base["peak_rss"], encode_pps=pps,
                       bm25_disk=parts.get("bm25", MEASURED.bm25_disk))
    print(f"\nwiki-18 ({WIKI18_PASSAGES:,} passages of {wiki.bytes / WIKI18_PASSAGES:.0f} bytes, the mean of the "
          "shipped FlashRAG wiki-18 sample), --index auto:")
    print(plan_build(wiki, wiki_options, dim, RunOptions()).describe())
    wiki_plan = plan_build(wiki, wiki_options, dim, RunOptions(), costs=measured)
    print("with this run's fixed cost and throughput:")
    print(wiki_plan.describe())
    print(f"\nBENCH index_scale passages={n} index={big['manifest']['index']['type']} pps={pps:.1f} "
          f"encode_pps={stats['encode_passages_per_s']:.1f} peak_rss_mb={peak / MB:.0f} "
          f"base_rss_mb={base['peak_rss'] / MB:.0f} plan_ram_mb={plan.ram_bytes / MB:.0f} "
          f"ram_vs_plan={peak / plan.ram_bytes:.2f} disk_mb={big['disk'] / MB:.0f} "
          f"plan_disk_mb={plan.disk_bytes / MB:.0f} disk_vs_plan={big['disk'] / plan.disk_bytes:.2f} "
          f"bytes_per_passage={big['disk'] / n:.0f} dense_bytes_per_passage={parts.get('dense.faiss', 0):.1f} "
          f"wiki18_ram_gb={wiki_plan.ram_bytes / MB / 1024:.1f} wiki18_disk_gb={wiki_plan.disk_bytes / MB / 1024:.1f} "
          f"wiki18_encode_h={wiki_plan.seconds / 3600:.1f}")


if __name__ == "__main__":
    main()
