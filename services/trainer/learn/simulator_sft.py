"""Fine-tune the simulator LLM on real retrieval (ZeroSearch's simulator SFT).

1. **Data** (:func:`build_examples`): for each training question, real retrieval gives document
   sets (ranks 1..k, then k+1..2k, ...); each set is labelled *useful* when it contains the gold
   answer and *noisy* otherwise, by the judge service (``method="cover_em"``) or, without a judge
   URL, by the same metric in-process (:mod:`shared.metrics`). An example is (the simulator prompt
   of that label for the question, the documents as the simulator should write them).
2. **SFT** (:func:`sft`): causal-LM loss on the document tokens only (the prompt is masked out),
   AdamW with warm-up and linear decay, bf16 autocast where the CPU has it natively: the same loop as the agent's SFT
   (:func:`services.trainer.learn.policy.train_supervised`). The result is a model folder
   (weights + tokenizer) that the service loads with ``SIMULATOR_LLM__MODEL=<folder>``.

    searchlab simulator finetune --retriever-url http://127.0.0.1:8001 --limit 100 \\
        --out .cache/searchlab/models/simulator-sft
    searchlab simulator finetune --examples train_examples.jsonl --out DIR   # examples of an earlier run

Retrieval is over HTTP (:class:`shared.client.RetrieverClient`): the trainer never loads another
service's index in-process.

Questions come from the *train* part of the project's split (:func:`shared.data.load_split`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.trainer.learn.policy import (
    LoopSpec,
    OptimSpec,
    Tokenized,
    load_policy,
    save_checkpoint,
    steps_for,
    train_supervised,
)
from shared.client import JudgeClient
from shared.keys import ClientKeyEnv, ServiceKeys
from shared.metrics import best_match
from shared.schemas import Hit, Quality, SearchMode
from shared.simulation.documents import Doc, format_target, hit_to_doc, window_around
from shared.simulation.prompts import render

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- examples


@dataclass
class SimExample:
    """One supervised example: the prompt of ``quality`` for ``query`` and the documents to write."""

    query: str
    question: str
    gold: list[str]
    quality: Quality
    documents: list[dict[str, str]]  # [{"title", "text"}], in rank order
    source_ids: list[str] = field(default_factory=list)  # corpus ids of the documents

    def messages(self, template: str, words: int) -> list[dict[str, str]]:
        return render(template, self.quality, self.query, len(self.documents), words, self.question, self.gold)

    def target(self) -> str:
        return format_target([Doc(d["title"], d["text"]) for d in self.documents])


class Searcher(Protocol):
    """Real retrieval as the examples see it: :class:`shared.client.RetrieverClient` fits."""

    def retrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None) -> list[list[Hit]]: ...


class Labeller(Protocol):
    def contains_gold(self, items: Sequence[tuple[str, list[str], str]]) -> list[bool]:
        """For each (question, gold, documents text): does the text hold the gold answer?"""
        ...


class MetricLabeller:
    """Cover-EM from :mod:`shared.metrics`, in-process (what the judge's ``cover_em`` method computes)."""

    def contains_gold(self, items: Sequence[tuple[str, list[str], str]]) -> list[bool]:
        return [best_match(text, gold, "cover_em").score > 0 for _, gold, text in items]


class JudgeLabeller:
    """The judge service, ``method="cover_em"``, in batches."""

    def __init__(self, client: JudgeClient, batch_size: int = 64):
        self.client = client
        self.batch_size = batch_size

    def contains_gold(self, items: Sequence[tuple[str, list[str], str]]) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            body = [{"question": q, "gold": g, "prediction": p} for q, g, p in chunk]
            out += [s > 0 for s in self.client.judge(body, method="cover_em").scores]
        return out


def build_examples(rows: Sequence[dict[str, Any]], searcher: Searcher, labeller: Labeller, k: int = 5,
                   words: int = 30, sets_per_query: int = 2, batch_size: int = 64,
                   mode: SearchMode | None = None) -> list[SimExample]:
    """(query, documents, useful|noisy) examples from real retrieval for QA ``rows``.

    The query is the question; set ``j`` is ranks ``j*k+1 .. (j+1)*k``. Each passage is cut to a
    window of ``words`` words (around a gold answer when it holds one), i.e. the documents the
    simulator should write; the label is about those windows.
    """
    rows = [r for r in rows if r.get("question") and r.get("answers")]
    examples: list[SimExample] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        hits = searcher.retrieve([str(r["question"]) for r in chunk], topk=k * sets_per_query, mode=mode)
        pending: list[SimExample] = []
        for row, row_hits in zip(chunk, hits, strict=True):
            gold = [str(a) for a in row["answers"]]
            docs = [hit_to_doc(h) for h in row_hits]
            for j in range(sets_per_query):
                window = docs[j * k:(j + 1) * k]
                if len(window) < k:
                    break
                pending.append(SimExample(
                    query=str(row["question"]), question=str(row["question"]), gold=gold, quality="useful",
                    documents=[{"title": d.title, "text": window_around(d.text, words, gold)} for d in window],
                    source_ids=[d.id for d in window]))
        labels = labeller.contains_gold(
            [(e.question, e.gold, " ".join(d["text"] for d in e.documents)) for e in pending])
        for example, useful in zip(pending, labels, strict=True):
            example.quality = "useful" if useful else "noisy"
        examples += pending
    return examples


def save_examples(examples: Sequence[SimExample], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")


def load_examples(path: Path) -> list[SimExample]:
    with open(path, encoding="utf-8") as f:
        return [SimExample(**json.loads(line)) for line in f if line.strip()]


# --------------------------------------------------------------------------- SFT


@dataclass
class FinetuneConfig:
    epochs: int = 1  # passes over the examples
    lr: float = 5e-5  # AdamW peak learning rate
    batch_size: int = 4  # examples per optimizer step
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm
    max_len: int = 768  # prompt + target tokens; longer targets are cut at the end
    bf16: bool = True  # bf16 autocast where the CPU computes it natively (AMX / AVX512-BF16; elsewhere it is emulated, ~20x slower)
    seed: int = 0
    template: str = "zerosearch"  # prompt template family the service will use
    words: int = 30  # words per document named in the prompt


@dataclass
class FinetuneReport:
    out_dir: str
    examples: int
    useful: int
    noisy: int
    steps: int
    tokens_trained: int  # target tokens that carried loss
    first_loss: float
    last_loss: float
    losses: list[float]
    seconds: float


def _tokenize(example: SimExample, tokenizer: Any, config: FinetuneConfig) -> Tokenized:
    """Input ids and loss mask: 0 on the prompt, 1 on the document tokens (+ end of turn), the targets."""
    prompt_text = tokenizer.apply_chat_template(example.messages(config.template, config.words),
                                                add_generation_prompt=True, tokenize=False)
    prompt = list(tokenizer(str(prompt_text), add_special_tokens=False)["input_ids"])
    target = list(tokenizer(example.target(), add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    target = target[: max(1, config.max_len - len(prompt))]
    return prompt + target, [0] * len(prompt) + [1] * len(target)


def sft(records: Sequence[SimExample], base_model: str | Path, out_dir: str | Path,
        config: FinetuneConfig | None = None,
        on_step: Callable[[int, int, float], None] | None = None) -> FinetuneReport:
    """Supervised fine-tuning of ``base_model`` on ``records``; saves model + tokenizer to ``out_dir``.

    ``on_step(step, total_steps, loss)`` is called after each optimizer step (progress; it may raise to stop)."""
    import torch

    config = config or FinetuneConfig()
    if not records:
        raise ValueError("no fine-tuning examples")
    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(str(base_model))
    data = [_tokenize(r, tokenizer, config) for r in records]
    total = steps_for(len(data), config.epochs, config.batch_size)
    spec = LoopSpec(steps=total, micro_batch_size=config.batch_size, dtype="auto" if config.bf16 else "float32",
                    lr_floor=0.0, seed=config.seed)
    optim = OptimSpec(lr=config.lr, weight_decay=config.weight_decay, max_grad_norm=config.grad_clip,
                      warmup_steps=max(1, int(config.warmup_ratio * total)))
    loop = train_supervised(model, tokenizer, data, spec, optim,
                            on_step=(lambda step, n, m: on_step(step, n, m["loss"])) if on_step else None)

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, tokenizer, out)
    save_examples(records, out / "train_examples.jsonl")
    useful = sum(r.quality == "useful" for r in records)
    report = FinetuneReport(out_dir=str(out), examples=len(records), useful=useful, noisy=len(records) - useful,
                            steps=loop.steps, tokens_trained=loop.tokens, first_loss=loop.losses[0],
                            last_loss=loop.losses[-1], losses=loop.losses, seconds=loop.seconds)
    (out / "simulator_sft.json").write_text(json.dumps({"config": asdict(config), "base_model": str(base_model),
                                                        "report": asdict(report)}, indent=2))
    log.info("simulator SFT: %d examples (%d useful), %d steps, loss %.3f -> %.3f, saved to %s",
             report.examples, useful, report.steps, report.first_loss, report.last_loss, out)
    return report


# --------------------------------------------------------------------------- CLI


def _keys() -> ServiceKeys:
    """The services' bearer tokens: ``SEARCHLAB_RETRIEVER_API_KEY`` / ``SEARCHLAB_JUDGE_API_KEY``, else
    ``SEARCHLAB_API_KEY`` (as every client of a cluster reads them)."""
    return ClientKeyEnv().keys()


def _searcher(args: argparse.Namespace) -> Searcher:
    if args.retriever_url:
        from shared.client import RetrieverClient

        return RetrieverClient(args.retriever_url, _keys().of("retriever"), timeout_s=120.0)
    raise SystemExit("give --retriever-url (a running retriever, e.g. `searchlab up`'s) "
                     "or --examples (a JSONL written by an earlier run)")


def main(argv: list[str] | None = None) -> None:
    from services.trainer.config import TrainerSettings
    from shared.data import load_split

    p = argparse.ArgumentParser(prog="searchlab simulator finetune", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--base-model", default="smollm2", help="'smollm2' or a model folder")
    p.add_argument("--dataset", default="hotpotqa", help="QA set whose *train* part gives the questions")
    p.add_argument("--limit", type=int, default=100, help="questions to use")
    service = TrainerSettings()  # a cluster's TRAINER_RETRIEVER_URL / TRAINER_JUDGE_URL are the defaults
    p.add_argument("--retriever-url", default=service.retriever_url)
    p.add_argument("--judge-url", default=service.judge_url, help="label with the judge service (else shared.metrics)")
    p.add_argument("--examples", type=Path, default=None, help="train on this examples JSONL instead of building")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--sets-per-query", type=int, default=2)
    for name, default in asdict(FinetuneConfig()).items():
        if name not in ("seed",) and not isinstance(default, bool):
            p.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = FinetuneConfig(**{n: getattr(args, n) for n in asdict(FinetuneConfig()) if n != "bf16"},
                            bf16=not args.no_bf16)
    if args.examples:
        examples = load_examples(args.examples)
    else:
        labeller: Labeller = (JudgeLabeller(JudgeClient(args.judge_url, _keys().of("judge"))) if args.judge_url
                              else MetricLabeller())
        rows = load_split(args.dataset, "train", args.limit)
        examples = build_examples(rows, _searcher(args), labeller, k=args.k, words=config.words,
                                  sets_per_query=args.sets_per_query)
    from shared.progress import progress_bar

    bars: list[Any] = []

    def progress(step: int, total: int, loss: float) -> None:
        if not bars:
            bars.append(progress_bar(total=total, desc="simulator sft", unit="step"))
        bars[0].update(1)
        bars[0].set_postfix(loss=f"{loss:.3f}")

    report = sft(examples, args.base_model, args.out, config, on_step=progress)
    for bar in bars:
        bar.close()
    log.info("done: %s", json.dumps({k: v for k, v in asdict(report).items() if k != "losses"}))


if __name__ == "__main__":
    main()
