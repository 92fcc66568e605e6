"""Retriever under the clients people really use, against the same server's client-batched ceiling.

    .venv/bin/python bench/retriever.py [--requests 300 800 2000 2560] [--env RETRIEVER_X=y ...] [--build]

1. Index: the 17,600-passage corpus with MiniLM + FAISS Flat + BM25, built once under
   ``<cache>/indexes/wiki_passages-flat`` (reused while the corpus is unchanged).
2. The service on loopback with its default settings (``--env`` overrides), result cache off.
3. Ceiling: the same server, 64 HotpotQA questions per request, two requests per search process
   in flight: the queries/s the index answers when clients batch for it.
4. Single-question requests (``{"queries": [q], "topk": 3, "return_scores": true}``, HotpotQA dev
   questions), closed loops at concurrency 1, 8, 64 and 256, through three clients:
   ``httpx`` (an ``httpx.AsyncClient``, responses parsed, as rollout code does), ``verl`` (verl's
   own ``perform_single_search_batch`` from threads: ``requests``, a connection per call, its
   retries on 5xx) and ``raw`` (a minimal keep-alive client on asyncio streams: the server's cost
   with the least client in the way). A 503 counts as an error; the client then waits its
   ``Retry-After`` (verl's own back-off for verl), as a polite client does.
5. The search-process hop: the same httpx runs at c=1 and c=64 against a server that searches in
   its HTTP process (``RETRIEVER_SEARCH_PROCESS=false``).
6. The client's own ceiling: the same httpx loop at c=1 and c=64 against a null server (a process
   of its own that answers every request at once with the real server's response to one question),
   in the same run, on the same cores: what share of the gap to the ceiling is the client's; and at
   c=64 against the same null server answering each request after the real server's own mean time
   per request at c=64 (no CPU spent): what that latency alone costs the client.

Per run: req/s, latency p50/p99/p99.9 of the answered requests as the client saw them, the server's
own p99 (the bucket of its ``/retrieve`` latency histogram: what is left is the client's own
queueing), errors, the batch sizes the server formed (from its ``/metrics``), the server's CPU time
per query (HTTP process + search processes, from /proc), the HTTP process's alone per request, and
the client's own CPU time per request: the load client shares the cores with the server, and these
CPU figures say how much of the machine each side took. ``--build`` adds the
index build speed (length-sorted vs corpus order). Ends with one ``BENCH`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from load import closed_loop  # bench/load.py (this script's folder is on sys.path when run as a script)

from services.retriever.config import corpus_index_dir
from services.retriever.index import BuildOptions, RunOptions, build_index, ensure_index
from shared.config import cache_dir, corpus_path
from shared.data import dataset_path, open_text, read_jsonl
from shared.processes import Proc, free_port, start_service

CONCURRENCY = (1, 8, 64, 256)
CLIENTS = ("httpx", "verl", "raw")
CEILING_BATCH = 64


@dataclass
class Run:
    """One closed-loop run: what the clients saw and what the server did."""

    requests: int
    seconds: float
    latencies: list[float]  # seconds, answered requests only
    errors: int
    client_cpu_s: float
    server_cpu_s: float
    batches: dict[float, float]  # batch-size histogram bucket (upper bound) -> batches in it
    queries: int  # queries the requests carried
    server_latency: dict[float, float]  # the server's own /retrieve latency histogram, cumulative, seconds
    http_cpu_s: float = float("nan")  # the HTTP process alone (no search processes)

    def server_p99_ms(self) -> float:
        """The server-side p99 (the histogram bucket it falls in, upper bound): time in the service,
        not in the client's own queue."""
        total = self.server_latency.get(float("inf"), 0.0)
        for bound in sorted(b for b in self.server_latency if b > 0):
            if total and self.server_latency[bound] >= 0.99 * total:
                return 1000 * bound
        return float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        s = sorted(self.latencies)
        return 1000 * s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")

    @property
    def mean_batch(self) -> float:
        n = sum(count for bound, count in self.batches.items() if bound > 0)
        return self.batches.get(-1.0, 0.0) / n if n else float("nan")

    def histogram(self) -> str:
        return " ".join(f"≤{int(le)}:{int(n)}" for le, n in sorted(self.batches.items()) if le > 0 and n)


