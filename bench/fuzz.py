"""Fuzz every service's HTTP API from its own OpenAPI schema: no input makes a server error.

    .venv/bin/python bench/fuzz.py [--examples 50] [--max-time 120] [--out DIR]

Starts, on loopback, a real Redis, the retriever (the shipped corpus's flat index, built once into the
cache), the judge (the embedded SmolLM2, short verdicts), the simulator (corpus mode over that retriever)
and the trainer (its own job folder; one job at a time), every one keyed. Then `schemathesis run` (its
real CLI, a pinned test dependency) against each ``/openapi.json`` with the checks

- ``not_a_server_error``: no response >= 500 (a full queue's 503 would count too: the sizes here keep
  every queue short of full, so any 5xx is a defect);
- ``negative_data_rejection``: a request that violates the schema is answered 4xx, never accepted;

for the retriever, judge, simulator and trainer with the right key, and the trainer with a wrong key
(everything but the open routes must be a 401); jobs the fuzzer submits are cancelled as they appear
(their event streams would otherwise stay open for a whole run). ``--examples`` cases per operation, ``--max-time``
seconds per target at most. Then the judge's ``/health`` is timed while the largest rule request it
accepts is scored (it must stay under 1 s).

A table per target, then one line:

    BENCH fuzz operations=… cases=… server_errors=0 schema_violations_accepted=0 health_max_ms=…
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from shared.config import corpus_path
from shared.processes import Proc, start_redis, start_service

KEY = "fuzz-key"
CHECKS = "not_a_server_error,negative_data_rejection"
# A body over the service's size limit is refused with 413 before it is parsed: a rejection like any other.
CONFIG = """[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
"""
FAILURE_TYPES = {  # the JSON report's failure types (schemathesis/failure_codes.py) of each check
    "server_errors": ("ServerError", "ContentTypeServerError"),
    "violations_accepted": ("AcceptedNegativeData",),
}


def start_cluster(work: Path, index: Path | None) -> dict[str, Proc]:
    """Redis and the four services, keyed, on loopback (``index``: None, the shipped corpus's, as
    ``searchlab up`` builds and caches it)."""
    from services.retriever.config import corpus_index_dir
    from services.retriever.index import ensure_index

    logs = work / "logs"
    procs: dict[str, Proc] = {"redis": start_redis(log_dir=logs)}
    if index is None:
        index = Path(ensure_index(corpus_path(), corpus_index_dir(corpus_path())))
    common = {"SEARCHLAB_REDIS_URL": procs["redis"].url, "HF_HUB_OFFLINE": "1"}
    procs["retriever"] = start_service("retriever", {**common, "RETRIEVER_INDEX_DIR": str(index),
                                                     "RETRIEVER_API_KEY": KEY}, log_dir=logs)
    procs["judge"] = start_service("judge", {**common, "JUDGE_API_KEY": KEY, "JUDGE_LLM__BACKEND": "local",
                                             "JUDGE_MAX_NEW_TOKENS": "4", "JUDGE_MAX_ITEMS": "8"},
                                   log_dir=logs, timeout_s=300)
    procs["simulator"] = start_service("simulator", {
        **common, "SIMULATOR_API_KEY": KEY, "SIMULATOR_MODE": "corpus", "SIMULATOR_RETRIEVER_URL": procs["retriever"].url,
        "SIMULATOR_RETRIEVER_API_KEY": KEY}, log_dir=logs)
    procs["trainer"] = start_service("trainer", {
        **common, "TRAINER_API_KEY": KEY, "TRAINER_SERVICE_API_KEY": KEY, "TRAINER_REDIS_URL": procs["redis"].url,
        "TRAINER_OUTPUT_DIR": str(work / "jobs"), "TRAINER_RETRIEVER_URL": procs["retriever"].url,
        "TRAINER_JUDGE_URL": procs["judge"].url, "TRAINER_MAX_RUNNING": "1", "TRAINER_TORCH_THREADS": "1",
        "TRAINER_RESUME_QUEUED": "false"}, log_dir=logs)
    return procs


def fuzz(url: str, key: str, examples: int, max_time: float, report: Path) -> dict[str, Any]:
    """One ``schemathesis run`` against ``url``'s schema; its JSON report, summarised."""
    exe = Path(sys.executable).parent / "schemathesis"
    config = report.parent / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [str(exe), "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", CHECKS, "-n", str(examples),
           "--max-time", str(int(max_time)), "--request-timeout", "120", "--header", f"Authorization: Bearer {key}",
           "--seed", "1", "--no-color", "--report", "json", "--report-json-path", str(report),
           "--suppress-health-check", "all", "--workers", "1"]
    # in the work folder: schemathesis keeps its crash cache (.schemathesis/) in its working directory
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 600, check=False,
                          cwd=report.parent)
    if not report.is_file():
        raise RuntimeError(f"schemathesis wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-2000:]}")
    report.with_suffix(".txt").write_text(done.stdout + done.stderr)  # the CLI's own account, with curl repros
    data = json.loads(report.read_text())
    failures = data.get("failures") or []
    counts = {kind: sum(f.get("count", 1) for f in failures if f.get("type") in types)
              for kind, types in FAILURE_TYPES.items()}
    return {"operations": data["operations"]["tested"], "cases": data["test_cases"]["generated"], **counts,
            "other_failures": sum(f.get("count", 1) for f in failures) - sum(counts.values()),
            "network_errors": sum(e.get("count", 1) for e in data.get("errors") or []),
            "failures": failures, "details": _failures_section(done.stdout)}


