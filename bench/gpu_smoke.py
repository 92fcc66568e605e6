"""The local engine on a GPU: one SFT step, one RL step and a batched generation, on CUDA and on the CPU.

    python bench/gpu_smoke.py                  # every device here: cuda (if visible) and cpu
    python bench/gpu_smoke.py --device cpu     # one device
    python bench/gpu_smoke.py --layers 8 --hidden 512 --batch 16 --seq 512 --json out.json

The model is a Llama made from a config (``shared.models.small_model``: SmolLM2's vocabulary, random
weights; nothing is downloaded), written once to a temp folder and loaded the way jobs load policies:

- **SFT**: ``learn.policy.train_supervised`` (the ``sft`` job's loop: masked NLL, bf16 autocast on the
  device, AdamW) over synthetic records of ``--seq`` tokens, a quarter of them prompt (mask 0);
  ``--steps`` optimizer steps after one warm-up step; trained tokens/s.
- **RL**: ``learn.rl.RLTrainer.update`` (the ``rl`` job's update: log-probs recomputed with grad, GRPO
  advantages, verl's clipped loss, AdamW) on ``--batch`` synthetic episodes in groups of 4 with random
  rewards; the episode queue is not involved (its publish is a no-op here); response tokens/s.
- **generation**: ``shared.llm.LocalBackend.generate`` (the workers' batched decode with a KV cache) of
  ``--batch`` prompts x ``--new-tokens``; generated tokens/s.

Ends with one line per device:

    BENCH gpu_smoke device=cuda sft_tokens_per_s=… rl_tokens_per_s=… gen_tokens_per_s=…
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def sft_step(model_dir: Path, device: str, args: argparse.Namespace) -> float:
    from services.trainer.learn.policy import LoopSpec, OptimSpec, load_policy, train_supervised

    model, tokenizer = load_policy(str(model_dir), device=device)  # type: ignore[arg-type]
    rng = random.Random(0)
    vocab = len(tokenizer)
    prompt = args.seq // 4
    examples = [([rng.randrange(vocab) for _ in range(args.seq)], [0] * prompt + [1] * (args.seq - prompt))
                for _ in range(args.batch * (args.steps + 1))]
    spec = LoopSpec(steps=1, micro_batch_size=args.batch, dtype="bfloat16")
    train_supervised(model, tokenizer, examples[:args.batch], spec, OptimSpec())  # warm-up (kernels, allocator)
    _sync(device)
    spec = LoopSpec(steps=args.steps, micro_batch_size=args.batch, dtype="bfloat16")
    started = time.perf_counter()
    report = train_supervised(model, tokenizer, examples[args.batch:], spec, OptimSpec())
    _sync(device)
    return report.tokens / (time.perf_counter() - started)


class _NoQueue:
    """The RL trainer's view of the queue, for an update-only step: publishing a version does nothing."""

    def __init__(self) -> None:
        from shared.schemas import PolicyRef

        self.policy = PolicyRef(owner="bench", version=0, path="")

    def publish(self, version: int, path: Path) -> Any:
        return self.policy


def rl_step(model_dir: Path, device: str, args: argparse.Namespace, out: Path) -> float:
    from services.trainer.learn.rl import RLConfig, RLTrainer
    from shared.schemas import EpisodeResult

    config = RLConfig(model=str(model_dir), device=device, micro_batch_size=args.batch,  # type: ignore[arg-type]
                      batch_size=max(1, args.batch // 4), group_size=4)
    trainer = RLTrainer(config, "bench", out, _NoQueue())  # type: ignore[arg-type]
    rng = random.Random(1)
    vocab = len(trainer.tokenizer)
    prompt, response = args.seq // 4, args.seq - args.seq // 4

    def episodes() -> list[EpisodeResult]:
        return [EpisodeResult(job_id="bench", episode_id=f"e{i}", group_id=f"g{i // 4}",
                              prompt_ids=[rng.randrange(vocab) for _ in range(prompt)],
                              response_ids=[rng.randrange(vocab) for _ in range(response)],
                              loss_mask=[1] * response, logprobs=[-5.0] * response, reward=float(rng.random() < 0.5))
                for i in range(args.batch)]

    trainer.update(episodes())  # warm-up
    _sync(device)
    started = time.perf_counter()
    tokens = 0
    for _ in range(args.steps):
        tokens += int(trainer.update(episodes())["trained_tokens"])
    _sync(device)
    return tokens / (time.perf_counter() - started)


def generation(model_dir: Path, device: str, args: argparse.Namespace) -> float:
    from shared.config import LLMSettings
    from shared.llm import LocalBackend, SamplingParams

    backend = LocalBackend(LLMSettings(model=str(model_dir), device=device, dtype="auto",  # type: ignore[arg-type]
                                       max_batch_size=args.batch))
    rng = random.Random(2)
    vocab = len(backend.tokenizer)
    prompts = [[rng.randrange(vocab) for _ in range(args.seq // 4)] for _ in range(args.batch)]
    # no EOS: a random model must not stop early, so every row decodes --new-tokens tokens
    backend.eos_ids = set()
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    backend.generate(prompts, SamplingParams(max_new_tokens=4))  # warm-up
    _sync(device)
    started = time.perf_counter()
    out = backend.generate(prompts, sampling)
    _sync(device)
    return sum(len(g.token_ids) for g in out) / (time.perf_counter() - started)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: cuda (when a GPU is visible) and cpu, side by side")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step / prompts per generation")
    parser.add_argument("--seq", type=int, default=256, help="tokens per training sequence")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps (after one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    from shared.models import small_model

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("--device cuda: no CUDA GPU is visible here\n")
        return 2
    devices = ["cuda", "cpu"] if args.device == "auto" and torch.cuda.is_available() else \
        ["cpu"] if args.device == "auto" else [args.device]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        model_dir = small_model(Path(tmp) / "model", layers=args.layers, hidden=args.hidden,
                                heads=max(1, args.hidden // 64))
        for device in devices:
            row = {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "",
                   "sft_tokens_per_s": sft_step(model_dir, device, args),
                   "rl_tokens_per_s": rl_step(model_dir, device, args, Path(tmp) / f"rl-{device}"),
                   "gen_tokens_per_s": generation(model_dir, device, args)}
            rows.append(row)
            print(f"{device:5s} {row['gpu'] or '':24s} SFT {row['sft_tokens_per_s']:10.0f} tok/s   "
                  f"RL {row['rl_tokens_per_s']:10.0f} tok/s   generation {row['gen_tokens_per_s']:8.0f} tok/s")
    config = {k: getattr(args, k) for k in ("layers", "hidden", "batch", "seq", "new_tokens", "steps")}
    if args.json:
        args.json.write_text(json.dumps({"config": config, "results": rows}, indent=2) + "\n")
    for row in rows:
        print(f"BENCH gpu_smoke device={row['device']} sft_tokens_per_s={row['sft_tokens_per_s']:.0f} "
              f"rl_tokens_per_s={row['rl_tokens_per_s']:.0f} gen_tokens_per_s={row['gen_tokens_per_s']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
