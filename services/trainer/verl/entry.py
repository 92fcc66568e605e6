"""The Ray job a verl run is on a cluster (what :mod:`services.trainer.verl.ray_jobs` submits)::

    python -m services.trainer.verl.entry RUN_DIR [--prepare-only] [--wait-services-s 600]

1. Wait (up to ``--wait-services-s``) until every service the run names (retriever, simulator, judge)
   answers ``GET /health``: a GPU run does not start against a search backend that is not there.
2. Prepare the run again, here on the cluster, from ``RUN_DIR/run.json``: the QA / RAMP data exported to
   parquet, every stage composed in verl's config tree and validated as ``main_ppo`` validates it
   (:func:`services.trainer.verl.run.prepare`; the same files the trainer wrote, so a cluster whose
   searchlab or verl differs from the trainer's fails here, not in the middle of step 1).
3. Unless ``--prepare-only``: run ``RUN_DIR/command.sh`` (verl's ``main_ppo`` per stage; needs GPUs).

Exit status: 0 done; 2 the run does not prepare (its message says why); 3 a service never answered;
else ``command.sh``'s. Ray stops the job with SIGTERM (the process group), then SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.trainer.verl.config import VerlConfig
from services.trainer.verl.run import prepare

log = logging.getLogger("searchlab.verl.entry")


def services_of(cfg: VerlConfig) -> dict[str, str]:
    urls = {"retriever": cfg.retriever_url, "simulator": cfg.simulator_url, "judge": cfg.judge_url}
    return {name: url for name, url in urls.items() if url}


def wait_services(urls: dict[str, str], timeout_s: float, every_s: float = 2.0) -> list[str]:
    """Poll each service's ``/health`` until all answer 200 or ``timeout_s`` passes; the names still down."""
    deadline = time.monotonic() + timeout_s
    down = dict(urls)
    said = 0.0
    while True:
        for name, url in list(down.items()):
            try:
                if httpx.get(f"{url.rstrip('/')}/health", timeout=5.0).status_code == 200:
                    log.info("%s at %s answers", name, url)
                    del down[name]
            except httpx.HTTPError:
                pass
        if not down or time.monotonic() >= deadline:
            return sorted(down)
        if time.monotonic() - said >= 10:
            log.info("waiting for %s (%.0fs left)", ", ".join(f"{n} at {u}" for n, u in down.items()),
                     deadline - time.monotonic())
            said = time.monotonic()
        time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trainer.verl.entry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prepare-only", action="store_true", help="steps 1 and 2; do not run command.sh")
    parser.add_argument("--wait-services-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    spec = json.loads((args.run_dir / "run.json").read_text())
    cfg = VerlConfig.model_validate(spec["config"])
    down = wait_services(services_of(cfg), args.wait_services_s)
    if down:
        log.error("gave up after %.0fs: %s never answered /health", args.wait_services_s, ", ".join(down))
        return 3
    try:
        run = prepare(cfg, args.run_dir, spec.get("datasets"))
    except ValueError as exc:
        log.error("the run does not prepare: %s", exc)
        return 2
    for stage in run.stages:
        log.info("stage %s: %d training rows, %d steps; config valid in verl's tree", stage.name, stage.train_rows,
                 stage.total_steps)
    if args.prepare_only:
        log.info("prepared and validated %s (%s); --prepare-only: not training", run.out_dir, run.recipe)
        return 0
    log.info("running %s", run.out_dir / "command.sh")
    return subprocess.call(["bash", str(run.out_dir / "command.sh")], cwd=run.out_dir)


if __name__ == "__main__":
    sys.exit(main())