# --------------------------------------------------------------------------- clients


def _body(questions: list[str]) -> dict[str, Any]:
    return {"queries": questions, "topk": 3, "return_scores": True}


async def _httpx_loop(url: str, bodies: list[dict[str, Any]], concurrency: int, out: list[float]) -> int:
    """``bench/load.py``'s bounded httpx closed loop on ``/retrieve`` (no key): latencies into ``out``; every
    answer but a 200 (a 503 from admission control included) counts as an error."""
    run = await closed_loop(url, "/retrieve", bodies, concurrency, key=None)
    out.extend(run.latencies)
    return run.errors + run.shed


async def _raw_loop(url: str, bodies: list[dict[str, Any]], concurrency: int, out: list[float]) -> int:
    host, port = url.removeprefix("http://").split(":")
    payloads = [json.dumps(b).encode() for b in bodies]
    errors = 0
    next_i = 0

    async def worker() -> None:
        nonlocal errors, next_i
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_i < len(payloads):
                body = payloads[next_i]
                next_i += 1
                head = (f"POST /retrieve HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode()
                start = time.perf_counter()
                writer.write(head + body)
                headers = await reader.readuntil(b"\r\n\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in
                          (line.partition(b":") for line in headers.split(b"\r\n")[1:] if line)}
                await reader.readexactly(int(fields[b"content-length"]))
                if headers.split(b" ", 2)[1] == b"200":
                    out.append(time.perf_counter() - start)
                else:
                    errors += 1
                    await asyncio.sleep(float(fields.get(b"retry-after", b"1")))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


def _verl_loop(url: str, bodies: list[dict[str, Any]], concurrency: int, out: list[float]) -> int:
    from verl.tools.utils.search_r1_like_utils import perform_single_search_batch

    logging.getLogger("verl.tools.utils.search_r1_like_utils").setLevel(logging.CRITICAL)  # one line per retry
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}

    def worker() -> None:
        while True:
            with lock:
                if state["next"] >= len(bodies):
                    return
                body = bodies[state["next"]]
                state["next"] += 1
            start = time.perf_counter()
            _, meta = perform_single_search_batch(url + "/retrieve", body["queries"], topk=3)
            elapsed = time.perf_counter() - start
            with lock:
                if meta["status"] == "success":
                    out.append(elapsed)
                else:
                    state["errors"] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return state["errors"]


def _drive(client: str, url: str, bodies: list[dict[str, Any]], concurrency: int, out: list[float]) -> int:
    if client == "verl":
        return _verl_loop(url, bodies, concurrency, out)
    loop: Callable[..., object] = _httpx_loop if client == "httpx" else _raw_loop
    return asyncio.run(loop(url, bodies, concurrency, out))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the client's own ceiling


