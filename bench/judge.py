"""Judge throughput: the ``llm`` method with batching vs one item per backend call, and the cache.

All in one process, on one loaded backend (same model, same items, same run):

- ``batched``  N one-item requests arrive at once; the judge's micro-batcher coalesces them into
               backend calls of up to ``--batch`` items (the local backend runs each as one batched
               forward/decode).
- ``single``   the same N requests through a judge with ``max_batch=1``: one item per backend call.
- ``cache``    a judge with a real Redis (started here on loopback): a cold pass (all misses, batched)
               then the same items again (all hits).

Default backend: ``local`` (the embedded SmolLM2 in-process). ``--openai`` also measures the openai
backend against ``transformers serve`` started here (``--continuous-batching`` so the server batches
concurrent requests, as SGLang does); there "batched" = up to ``--batch`` concurrent HTTP requests.

Run: ``OMP_NUM_THREADS=1 python bench/judge.py --items 32 --batch 16`` (CPU: a few minutes; on a
shared, oversubscribed machine one torch thread per process is ~10x faster than two spinning ones).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from pathlib import Path

import torch

from services.judge.cache import VerdictCache
from services.judge.config import JudgeSettings
from services.judge.engine import Judge, JudgeBackendError
from shared.config import LLMSettings
from shared.data import load_split
from shared.llm import LLMBackend, get_backend
from shared.metrics import gold_answers
from shared.models import resolve
from shared.processes import free_port, spawn, start_redis, wait_http
from shared.schemas import JudgeItem


def bench_items(n: int, offset: int = 0) -> list[JudgeItem]:
    """``n`` distinct items from HotpotQA's eval part: half the gold answer, half another question's."""
    rows = load_split("hotpotqa", "eval")[offset:offset + n + 1]
    items = []
    for i, row in enumerate(rows[:n]):
        gold = gold_answers(row)
        prediction = gold[0] if i % 2 == 0 else gold_answers(rows[i + 1])[0]
        items.append(JudgeItem(question=row["question"], gold=gold, prediction=prediction))
    return items


async def timed_pass(judge: Judge, items: list[JudgeItem]) -> tuple[float, int]:
    """All items as concurrent one-item requests (how rollout workers call it); seconds and cache hits."""
    start = time.perf_counter()
    responses = await asyncio.gather(*(judge.judge([item], "llm") for item in items))
    seconds = time.perf_counter() - start
    return seconds, sum(r.details[0].cached for r in responses)


async def run_backend(backend: LLMBackend, settings: JudgeSettings, items: list[JudgeItem],
                      redis_url: str | None) -> dict[str, float]:
    def judge_with(max_batch: int, cache: VerdictCache | None = None) -> Judge:
        prefix = f"bench-judge-{uuid.uuid4().hex[:8]}"  # a fresh key space: the cold pass is all misses
        return Judge(settings.model_copy(update={"max_batch": max_batch, "cache_prefix": prefix}), backend, cache)

    results: dict[str, float] = {}
    warm = judge_with(settings.max_batch)  # first calls pay one-off costs; keep them out of the numbers
    await warm.start()
    await timed_pass(warm, bench_items(4, offset=len(items) + 10))
    await warm.close()

    for name, max_batch in (("batched", settings.max_batch), ("single", 1)):
        judge = judge_with(max_batch)
        await judge.start()
        seconds, _ = await timed_pass(judge, items)
        await judge.close()
        results[f"{name}_items_s"] = len(items) / seconds
        print(f"  {name:<8} max_batch={max_batch:<3} {len(items)} items in {seconds:7.2f}s = "
              f"{len(items) / seconds:6.2f} items/s", flush=True)

    if redis_url is not None:
        cache = VerdictCache(redis_url, settings.cache_ttl_s)
        judge = judge_with(settings.max_batch, cache)
        await judge.start()
        cold, cold_hits = await timed_pass(judge, items)
        warm_s, warm_hits = await timed_pass(judge, items)
        await judge.close()
        results["cold_items_s"] = len(items) / cold
        results["hit_items_s"] = len(items) / warm_s
        print(f"  cache    cold {cold:7.2f}s ({cold_hits} hits), warm {warm_s:7.3f}s ({warm_hits} hits)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=JudgeSettings.model_fields["max_new_tokens"].default,
                        help="verdict length cap (default: the service's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                        help="local backend compute dtype (bf16 uses the CPU's AMX)")
    parser.add_argument("--openai", action="store_true", help="also measure transformers serve (continuous batching)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    items = bench_items(args.items)
    base = JudgeSettings(redis_url="", max_batch=args.batch, batch_wait_ms=50, backend_concurrency=1,
                         max_new_tokens=args.max_new_tokens, max_items=max(256, args.items),
                         max_queue=max(1024, args.items))
    redis = start_redis()
    try:
        print(f"local backend (in-process SmolLM2-135M, {args.dtype}, {torch.get_num_threads()} torch threads), "
              f"{args.items} items, batch {args.batch}, {args.max_new_tokens} new tokens max")
        local_settings = base.model_copy(update={"llm": LLMSettings(backend="local", model="smollm2", dtype=args.dtype,
                                                                    max_batch_size=args.batch)})
        local = asyncio.run(run_backend(get_backend(local_settings.llm), local_settings, items, redis.url))
        openai: dict[str, float] = {}
        if args.openai:
            openai = run_openai(base, items, args.batch)
    finally:
        redis.stop()

    batched_vs_single = local["batched_items_s"] / local["single_items_s"]
    cache_speedup = local["hit_items_s"] / local["cold_items_s"]
    print(f"\n{'backend':<10}{'batched items/s':>17}{'single items/s':>16}{'ratio':>8}")
    print(f"{'local':<10}{local['batched_items_s']:>17.2f}{local['single_items_s']:>16.2f}{batched_vs_single:>8.2f}")
    line = (f"BENCH judge batched_vs_single={batched_vs_single:.2f} cache_speedup={cache_speedup:.1f} "
            f"batch={args.batch} items={args.items} max_new_tokens={args.max_new_tokens} dtype={args.dtype} "
            f"batched_items_s={local['batched_items_s']:.2f} "
            f"single_items_s={local['single_items_s']:.2f} cache_hit_items_s={local['hit_items_s']:.1f}")
    if args.openai and not openai:
        line += " openai_cb=failed"
    if openai:
        ratio = openai["batched_items_s"] / openai["single_items_s"]
        print(f"{'openai':<10}{openai['batched_items_s']:>17.2f}{openai['single_items_s']:>16.2f}{ratio:>8.2f}")
        line += f" openai_cb_batched_vs_single={ratio:.2f}"
    print(line)


def run_openai(base: JudgeSettings, items: list[JudgeItem], batch: int) -> dict[str, float]:
    model = resolve("smollm2")
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    server = spawn("bench-judge-serve", [str(exe), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                                         "--device", "cpu", "--continuous-batching", "--log-level", "warning"])
    try:
        wait_http(server, f"http://127.0.0.1:{port}/health", timeout_s=180)
        llm = LLMSettings(backend="openai", model=str(model), base_url=f"http://127.0.0.1:{port}",
                          max_concurrency=batch, max_retries=1, timeout_s=600)
        settings = base.model_copy(update={"llm": llm})
        print(f"openai backend (transformers serve --continuous-batching), {len(items)} items")
        return asyncio.run(run_backend(get_backend(llm), settings, items, None))
    except (JudgeBackendError, RuntimeError, TimeoutError) as exc:
        print(f"  openai backend not measured: {type(exc).__name__}: {str(exc)[:200]}\n"
              f"  server alive: {server.alive()}; its log: {server.log_path}")
        return {}
    finally:
        server.stop()


if __name__ == "__main__":
    main()
