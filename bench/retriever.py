"""Retriever throughput: micro-batched service vs unbatched service vs the in-process ceiling.

    .venv/bin/python bench/retriever.py [--threads 1] [--full-build]

1. Index: the 17,600-passage corpus with MiniLM + FAISS Flat + BM25, built once under
   ``<cache>/indexes/wiki_passages-flat`` (reused while the corpus is unchanged).
2. Build speed, length-sorted vs corpus order, same run: on a 1,000-passage sample spread over
   the corpus (``--full-build``: on all 17,600 passages, ~10+ minutes on 2 shared cores).
3. The service on loopback, result cache off, verl-shaped single-query requests
   (``{"queries": [q], "topk": 3, "return_scores": true}``, HotpotQA dev questions) at
   concurrency 1, 8 and 64: (a) micro-batching on, (b) micro-batching off.
4. (c) the in-process ceiling: one process, batches of 64 questions, encode + FAISS search.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio streams so that the client
takes little of the CPU the service needs (they share the machine). Besides wall-clock figures,
the bench reports CPU time per request of the server process (and per query / per passage in
process): on a machine other work shares, those ratios stay meaningful when wall-clock ones do not.
Ends with one ``BENCH`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from services.retriever.engine import Retriever, set_threads
from services.retriever.index import BuildOptions, RunOptions, build_index, ensure_index
from shared.config import cache_dir, corpus_path
from shared.data import dataset_path, open_text, read_jsonl
from shared.processes import start_service

CONCURRENCY = (1, 8, 64)


# --------------------------------------------------------------------------- load generator


async def _post_loop(host: str, port: int, bodies: list[bytes], next_index: list[int], latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while next_index[0] < len(bodies):
            body = bodies[next_index[0]]
            next_index[0] += 1
            head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            start = time.perf_counter()
            writer.write(head + body)
            headers = await reader.readuntil(b"\r\n\r\n")
            status = int(headers.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {payload[:300]!r}")
    finally:
        writer.close()


async def _load(url: str, questions: list[str], concurrency: int) -> tuple[float, float, float]:
    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps({"queries": [q], "topk": 3, "return_scores": True}).encode() for q in questions]
    latencies: list[float] = []
    next_index = [0]
    start = time.perf_counter()
    await asyncio.gather(*(_post_loop(host, int(port), bodies, next_index, latencies) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return len(bodies) / elapsed, 1000 * statistics.median(latencies), 1000 * latencies[int(0.99 * (len(latencies) - 1))]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the search process), from /proc."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, total, grew = {pid}, 0.0, True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    for member in tree:
        total += stats.get(member, (0, 0.0))[1]
    return total


def run_service(index_dir: Path, microbatch: bool, threads: int, questions: list[str],
                requests: dict[int, int]) -> dict[int, tuple[float, float, float, float]]:
    env = {"RETRIEVER_INDEX_DIR": str(index_dir), "RETRIEVER_MICROBATCH": str(microbatch).lower(),
           "RETRIEVER_CACHE_SIZE": "0", "RETRIEVER_THREADS": str(threads), "RETRIEVER_LOG_LEVEL": "warning",
           "RETRIEVER_BUILD_IF_MISSING": "false"}  # threads 0: the service's default
    proc = start_service("retriever", env, log_dir=cache_dir() / "logs" / "bench-retriever")
    try:
        asyncio.run(_load(proc.url, questions[:32], 8))  # warm-up
        out = {}
        for c in CONCURRENCY:
            n = requests[c]
            cpu0 = process_cpu_s(proc.popen.pid)
            rps, p50, p99 = asyncio.run(_load(proc.url, [questions[i % len(questions)] for i in range(n)], c))
            cpu_ms = 1000 * (process_cpu_s(proc.popen.pid) - cpu0) / n
            out[c] = (rps, p50, p99, cpu_ms)
            print(f"  {'batched' if microbatch else 'unbatched'} c={c:<3} {rps:7.1f} req/s  "
                  f"p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  server CPU {cpu_ms:6.2f} ms/request", flush=True)
        return out
    finally:
        proc.stop()


def ceiling(index_dir: Path, threads: int, questions: list[str]) -> tuple[float, float]:
    """(queries/s, CPU ms per query) of encode + search in this process, batches of 64."""
    set_threads(threads, reserve=0)  # as the service's search process does
    retriever = Retriever.load(index_dir)
    try:
        retriever.search(questions[:64], topk=3)  # warm-up
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, len(questions), 64):
            retriever.search(questions[i:i + 64], topk=3)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        return len(questions) / elapsed, 1000 * cpu / len(questions)
    finally:
        retriever.close()


def build_speed(sample: Path, threads: int, sort: bool) -> tuple[float, float]:
    """(passages/s, passages per CPU-second) of a full index build (encode + FAISS + BM25)."""
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        manifest = build_index(sample, Path(tmp) / "idx", options=BuildOptions(),
                               run=RunOptions(sort_by_length=sort, threads=threads, progress=False))
    return float(manifest["build"]["passages_per_s"]), float(manifest["build"]["passages_per_cpu_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0,
                        help="service/ceiling torch+FAISS threads (0: the service default, all cores)")
    parser.add_argument("--build-threads", type=int, default=0, help="index build threads (0: all cores)")
    parser.add_argument("--full-build", action="store_true", help="compare build speed on the whole corpus")
    parser.add_argument("--build-sample", type=int, default=1000)
    parser.add_argument("--requests", type=int, nargs=3, default=(100, 480, 1920), metavar=("C1", "C8", "C64"))
    args = parser.parse_args()
    threads = args.threads
    build_threads = args.build_threads or (os.cpu_count() or 1)

    corpus = corpus_path()
    index_dir = ensure_index(corpus, cache_dir() / "indexes" / "wiki_passages-flat",
                             run=RunOptions(threads=build_threads))
    questions = [r["question"] for r in read_jsonl(dataset_path("hotpotqa"))]
    requests = dict(zip(CONCURRENCY, args.requests, strict=True))

    print(f"# retriever bench: {sum(1 for _ in open_text(corpus))} passages, {threads or 'default'} torch/FAISS thread(s) "
          f"({build_threads} for builds), "
          f"load avg {os.getloadavg()[0]:.1f}")
    # -- build speed, sorted vs corpus order
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        if args.full_build:
            sample = corpus
        else:
            lines = open_text(corpus).readlines()
            sample = Path(tmp) / "sample.jsonl"
            sample.write_text("".join(random.Random(0).sample(lines, args.build_sample)))
        n_build = sum(1 for _ in open_text(sample))
        build_pps, build_cpu_pps = build_speed(sample, build_threads, sort=True)
        print(f"  build {n_build} passages, length-sorted: {build_pps:.1f} passages/s "
              f"({build_cpu_pps:.1f} per CPU-second)", flush=True)
        unsorted_pps, unsorted_cpu_pps = build_speed(sample, build_threads, sort=False)
        print(f"  build {n_build} passages, corpus order:  {unsorted_pps:.1f} passages/s "
              f"({unsorted_cpu_pps:.1f} per CPU-second)", flush=True)

    batched = run_service(index_dir, True, threads, questions, requests)
    unbatched = run_service(index_dir, False, threads, questions, requests)
    ceiling_qps, ceiling_cpu_ms = ceiling(index_dir, threads, questions[:requests[64]])
    print(f"  in-process ceiling (batches of 64): {ceiling_qps:.1f} queries/s, CPU {ceiling_cpu_ms:.2f} ms/query",
          flush=True)

    print("\n| concurrency | batched req/s | p50 ms | p99 ms | CPU ms/req | unbatched req/s | p50 ms | p99 ms "
          "| CPU ms/req | batched/unbatched |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        a, b = batched[c], unbatched[c]
        print(f"| {c} | {a[0]:.1f} | {a[1]:.1f} | {a[2]:.1f} | {a[3]:.2f} | {b[0]:.1f} | {b[1]:.1f} | {b[2]:.1f} "
              f"| {b[3]:.2f} | {a[0] / b[0]:.2f} |")
    print(f"\nin-process ceiling (one process, batches of 64, encode + search): {ceiling_qps:.1f} queries/s, "
          f"{ceiling_cpu_ms:.2f} CPU ms/query")
    print(f"index build ({n_build} passages): {build_pps:.1f} passages/s length-sorted, {unsorted_pps:.1f} corpus "
          f"order ({build_pps / unsorted_pps:.2f}x); per CPU-second {build_cpu_pps:.1f} vs {unsorted_cpu_pps:.1f} "
          f"({build_cpu_pps / unsorted_cpu_pps:.2f}x)")
    print("(CPU figures are the process's own CPU time: robust when other work shares the cores; wall figures "
          f"are not — load average was {os.getloadavg()[0]:.1f} at the end)")
    a64, b64 = batched[64], unbatched[64]
    print(f"BENCH retriever rps_c64={a64[0]:.1f} rps_c64_unbatched={b64[0]:.1f} rps_ceiling={ceiling_qps:.1f} "
          f"batched_vs_unbatched={a64[0] / b64[0]:.2f} vs_ceiling={a64[0] / ceiling_qps:.2f} "
          f"p99_ms_c64={a64[2]:.1f} build_pps={build_pps:.1f} build_pps_unsorted={unsorted_pps:.1f} "
          f"cpu_ms_per_req_c64={a64[3]:.2f} cpu_ms_per_req_c64_unbatched={b64[3]:.2f} "
          f"cpu_ms_per_query_ceiling={ceiling_cpu_ms:.2f} batched_vs_unbatched_cpu={b64[3] / a64[3]:.2f} "
          f"vs_ceiling_cpu={ceiling_cpu_ms / a64[3]:.2f} build_pps_cpu={build_cpu_pps:.1f} "
          f"build_pps_unsorted_cpu={unsorted_cpu_pps:.1f} build_passages={n_build} threads={threads} "
          f"build_threads={build_threads}")


if __name__ == "__main__":
    main()