class JobCanceller:
    """Cancels every job the fuzzer manages to submit, while it fuzzes the trainer: its event stream
    (``GET /jobs/{id}/events``) stays open until the job's final state, so a job left running would hold
    one request for the job's whole run. The fuzz suite is about the handling of input, not about jobs."""

    def __init__(self, url: str, key: str):
        self.url, self.headers = url, {"Authorization": f"Bearer {key}"}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            while not self.stop.wait(0.3):
                try:
                    jobs = client.get("/jobs").json()["jobs"]
                    for job in jobs:
                        if job["state"] in ("queued", "running"):
                            client.post(f"/jobs/{job['id']}/cancel")
                except httpx.HTTPError:
                    continue

    def __enter__(self) -> JobCanceller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _failures_section(output: str) -> str:
    """The FAILURES part of schemathesis's output (each case with its reproducing curl command)."""
    start = output.find("= FAILURES =")
    end = output.find("= WARNINGS =", start) if start >= 0 else -1
    return output[start:end if end > 0 else None][:6000] if start >= 0 else ""


def health_under_maximal_judge(judge: Proc) -> float:
    """Max seconds of ``/health`` while the largest rule request the judge accepts is scored."""
    golds = [f"gold{i:04d}" for i in range(256)]
    body = {"method": "f1", "items": [{"gold": golds, "prediction": ("word, " * 1400)[:8000]}] * 9}
    headers = {"Authorization": f"Bearer {KEY}"}
    worker = threading.Thread(target=lambda: httpx.post(judge.url + "/judge", json=body, headers=headers,
                                                         timeout=300))
    worker.start()
    worst = 0.0
    while worker.is_alive():
        started = time.monotonic()
        httpx.get(judge.url + "/health", timeout=30)
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=50, help="cases per operation")
    p.add_argument("--max-time", type=float, default=120.0, help="seconds per target at most")
    p.add_argument("--out", type=Path, default=None, help="keep the reports and logs here")
    p.add_argument("--index", type=Path, default=None, help="a built retriever index (default: the shipped corpus's)")
    args = p.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    procs = start_cluster(work, args.index)
    results: dict[str, dict[str, Any]] = {}
    try:
        targets = [(name, procs[name].url, KEY) for name in ("retriever", "judge", "simulator", "trainer")]
        targets.append(("trainer (wrong key)", procs["trainer"].url, "wrong-key"))
        for name, url, key in targets:
            print(f"fuzzing {name} ...", end=" ", flush=True)
            started = time.monotonic()
            report = work / f"{name.split()[0]}-{key}.json"
            if name == "trainer":
                with JobCanceller(url, key):
                    results[name] = fuzz(url, key, args.examples, args.max_time, report)
            else:
                results[name] = fuzz(url, key, args.examples, args.max_time, report)
            print(f"{time.monotonic() - started:.0f} s", flush=True)
        health_s = health_under_maximal_judge(procs["judge"])
    finally:
        for proc in reversed(list(procs.values())):
            proc.stop()

    print("\n| target | operations | cases | server errors | schema violations accepted | network errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['operations']} | {r['cases']} | {r['server_errors']} | {r['violations_accepted']} | "
              f"{r['network_errors']} |")
    for name, r in results.items():
        if r["failures"]:
            print(f"\n--- {name}: {json.dumps(r['failures'])[:1000]}\n{r['details']}")
    total = {k: sum(r[k] for r in results.values())
             for k in ("operations", "cases", "server_errors", "violations_accepted", "other_failures",
                       "network_errors")}
    print(f"\nreports and service logs: {work}")
    print(f"BENCH fuzz operations={total['operations']} cases={total['cases']} server_errors={total['server_errors']} "
          f"schema_violations_accepted={total['violations_accepted']} other_failures={total['other_failures']} "
          f"network_errors={total['network_errors']} "
          f"health_max_ms={health_s * 1000:.0f}")
    bad = total["server_errors"] or total["violations_accepted"] or health_s >= 1.0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
