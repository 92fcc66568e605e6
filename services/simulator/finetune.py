"""Fine-tune the simulator LLM on real retrieval (ZeroSearch's simulator SFT).

1. **Data** (:func:`build_examples`): for each training question, real retrieval gives document
   sets (ranks 1..k, then k+1..2k, ...); each set is labelled *useful* when it contains the gold
   answer and *noisy* otherwise, by the judge service (``method="cover_em"``) or, without a judge
   URL, by the same metric in-process (:mod:`shared.metrics`). An example is (the simulator prompt
   of that label for the question, the documents as the simulator should write them).
2. **SFT** (:func:`sft`): causal-LM loss on the document tokens only (the prompt is masked out),
   AdamW with warm-up and linear decay, bf16 autocast on CPU. The result is a model folder
   (weights + tokenizer) that the service loads with ``SIMULATOR_LLM__MODEL=<folder>``.

    python -m services.simulator finetune --retriever-url http://127.0.0.1:8001 --limit 100 \\
        --out .cache/searchlab/models/simulator-sft
    python -m services.simulator finetune --index-dir <retriever index> --limit 100 --out DIR

Questions come from the *train* part of the project's split (:func:`shared.data.load_split`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.simulator.documents import Doc, format_target, window_around
from services.simulator.engine import Searcher, hit_to_doc
from services.simulator.prompts import render
from shared.client import JudgeClient
from shared.metrics import best_match
from shared.schemas import Hit, Quality, SearchMode

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


class EngineSearcher:
    """An in-process :class:`services.retriever.engine.Retriever` seen as a :class:`Searcher`."""

    def __init__(self, retriever: Any):
        self.retriever = retriever

    def retrieve(self, queries: list[str], topk: int | None = None, mode: SearchMode | None = None) -> list[list[Hit]]:
        kwargs: dict[str, Any] = {"topk": topk or 5}
        if mode is not None:
            kwargs["mode"] = mode
        return list(self.retriever.search(queries, **kwargs))


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
    bf16: bool = True  # bf16 autocast on CPU (about 2x faster than fp32 on AMX/AVX-512 machines)
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


def _tokenize(example: SimExample, tokenizer: Any, config: FinetuneConfig) -> tuple[list[int], list[int]]:
    """Input ids and labels: -100 on the prompt, the document tokens (+ end of turn) as targets."""
    prompt_text = tokenizer.apply_chat_template(example.messages(config.template, config.words),
                                                add_generation_prompt=True, tokenize=False)
    prompt = list(tokenizer(str(prompt_text), add_special_tokens=False)["input_ids"])
    target = list(tokenizer(example.target(), add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    target = target[: max(1, config.max_len - len(prompt))]
    return prompt + target, [-100] * len(prompt) + target


def sft(records: Sequence[SimExample], base_model: str | Path, out_dir: str | Path,
        config: FinetuneConfig | None = None,
        on_step: Callable[[int, int, float], None] | None = None) -> FinetuneReport:
    """Supervised fine-tuning of ``base_model`` on ``records``; saves model + tokenizer to ``out_dir``.

    ``on_step(step, total_steps, loss)`` is called after each optimizer step (progress; it may raise to stop)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.config import hf_offline
    from shared.models import resolve
    from shared.progress import progress_bar

    config = config or FinetuneConfig()
    if not records:
        raise ValueError("no fine-tuning examples")
    hf_offline()
    torch.manual_seed(config.seed)
    path = resolve(str(base_model))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.train()

    data = [_tokenize(r, tokenizer, config) for r in records]
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_ratio * total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    rng = random.Random(config.seed)
    losses: list[float] = []
    trained = 0
    start = time.perf_counter()
    pad = int(tokenizer.pad_token_id)
    with progress_bar(total=total, desc="simulator sft", unit="step") as bar:
        for _ in range(config.epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            for s in range(0, len(order), config.batch_size):
                batch = [data[i] for i in order[s:s + config.batch_size]]
                width = max(len(ids) for ids, _ in batch)
                # (B, T) right-padded; padding is neither attended to nor trained on
                input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (ids, lab) in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    labels[row, : len(lab)] = torch.tensor(lab)
                    mask[row, : len(ids)] = 1
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
                # token-mean loss over document tokens: position t predicts token t+1
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                trained += int((labels[:, 1:] != -100).sum())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if on_step is not None:
                    on_step(len(losses), total, losses[-1])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_examples(records, out / "train_examples.jsonl")
    useful = sum(r.quality == "useful" for r in records)
    report = FinetuneReport(out_dir=str(out), examples=len(records), useful=useful, noisy=len(records) - useful,
                            steps=len(losses), tokens_trained=trained, first_loss=losses[0], last_loss=losses[-1],
                            losses=losses, seconds=time.perf_counter() - start)
    (out / "simulator_sft.json").write_text(json.dumps({"config": asdict(config), "base_model": str(base_model),
                                                        "report": asdict(report)}, indent=2))
    log.info("simulator SFT: %d examples (%d useful), %d steps, loss %.3f -> %.3f, saved to %s",
             report.examples, useful, report.steps, report.first_loss, report.last_loss, out)
    return report


# --------------------------------------------------------------------------- CLI


def _searcher(args: argparse.Namespace) -> Searcher:
    if args.index_dir:
        from services.retriever.engine import Retriever

        return EngineSearcher(Retriever.load(Path(args.index_dir)))
    if args.retriever_url:
        from shared.client import RetrieverClient

        return RetrieverClient(args.retriever_url, timeout_s=120.0)
    raise SystemExit("give --retriever-url (a running retriever) or --index-dir (an index folder), "
                     "or --examples (a JSONL written by an earlier run)")


def main(argv: list[str] | None = None) -> None:
    from services.simulator.config import SimulatorSettings
    from shared.data import load_split

    p = argparse.ArgumentParser(prog="python -m services.simulator finetune", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--base-model", default="smollm2", help="'smollm2' or a model folder")
    p.add_argument("--dataset", default="hotpotqa", help="QA set whose *train* part gives the questions")
    p.add_argument("--limit", type=int, default=100, help="questions to use")
    service = SimulatorSettings()  # a cluster's SIMULATOR_RETRIEVER_URL / SIMULATOR_JUDGE_URL are the defaults
    p.add_argument("--retriever-url", default=service.retriever_url)
    p.add_argument("--index-dir", default=None, help="search in-process instead of over HTTP")
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
        labeller: Labeller = JudgeLabeller(JudgeClient(args.judge_url)) if args.judge_url else MetricLabeller()
        rows = load_split(args.dataset, "train", args.limit)
        examples = build_examples(rows, _searcher(args), labeller, k=args.k, words=config.words,
                                  sets_per_query=args.sets_per_query)
    report = sft(examples, args.base_model, args.out, config)
    log.info("done: %s", json.dumps({k: v for k, v in asdict(report).items() if k != "losses"}))


if __name__ == "__main__":
    main()
