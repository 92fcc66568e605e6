"""Data pipeline CLI.

    python -m services.trainer.data ramp --samples 20000 --selector heuristic --strategy random --seed 0
    python -m services.trainer.data ramp --max-passages 200 --samples 300 --strategy ppl --out /tmp/ramp_ppl
    python -m services.trainer.data coldstart --retriever-url http://127.0.0.1:8001 \\
        --ramp /path/to/ramp.jsonl --ramp-limit 500 --qa hotpotqa --out /tmp/coldstart
    python -m services.trainer.data coldstart --method agents --llm-url http://127.0.0.1:30000 \
        --llm-model Qwen/Qwen2.5-72B-Instruct --judge-url http://127.0.0.1:8002 --retriever-url ... --qa hotpotqa

Outputs go under ``<cache>/ramp/<name>`` / ``<cache>/coldstart/<name>`` unless ``--out`` is given;
a Markdown report sits next to the data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from services.trainer.data.coldstart import ColdStartConfig, build_coldstart
from services.trainer.data.ramp import RampConfig, build_ramp
from shared.config import LLMSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.trainer.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("ramp", help="build a RAMP (masked passage) dataset")
    r.add_argument("--corpus", help="JSONL corpus (default: the shared 17,600-passage corpus)")
    r.add_argument("--out", help="output folder (default: <cache>/ramp/<name>)")
    r.add_argument("--name", default="default")
    r.add_argument("--samples", type=int, default=20_000)
    r.add_argument("--samples-per-passage", type=int, default=2)
    r.add_argument("--max-passages", type=int)
    r.add_argument("--selector", choices=["heuristic", "llm"], default="heuristic")
    r.add_argument("--strategy", choices=["random", "ppl"], default="random")
    r.add_argument("--mask-counts", default="1,2,3,4", help="comma-separated allowed mask counts")
    r.add_argument("--answer-format", choices=["spans", "paragraph"], default="spans")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--llm-backend", choices=["local", "openai"], default="local")
    r.add_argument("--llm-model", default="smollm2")
    r.add_argument("--llm-base-url")
    r.add_argument("--no-parquet", action="store_true")

    c = sub.add_parser("coldstart", help="scripted cold-start SFT trajectories with real retrieval")
    c.add_argument("--retriever-url", required=True)
    c.add_argument("--ramp", help="RAMP samples JSONL to make trajectories for")
    c.add_argument("--ramp-limit", type=int, default=1000)
    c.add_argument("--qa", action="append", default=[], help="QA set with supporting passages (train part)")
    c.add_argument("--qa-limit", type=int, default=1000)
    c.add_argument("--topk", type=int, default=3)
    c.add_argument("--exclude-source", action="store_true", help="drop the masked passage from RAMP results")
    c.add_argument("--method", choices=["scripted", "agents"], default="scripted",
                   help="scripted trajectories, or planner/rewriter/observer LLM agents kept by the judge")
    c.add_argument("--llm-url", help="agents: the OpenAI-compatible server (SGLang, vLLM, transformers serve)")
    c.add_argument("--llm-model", default="smollm2", help="agents: the served model's name")
    c.add_argument("--judge-url", help="agents: the judge service that keeps the correct trajectories")
    c.add_argument("--judge-method", default="llm", help="agents: llm | em | f1 | acc | cover_em | recall")
    c.add_argument("--out", help="output folder (default: <cache>/coldstart/<name>)")
    c.add_argument("--name", default="default")
    c.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = _parser().parse_args(argv)
    if args.command == "ramp":
        cfg = RampConfig(
            corpus=args.corpus, out_dir=args.out, name=args.name, samples=args.samples,
            samples_per_passage=args.samples_per_passage, max_passages=args.max_passages,
            selector=args.selector, strategy=args.strategy,
            mask_counts=[int(k) for k in args.mask_counts.split(",")], answer_format=args.answer_format,
            seed=args.seed, parquet=not args.no_parquet,
            llm=LLMSettings(backend=args.llm_backend, model=args.llm_model, base_url=args.llm_base_url),
        )
        report = build_ramp(cfg)
    else:
        ccfg = ColdStartConfig(
            retriever_url=args.retriever_url, ramp_path=args.ramp, ramp_limit=args.ramp_limit, qa=args.qa,
            qa_limit=args.qa_limit, topk=args.topk, exclude_source=args.exclude_source, out_dir=args.out,
            name=args.name, seed=args.seed, method=args.method,
            agents={"llm": {"base_url": args.llm_url, "model": args.llm_model}, "judge_url": args.judge_url,
                    "judge_method": args.judge_method},
        )
        report = build_coldstart(ccfg)
    summary = {k: v for k, v in report.items() if k not in ("examples", "config")}
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
