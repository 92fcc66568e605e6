"""Load test of the retriever and the judge with a bounded client on loopback: p50 / p99 and error rate.

    .venv/bin/python bench/load.py [--requests 400] [--concurrency 1,8,64]

Starts a keyed retriever (the shipped corpus's flat index, as ``searchlab up`` caches it) and a keyed judge
(the embedded SmolLM2, verdict cache off), then drives each with the same client: an ``httpx.AsyncClient``
closed loop with ``c`` requests in flight at most (bounded connections; a 503 waits its ``Retry-After``
before the next request, so overload is counted, never amplified):

- retriever ``POST /retrieve``: one HotpotQA dev question per request, top-3 (what verl's SearchTool sends);
- judge ``POST /judge`` by rule (``f1``): one item per request, a real question, its gold, a prediction;
- judge ``POST /judge`` by the model (``llm``): one item per request, a different prediction each time
  (no coalescing), ``--llm-requests`` of them (the model answers a few per second on 2 cores).

A table (req/s, p50, p99, max, errors and 503s per endpoint and concurrency), then one line:

    BENCH load retriever_rps_c64=… retriever_p99_ms_c64=… judge_rule_rps_c64=… judge_rule_p99_ms_c64=… …
        error_rate=…

Throughput under load of the retriever alone, with more clients and its ceiling, is bench/retriever.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.config import corpus_path
from shared.data import load_split
from shared.metrics import gold_answers
from shared.processes import Proc, start_service

KEY = "load-key"


@dataclass
class Run:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # successful requests
    errors: int = 0  # anything but 200 and 503
    shed: int = 0  # 503: admission control said later

    def row(self, label: str, c: int) -> str:
        total = len(self.latencies) + self.errors + self.shed
        lat = np.asarray(self.latencies or [0.0]) * 1000
        return (f"| {label} | {c} | {len(self.latencies) / self.seconds:.1f} | {np.percentile(lat, 50):.0f} | "
                f"{np.percentile(lat, 99):.0f} | {lat.max():.0f} | {self.errors} | {self.shed} | "
                f"{(self.errors + self.shed) / max(total, 1):.3f} |")


async def closed_loop(url: str, path: str, bodies: list[dict[str, Any]], concurrency: int,
                      key: str | None = KEY) -> Run:
    """Send every body, ``concurrency`` in flight at most (one ``httpx.AsyncClient``, a connection per
    slot; ``key``: the bearer token, None for none); latency per answered request. ``bench/retriever.py``'s
    httpx client is this loop too."""
    run = Run(seconds=0.0)
    pending = list(reversed(bodies))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300, headers=headers) as client:

        async def worker() -> None:
            while pending:
                body = pending.pop()
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                except httpx.HTTPError:
                    run.errors += 1
                    continue
                if response.status_code == 200:
                    response.json()
                    run.latencies.append(time.perf_counter() - started)
                elif response.status_code == 503:
                    run.shed += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", 1)))
                else:
                    run.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    return run


def workloads(n: int, n_llm: int) -> dict[str, tuple[str, str, list[dict[str, Any]]]]:
    rows = load_split("hotpotqa", "eval")
    rows = (rows * (n // len(rows) + 1))[:n]
    retrieve = [{"queries": [r["question"]], "topk": 3, "return_scores": True} for r in rows]
    rule = [{"method": "f1", "items": [{"question": r["question"], "gold": gold_answers(r),
                                        "prediction": f"it is {gold_answers(r)[0]} ({i})"}]}
            for i, r in enumerate(rows)]
    llm = [{"method": "llm", "items": [{"question": r["question"], "gold": gold_answers(r),
                                        "prediction": f"answer number {i}"}]} for i, r in enumerate(rows[:n_llm])]
    return {"retriever": ("retriever", "/retrieve", retrieve), "judge_rule": ("judge", "/judge", rule),
            "judge_llm": ("judge", "/judge", llm)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=400, help="requests per retriever / rule run")
    p.add_argument("--llm-requests", type=int, default=48, help="requests per judge llm run")
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--index", type=Path, default=None, help="a built retriever index (default: the shipped corpus's)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    from services.retriever.config import corpus_index_dir
    from services.retriever.index import ensure_index

    logs = Path(tempfile.mkdtemp(prefix="bench-load-"))
    index = args.index or Path(ensure_index(corpus_path(), corpus_index_dir(corpus_path())))
    procs: dict[str, Proc] = {}
    results: dict[tuple[str, int], Run] = {}
    try:
        procs["retriever"] = start_service("retriever", {"RETRIEVER_INDEX_DIR": str(index), "RETRIEVER_API_KEY": KEY,
                                                         "RETRIEVER_CACHE_SIZE": "0"}, log_dir=logs)
        procs["judge"] = start_service("judge", {"JUDGE_API_KEY": KEY, "JUDGE_LLM__BACKEND": "local",
                                                 "JUDGE_REDIS_URL": "", "SEARCHLAB_REDIS_URL": "",
                                                 "JUDGE_MAX_NEW_TOKENS": "8"}, log_dir=logs, timeout_s=300)
        for name, (service, path, bodies) in workloads(args.requests, args.llm_requests).items():
            for c in levels:
                asyncio.run(closed_loop(procs[service].url, path, bodies[: min(len(bodies), 4 * c)], c))  # warm
                results[(name, c)] = asyncio.run(closed_loop(procs[service].url, path, bodies, c))
                print(f"{name} c={c}: {len(results[(name, c)].latencies)} answered", flush=True)
    finally:
        for proc in procs.values():
            proc.stop()

    print("\n| endpoint | c | req/s | p50 ms | p99 ms | max ms | errors | 503 | error rate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, c), run in results.items():
        print(run.row(name, c))
    top = max(levels)
    fields = []
    for name in ("retriever", "judge_rule", "judge_llm"):
        run = results[(name, top)]
        lat = np.asarray(run.latencies or [0.0]) * 1000
        fields += [f"{name}_rps_c{top}={len(run.latencies) / run.seconds:.1f}",
                   f"{name}_p50_ms_c{top}={np.percentile(lat, 50):.0f}",
                   f"{name}_p99_ms_c{top}={np.percentile(lat, 99):.0f}"]
    sent = sum(len(r.latencies) + r.errors + r.shed for r in results.values())
    errors = sum(r.errors for r in results.values())
    print(f"BENCH load {' '.join(fields)} error_rate={errors / max(sent, 1):.4f} "
          f"shed_rate={sum(r.shed for r in results.values()) / max(sent, 1):.4f}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
