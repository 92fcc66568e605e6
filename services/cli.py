"""``searchlab``: one console command for the whole cluster.

    searchlab up | status | down            local cluster (Redis, services, workers) on loopback
    searchlab demo [--quick] [--keep-up]    the end-to-end run: RAMP -> SFT -> RL -> eval -> report
    searchlab experiment <name> [--budget small|full] [--arms a,b]
                                            an ablation (masksearch, zerosearch, searchr1): its arms as jobs,
                                            one eval, a table with standard errors (docs/experiments.md)
    searchlab models prepare                convert/check the embedded models
    searchlab data list|import|export ...   datasets and corpora: list them, import FlashRAG/Search-R1/HF data
    searchlab index build ...               build a retriever index (FAISS + BM25)
    searchlab ramp ... | coldstart ...      MaskSearch RAMP data and cold-start trajectories
    searchlab eval ... [--policy DIR]       evaluate methods/policies on a dataset (DIR: a checkpoint; a verl
                                            checkpoint is merged to an HF folder first)
    searchlab train <kind> --config ...     submit a job to the running cluster's trainer
    searchlab train --engine verl --recipe {search_r1,research,zerosearch,masksearch} --out DIR ...
                                            write + validate a verl run (--dry-run: print its command)
    searchlab worker                        run one rollout worker
    searchlab simulator finetune ...        fine-tune the search simulator
    searchlab serve <service>               run one service in the foreground
    searchlab tensorboard [--logdir DIR]    TensorBoard over every job's folder (local and verl runs)

Each verb forwards its remaining arguments to the module that owns the work.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence

from shared.config import hf_offline

log = logging.getLogger("searchlab")


def _call(target: str, argv: Sequence[str]) -> int:
    module_name, func = target.split(":")
    module = importlib.import_module(module_name)
    fn: Callable[[list[str]], int | None] = getattr(module, func)
    return int(fn(list(argv)) or 0)


def _up(argv: Sequence[str]) -> int:
    from services import cluster

    parser = argparse.ArgumentParser(prog="searchlab up", description="start the local cluster on loopback")
    parser.add_argument("--workers", type=int, help="rollout worker processes")
    parser.add_argument("--base-port", type=int, help="first service port (0 = free ports)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"workers": args.workers, "base_port": args.base_port}.items() if v is not None}
    state = cluster.up(cluster.ClusterSettings(**overrides))
    for name, url in state.urls.items():
        log.info("%-10s %s", name, url)
    log.info("cluster ready; logs in %s/logs; stop with `searchlab down`", state.run_dir)
    if "trainer" in state.urls:
        log.info("dashboard: %s/ (sign in with api_keys.trainer of %s)", state.urls["trainer"], cluster.state_path())
    return 0


def _status(argv: Sequence[str]) -> int:
    from services import cluster

    report = cluster.status()
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["ready"] else 1


def _down(argv: Sequence[str]) -> int:
    from services import cluster

    stopped = cluster.down()
    log.info("stopped: %s", ", ".join(stopped) if stopped else "nothing was running")
    return 0


def _tensorboard(argv: Sequence[str]) -> int:
    import subprocess

    from services.trainer.config import TrainerSettings

    parser = argparse.ArgumentParser(prog="searchlab tensorboard",
                                     description="TensorBoard over the trainer's jobs folder: each job's tensorboard/ "
                                                 "(local engine and verl runs alike) is one run")
    parser.add_argument("--logdir", type=str, default=None,
                        help="folder to read (default: the trainer's jobs folder, TRAINER_OUTPUT_DIR or <cache>/jobs)")
    parser.add_argument("--port", type=int, default=6006)
    parser.add_argument("--host", default="127.0.0.1")
    args, extra = parser.parse_known_args(argv)
    logdir = args.logdir or str(TrainerSettings().jobs_dir())
    log.info("TensorBoard on http://%s:%d/ over %s", args.host, args.port, logdir)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", args.host,
               "--port", str(args.port), *extra]
    return subprocess.call(command)


def _models(argv: Sequence[str]) -> int:
    from shared.models import prepare_all

    if list(argv) != ["prepare"]:
        sys.stderr.write("usage: searchlab models prepare\n")
        return 2
    for name, path in prepare_all().items():
        log.info("%-8s %s", name, path)
    return 0


def _serve(argv: Sequence[str]) -> int:
    names = ("retriever", "judge", "simulator", "trainer")
    if len(argv) != 1 or argv[0] not in names:
        sys.stderr.write(f"usage: searchlab serve {{{','.join(names)}}}\n")
        return 2
    import runpy

    runpy.run_module(f"services.{argv[0]}", run_name="__main__")
    return 0


def _take(argv: list[str], flag: str) -> list[str]:
    """Remove every ``flag VALUE`` pair from ``argv``; the values, in order."""
    values = []
    while flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            raise SystemExit(f"{flag} needs a value")
        values.append(argv[i + 1])
        del argv[i:i + 2]
    return values


def _eval(argv: Sequence[str]) -> int:
    """``--policy DIR`` adds ``policy:DIR`` to the methods; a verl checkpoint is merged to HF once first."""
    from services.trainer.verl.checkpoint import ensure_hf, is_verl_checkpoint

    args = list(argv)
    policies = [str(ensure_hf(p)) if is_verl_checkpoint(p) else p for p in _take(args, "--policy")]
    if policies:
        methods = (_take(args, "--methods") or ["direct,rag,agent"])[-1]
        args += ["--methods", ",".join([methods, *(f"policy:{p}" for p in policies)])]
    return _call("services.trainer.eval.harness:main", args)


def _train(argv: Sequence[str]) -> int:
    """``--engine verl``: the verl run writer; ``--engine local`` (or none): a job on the cluster's trainer."""
    args = list(argv)
    engines = _take(args, "--engine")
    engine = engines[-1] if engines else "local"
    if engine == "verl":
        return _call("services.trainer.verl.run:main", args)
    if engine != "local":
        sys.stderr.write(f"unknown engine '{engine}'; valid: local, verl\n")
        return 2
    return _call("services.demo:train_main", args)


def _two_words(prefix: str, table: dict[str, str]) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        if not argv or argv[0] not in table:
            sys.stderr.write(f"usage: searchlab {prefix} {{{','.join(table)}}} ...\n")
            return 2
        return _call(table[argv[0]], argv[1:])

    return run


VERBS: dict[str, Callable[[Sequence[str]], int]] = {
    "up": _up,
    "status": _status,
    "down": _down,
    "tensorboard": _tensorboard,
    "models": _models,
    "serve": _serve,
    "data": lambda argv: _call("services.data_cli:main", argv),
    "index": _two_words("index", {"build": "services.retriever.__main__:build_main"}),
    "simulator": _two_words("simulator", {"finetune": "services.trainer.learn.simulator_sft:main"}),
    "ramp": lambda argv: _call("services.trainer.data.__main__:main", ["ramp", *argv]),
    "coldstart": lambda argv: _call("services.trainer.data.__main__:main", ["coldstart", *argv]),
    "eval": _eval,
    "worker": lambda argv: _call("services.trainer.rollout.worker:main", argv),
    "train": _train,
    "demo": lambda argv: _call("services.demo:main", argv),
    "experiment": lambda argv: _call("services.experiments.run:main", argv),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    hf_offline()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        sys.stderr.write(__doc__ or "")
        if argv and argv[0] not in ("-h", "--help"):
            sys.stderr.write(f"\nunknown verb '{argv[0]}'; valid: {', '.join(VERBS)}\n")
            return 2
        return 0
    return VERBS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
