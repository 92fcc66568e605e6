"""Local backend decode speed against what a user would otherwise call: transformers' ``model.generate``.

Same model, dtype, prompts and thread count, same run: for each batch size (``--batches``),
``batch`` prompts of ``--context`` tokens (real HotpotQA questions padded with corpus text, as an
agent's prompt with its observations), greedy, ``--new-tokens`` tokens each, one torch thread (a
rollout worker's setting). Three decoders:

- ``ours``      :meth:`shared.llm.LocalBackend.generate` (``engine="continuous"``, :mod:`shared.engine`: a KV
                row per prompt, rows of their own lengths in one forward under an explicit 4-D mask);
- ``batch``     the earlier loop (``engine="batch"``: one left-padded batch, preallocated cache written in place);
- ``hf``        ``model.generate(do_sample=False)`` on the same model object.

Each decoder's prompt pass (time to the first token) is measured on its own and taken out, so the
rates are decode steps only; the decoders take turns, and the fastest of ``--repeats`` runs counts.

    .venv/bin/python bench/decode.py [--batches 1,8,16] [--context 600] [--new-tokens 64]

Ends with ``BENCH decode … vs_hf_generate=…`` (ours / hf at the largest batch).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Literal

import torch

from shared import llm
from shared.config import LLMSettings, corpus_path
from shared.data import dataset_path, open_text, read_jsonl

Decoder = Callable[[list[list[int]], int], int]  # (prompts, new tokens) -> tokens generated


def prompts(backend: llm.LocalBackend, batch: int, context: int) -> list[list[int]]:
    rows = list(read_jsonl(dataset_path("hotpotqa")))[:batch]
    passages = [json.loads(line) for _, line in zip(range(400), open_text(corpus_path()), strict=False)]
    filler = backend.encode(" ".join(str(p.get("text", p.get("contents", ""))) for p in passages))
    out = []
    for i, row in enumerate(rows):
        question = backend.apply_chat_template([{"role": "user", "content": str(row["question"])}])
        out.append(filler[i * 7:i * 7 + context - len(question)] + question)
    return out


def ours(backend: llm.LocalBackend, engine: Literal["continuous", "batch"]) -> Decoder:
    def run(batch: list[list[int]], new_tokens: int) -> int:
        params = llm.SamplingParams(max_new_tokens=new_tokens, temperature=0.0, stop=[])
        backend.settings.engine = engine
        return sum(len(g.token_ids) for g in backend.generate(batch, params))

    return run


def hf_generate(backend: llm.LocalBackend) -> Decoder:
    """``model.generate``, greedy; tokens counted up to each row's first EOS (as ours stops there)."""
    eos = sorted(backend.eos_ids)

    def run(batch: list[list[int]], new_tokens: int) -> int:
        width = max(len(p) for p in batch)
        pad = int(backend.tokenizer.pad_token_id)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], dtype=torch.long)
        with torch.inference_mode():
            out = backend.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=pad, eos_token_id=eos)
        total = 0
        for row in out[:, width:].tolist():
            ends = [i for i, t in enumerate(row) if t in backend.eos_ids]
            total += ends[0] + 1 if ends else len(row)
        return total

    return run


def timed(decode: Decoder, batch: list[list[int]], new_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = decode(batch, new_tokens)
    return time.perf_counter() - started, tokens


def decode_rates(decoders: dict[str, Decoder], batch: list[list[int]], new_tokens: int,
                 repeats: int) -> dict[str, float]:
    """Decode tokens/s of each decoder: (tokens - first tokens) / (fastest full run - fastest prompt pass).

    The decoders take turns within each repeat (a load spike from a neighbour hits them alike) and the
    fastest of ``repeats`` is kept for both the prompt pass and the full run."""
    prefill: dict[str, float] = {}
    full: dict[str, tuple[float, int]] = {}
    for _ in range(repeats):
        for name, decode in decoders.items():
            seconds, _ = timed(decode, batch, 1)
            prefill[name] = min(prefill.get(name, seconds), seconds)
            seconds, tokens = timed(decode, batch, new_tokens)
            if name not in full or seconds < full[name][0]:
                full[name] = (seconds, tokens)
    return {name: (full[name][1] - len(batch)) / max(full[name][0] - prefill[name], 1e-3) for name in decoders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--context", type=int, default=600)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    backend = llm.LocalBackend(LLMSettings(model="smollm2", max_batch_size=max(sizes)))
    all_prompts = prompts(backend, max(sizes), args.context)
    decoders = {"ours": ours(backend, "continuous"), "batch": ours(backend, "batch"), "hf": hf_generate(backend)}
    for decode in decoders.values():  # warm-up
        decode(all_prompts[:2], 4)
    rates: dict[tuple[str, int], float] = {}
    for size in sizes:
        for name, rate in decode_rates(decoders, all_prompts[:size], args.new_tokens, args.repeats).items():
            rates[name, size] = rate
    print(f"decode tokens/s ({args.context}-token context, {args.new_tokens} new, greedy, {backend.dtype}, "
          f"1 thread; prompt pass excluded)")
    print("| batch | ours (continuous) | earlier batch loop | transformers generate | ours / generate |\n"
          "|---:|---:|---:|---:|---:|")
    for size in sizes:
        print(f"| {size} | {rates['ours', size]:.1f} | {rates['batch', size]:.1f} | {rates['hf', size]:.1f} | "
              f"{rates['ours', size] / rates['hf', size]:.2f} |")
    top = max(sizes)
    per_batch = " ".join(f"vs_hf_generate_b{s}={rates['ours', s] / rates['hf', s]:.2f}" for s in sizes)
    print(f"BENCH decode decode_tokens_per_s={rates['ours', top]:.1f} hf_generate_tokens_per_s={rates['hf', top]:.1f} "
          f"vs_hf_generate={rates['ours', top] / rates['hf', top]:.2f} {per_batch} "
          f"vs_batch_loop={rates['ours', top] / rates['batch', top]:.2f} batch={top} context={args.context} "
          f"new_tokens={args.new_tokens} dtype={backend.dtype}")


if __name__ == "__main__":
    main()