def _serve_null(port: int, body: bytes, delay_s: float = 0.0) -> None:
    """A server that costs next to nothing: HTTP/1.1 keep-alive, every request answered with ``body``,
    at once or ``delay_s`` later (a timer: no CPU spent meanwhile)."""
    response = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(body)) + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if delay_s > 0:  # a keep-alive client sends its next request only after this answer
                    asyncio.get_running_loop().call_later(delay_s, writer.write, response)
                else:
                    writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def measure_null(body: bytes, bodies: list[dict[str, Any]], concurrency: int, delay_s: float = 0.0) -> Run:
    """The httpx loop against :func:`_serve_null` in a process of its own (started and stopped here)."""
    port = free_port()
    server = mp.get_context("spawn").Process(target=_serve_null, args=(port, body, delay_s), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/retrieve", json=bodies[0], timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert server.pid is not None
        cpu0, client0 = process_cpu_s(server.pid), time.process_time()
        latencies: list[float] = []
        start = time.perf_counter()
        errors = _drive("httpx", f"http://127.0.0.1:{port}", bodies, concurrency, latencies)
        seconds = time.perf_counter() - start
        queries = sum(len(b["queries"]) for b in bodies)
        return Run(len(bodies), seconds, latencies, errors, time.process_time() - client0,
                   process_cpu_s(server.pid) - cpu0, {}, queries, {}, process_cpu_s(server.pid) - cpu0)
    finally:
        server.kill()
        server.join()


# --------------------------------------------------------------------------- the server's side


def own_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (without its children), from /proc."""
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (the search processes), from /proc."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, (parent, _) in stats.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(stats.get(member, (0, 0.0))[1] for member in tree)


def batch_histogram(url: str) -> dict[float, float]:
    """The server's batch-size histogram, per bucket (not cumulative); key -1: the sum of sizes."""
    cumulative: dict[float, float] = {}
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("searchlab_retriever_batch_size_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            if bound != "+Inf":
                cumulative[float(bound)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("searchlab_retriever_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
    out: dict[float, float] = {}
    below = 0.0
    for le in sorted(cumulative):
        out[le] = cumulative[le] - below
        below = cumulative[le]
    out[-1.0] = total
    return out


def server_latency(url: str) -> dict[float, float]:
    """The server's cumulative ``/retrieve`` latency histogram (seconds -> requests at or below; key -1:
    the summed seconds)."""
    out: dict[float, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("searchlab_request_seconds_bucket") and 'route="/retrieve"' in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(bound)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("searchlab_request_seconds_sum") and 'route="/retrieve"' in line:
            out[-1.0] = float(line.rsplit(" ", 1)[1])
    return out


def measure(proc: Proc, client: str, bodies: list[dict[str, Any]], concurrency: int) -> Run:
    before_latency = server_latency(proc.url)
    before_batches, cpu0, client0 = batch_histogram(proc.url), process_cpu_s(proc.popen.pid), time.process_time()
    http0 = own_cpu_s(proc.popen.pid)
    latencies: list[float] = []
    start = time.perf_counter()
    errors = _drive(client, proc.url, bodies, concurrency, latencies)
    seconds = time.perf_counter() - start
    http_cpu_s = own_cpu_s(proc.popen.pid) - http0
    after = batch_histogram(proc.url)
    after_latency = server_latency(proc.url)
    queries = sum(len(b["queries"]) for b in bodies)
    return Run(len(bodies), seconds, latencies, errors, time.process_time() - client0,
               process_cpu_s(proc.popen.pid) - cpu0, {k: after[k] - before_batches.get(k, 0.0) for k in after},
               queries, {k: v - before_latency.get(k, 0.0) for k, v in after_latency.items()}, http_cpu_s)


def start(index_dir: Path, env: dict[str, str], name: str) -> Proc:
    base = {"RETRIEVER_INDEX_DIR": str(index_dir), "RETRIEVER_CACHE_SIZE": "0", "RETRIEVER_LOG_LEVEL": "warning",
            "RETRIEVER_BUILD_IF_MISSING": "false"}
    proc = start_service("retriever", {**base, **env}, log_dir=cache_dir() / "logs" / f"bench-retriever-{name}")
    return proc


def row(label: str, c: int, run: Run) -> str:
    return (f"| {label} | {c} | {run.rps:.1f} | {run.pct(0.5):.1f} | {run.pct(0.99):.1f} | {run.pct(0.999):.1f} "
            f"| {run.server_p99_ms():.0f} | {run.errors} | {run.mean_batch:.1f} | {run.histogram()} "
            f"| {1000 * run.server_cpu_s / run.queries:.2f} | {1000 * run.http_cpu_s / run.requests:.2f} "
            f"| {1000 * run.client_cpu_s / run.requests:.2f} |")


HEADER = ("| client | c | req/s | p50 ms | p99 ms | p99.9 ms | server p99 ≤ ms | errors | mean batch | batches by size "
          "| server CPU ms/query | of it HTTP ms/req | client CPU ms/req |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def build_speed(corpus: Path, sample_size: int) -> str:
    lines = open_text(corpus).readlines()
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        sample = Path(tmp) / "sample.jsonl"
        sample.write_text("".join(random.Random(0).sample(lines, sample_size)))
        for sort in (True, False):
            manifest = build_index(sample, Path(tmp) / f"idx-{sort}", options=BuildOptions(),
                                   run=RunOptions(sort_by_length=sort, progress=False))
            out.append(f"{manifest['build']['passages_per_s']:.1f}")
    return f"index build, {sample_size} passages: {out[0]} passages/s length-sorted, {out[1]} corpus order"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs=4, default=(300, 800, 2000, 2560),
                        metavar=("C1", "C8", "C64", "C256"), help="requests per run at each concurrency")
    parser.add_argument("--ceiling-requests", type=int, default=48, help="64-question requests for the ceiling")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="server settings (RETRIEVER_*)")
    parser.add_argument("--no-hop", action="store_true", help="skip the in-process (no search process) runs")
    parser.add_argument("--no-null", action="store_true", help="skip the httpx runs against the null server")
    parser.add_argument("--build", action="store_true", help="also measure index build speed on a 1,000 sample")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    requests = dict(zip(CONCURRENCY, args.requests, strict=True))

    corpus = corpus_path()
    index_dir = ensure_index(corpus, corpus_index_dir(corpus))
    questions = [r["question"] for r in read_jsonl(dataset_path("hotpotqa"))]
    single = [_body([questions[i % len(questions)]]) for i in range(max(requests.values()))]
    load0 = os.getloadavg()
    print(f"# retriever bench: {os.cpu_count()} cores, load avg {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"server env {env or 'defaults'}", flush=True)

    proc = start(index_dir, env, "main")
    try:
        details = httpx.get(proc.url + "/info", timeout=30).json()["details"]
        processes = len(details.get("search_process", {}).get("pids", [])) or 1
        print(f"# server: {processes} search process(es), serving {details['serving']}", flush=True)
        _drive("raw", proc.url, single[:64], 8, [])  # warm-up: every process, every code path
        canned = httpx.post(proc.url + "/retrieve", json=single[0], timeout=30).content  # the null server's answer
        batched = [_body([questions[(i * CEILING_BATCH + j) % len(questions)] for j in range(CEILING_BATCH)])
                   for i in range(args.ceiling_requests)]
        _drive("httpx", proc.url, batched[:4], 2 * processes, [])
        ceiling = measure(proc, "httpx", batched, 2 * processes)
        ceiling_qps = ceiling.queries / ceiling.seconds
        print(f"  ceiling: {ceiling_qps:.1f} queries/s ({CEILING_BATCH} per request, {2 * processes} in flight), "
              f"server CPU {1000 * ceiling.server_cpu_s / ceiling.queries:.2f} ms/query", flush=True)
        runs: dict[tuple[str, int], Run] = {}
        for client in args.clients:
            for c in CONCURRENCY:
                runs[client, c] = measure(proc, client, single[:requests[c]], c)
                print(row(client, c, runs[client, c]), flush=True)
    finally:
        proc.stop()
    hop: dict[int, Run] = {}
    if not args.no_hop:
        proc = start(index_dir, {**env, "RETRIEVER_SEARCH_PROCESS": "false"}, "inprocess")
        try:
            _drive("raw", proc.url, single[:64], 8, [])
            for c in (1, 64):
                hop[c] = measure(proc, "httpx", single[:requests[c]], c)
                print(row("httpx, in-process", c, hop[c]), flush=True)
        finally:
            proc.stop()
    null: dict[int, Run] = {}
    slow_null: Run | None = None
    if "httpx" in args.clients and not args.no_null:
        for c in (1, 64):
            null[c] = measure_null(canned, single[:requests[c]], c)
            print(row("httpx, null server", c, null[c]), flush=True)
        server_mean_s = runs["httpx", 64].server_latency.get(-1.0, 0.0) / runs["httpx", 64].requests
        slow_null = measure_null(canned, single[:requests[64]], 64, delay_s=server_mean_s)
        print(row(f"httpx, null server answering after {1000 * server_mean_s:.0f} ms", 64, slow_null), flush=True)
    build = build_speed(corpus, 1000) if args.build else None

    print(f"\nceiling (same server, {CEILING_BATCH} questions per request): {ceiling_qps:.1f} queries/s, "
          f"server CPU {1000 * ceiling.server_cpu_s / ceiling.queries:.2f} ms/query\n")
    print(HEADER)
    for (client, c), run in runs.items():
        print(row(client, c, run))
    for c, run in hop.items():
        print(row("httpx, no search process", c, run))
    for c, run in null.items():
        print(row("httpx, null server", c, run))
    if slow_null is not None:
        print(row("httpx, null server answering after the server's mean time", 64, slow_null))
    if ("httpx", 64) in runs:
        h64 = runs["httpx", 64]
        print(f"\nc=64 httpx, per request: client {1000 * h64.client_cpu_s / h64.requests:.2f} CPU ms, HTTP process "
              f"{1000 * h64.http_cpu_s / h64.requests:.2f}, search processes "
              f"{1000 * (h64.server_cpu_s - h64.http_cpu_s) / h64.requests:.2f}; the ceiling "
              f"{1000 * ceiling.server_cpu_s / ceiling.queries:.2f} per query (its client "
              f"{1000 * ceiling.client_cpu_s / ceiling.queries:.2f})"
              + (f"; the client alone (null server) {null[64].rps:.1f} req/s at "
                 f"{1000 * null[64].client_cpu_s / null[64].requests:.2f} CPU ms/request" if 64 in null else ""))
    if build:
        print(build)
    load1 = os.getloadavg()
    print(f"(load avg {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; the load client runs on the same "
          f"{os.cpu_count()} cores)")
    fields: dict[str, float | int] = {}
    if ("httpx", 64) in runs:
        h1, h64 = runs["httpx", 1], runs["httpx", 64]
        fields.update(rps_c64_httpx=h64.rps, ceiling_qps=ceiling_qps, c64_vs_ceiling=h64.rps / ceiling_qps,
                      p99_ms_c64_httpx=h64.pct(0.99), p50_ms_c1_httpx=h1.pct(0.5), rps_c1_httpx=h1.rps,
                      server_p99_ms_c64_httpx=h64.server_p99_ms(), errors_c64_httpx=h64.errors,
                      mean_batch_c64_httpx=h64.mean_batch,
                      client_cpu_ms_c64_httpx=1000 * h64.client_cpu_s / h64.requests,
                      http_cpu_ms_c64_httpx=1000 * h64.http_cpu_s / h64.requests,
                      search_cpu_ms_c64_httpx=1000 * (h64.server_cpu_s - h64.http_cpu_s) / h64.queries)
    if null:
        fields.update(rps_c64_httpx_null=null[64].rps, p99_ms_c64_httpx_null=null[64].pct(0.99),
                      client_cpu_ms_c64_httpx_null=1000 * null[64].client_cpu_s / null[64].requests,
                      p50_ms_c1_httpx_null=null[1].pct(0.5))
    if slow_null is not None:
        fields.update(rps_c64_httpx_slow_null=slow_null.rps, p99_ms_c64_httpx_slow_null=slow_null.pct(0.99),
                      client_cpu_ms_c64_httpx_slow_null=1000 * slow_null.client_cpu_s / slow_null.requests)
    fields.update(ceiling_qps=ceiling_qps, search_processes=processes)
    for client in args.clients:
        fields[f"rps_c64_{client}"] = runs[client, 64].rps
        fields[f"rps_c256_{client}"] = runs[client, 256].rps
        fields[f"errors_c256_{client}"] = runs[client, 256].errors
    if hop:
        fields.update(p50_ms_c1_inprocess=hop[1].pct(0.5), rps_c64_inprocess=hop[64].rps)
    fields["load_avg"] = load1[0]
    print("BENCH retriever " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in fields.items()))


if __name__ == "__main__":
    main()
