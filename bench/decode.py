"""Local backend decode speed: preallocated KV cache (written in place) vs transformers' growing cache.

Same model, same prompts, same run: ``--batch`` prompts of ``--context`` tokens (real HotpotQA
questions padded with corpus text, as an agent's prompt with its observations), greedy,
``--new-tokens`` tokens each, one torch thread (a rollout worker's setting). The baseline swaps the
preallocation out, so each token's KV is appended with ``torch.cat`` (a copy of the whole cache).

    .venv/bin/python bench/decode.py [--batch 16] [--context 600] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from unittest import mock

import torch

from shared import llm
from shared.config import LLMSettings, corpus_path
from shared.data import dataset_path, open_text, read_jsonl


def prompts(backend: llm.LocalBackend, batch: int, context: int) -> list[list[int]]:
    rows = list(read_jsonl(dataset_path("hotpotqa")))[:batch]
    passages = [json.loads(line) for _, line in zip(range(400), open_text(corpus_path()), strict=False)]
    filler = backend.encode(" ".join(str(p.get("text", p.get("contents", ""))) for p in passages))
    out = []
    for i, row in enumerate(rows):
        question = backend.apply_chat_template([{"role": "user", "content": str(row["question"])}])
        out.append(filler[i * 7:i * 7 + context - len(question)] + question)
    return out


def timed(backend: llm.LocalBackend, batch: list[list[int]], new_tokens: int) -> tuple[float, int]:
    params = llm.SamplingParams(max_new_tokens=new_tokens, temperature=0.0, stop=[])
    started = time.perf_counter()
    gens = backend.generate(batch, params)
    return time.perf_counter() - started, sum(len(g.token_ids) for g in gens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=600)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    backend = llm.LocalBackend(LLMSettings(model="smollm2", max_batch_size=args.batch))
    batch = prompts(backend, args.batch, args.context)
    timed(backend, batch[:2], 4)  # warm-up
    best: dict[str, float] = {}
    prefill, _ = timed(backend, batch, 1)  # the prompt pass (+1 token): the same for both, taken out
    for _ in range(args.repeats):
        for name in ("prealloc", "concat"):
            baseline = mock.patch.object(llm, "preallocate", lambda cache, extra: None)
            with baseline if name == "concat" else contextlib.nullcontext():
                seconds, tokens = timed(backend, batch, args.new_tokens)
            rate = (tokens - len(batch)) / max(seconds - prefill, 1e-6)  # decode steps only
            best[name] = max(best.get(name, 0.0), rate)
    ratio = best["prealloc"] / best["concat"]
    print(f"prompt pass: {prefill:.1f}s; decode tokens/s below exclude it")
    print(f"| KV cache | decode tokens/s (batch {args.batch}, {args.context}-token context, {args.new_tokens} new, "
          f"{backend.dtype}) |\n|---|---:|\n| preallocated | {best['prealloc']:.1f} |\n| torch.cat | {best['concat']:.1f} |")
    print(f"BENCH decode decode_tokens_per_s={best['prealloc']:.1f} decode_tokens_per_s_concat={best['concat']:.1f} "
          f"prealloc_vs_concat={ratio:.2f} batch={args.batch} context={args.context} new_tokens={args.new_tokens}")


if __name__ == "__main__":
    main()
