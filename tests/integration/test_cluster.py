"""``searchlab up`` -> every service ready, each with a key of its own -> the SDK, jobs and workers reach
every service with that service's key -> the notebook runs against it (eval, a tiny RL job, one of its
trajectories and its curves) -> ``searchlab down``
leaves no process behind; a killed worker and service are restarted by the cluster's supervisor. Real
processes, real Redis, real models, loopback only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services import cluster
from shared.client import Cluster, ServiceCallError
from shared.keys import SERVICES

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CALLS = {  # a protected call of each service that changes nothing
    "retriever": ("POST", "/retrieve", {"queries": ["q"]}),
    "simulator": ("POST", "/simulate", {"query": "q"}),
    "judge": ("POST", "/judge", {"method": "em", "items": [{"gold": ["a"], "prediction": "a"}]}),
    "trainer": ("GET", "/jobs", None),
}


def answers_by_status(url: str) -> dict[str, float]:
    """What the service at ``url`` answered since it started: status code -> requests (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "searchlab_requests_total":
                out[sample.labels["status"]] = out.get(sample.labels["status"], 0.0) + sample.value
    return out


@pytest.fixture(scope="module")
def cluster_env(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = {
        "SEARCHLAB_CLUSTER_CORPUS": str(small_corpus),
        "SEARCHLAB_CLUSTER_BASE_PORT": "0",
        "SEARCHLAB_CLUSTER_WORKERS": "2",
        "SEARCHLAB_CLUSTER_RUN_DIR": str(tmp_path_factory.mktemp("cluster")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    cluster.down()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def searchlab(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "searchlab"
    return subprocess.run([str(exe), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def test_up_brings_every_service_to_ready(cluster_env: dict[str, str]) -> None:
    done = searchlab("up", env=cluster_env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = cluster.status()
    assert report["ready"] is True
    names = set(report["processes"])
    assert {"redis", "retriever", "judge", "simulator", "trainer", "worker-0", "worker-1"} <= names
    for name in ("retriever", "judge", "simulator", "trainer"):
        assert httpx.get(report["urls"][name] + "/ready").status_code == 200
    shown = searchlab("status", env=cluster_env)
    assert shown.returncode == 0
    # every service is keyed with a fresh random key of its own, kept where only this user can read it
    state = cluster.load_state()
    assert state is not None and set(state.api_keys) == set(SERVICES)
    keys = state.api_keys
    assert len(set(keys.values())) == 4 and all(len(k) >= 32 for k in keys.values())
    assert stat.S_IMODE(cluster.state_path().stat().st_mode) == 0o600
    printed = done.stdout + done.stderr + shown.stdout + shown.stderr + repr(state)
    assert not [name for name, key in keys.items() if key in printed]  # neither `up` nor `status` shows a key
    # each process holds its own key and those of the services it calls, no other
    for name, held in {"retriever": {"retriever"}, "judge": {"judge"}, "simulator": {"simulator", "retriever"},
                       "trainer": set(SERVICES), "worker-0": {"retriever", "judge", "simulator"}}.items():
        environ = Path(f"/proc/{state.pids[name]}/environ").read_bytes()
        assert {s for s, key in keys.items() if key.encode() in environ} == held, name
    # each service lets in its own key only: no key, or another service's, is a 401
    for name, (method, path, body) in CALLS.items():
        url = report["urls"][name] + path
        assert httpx.request(method, url, json=body).status_code == 401, name
        for other in set(SERVICES) - {name}:
            r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {keys[other]}"}, timeout=60)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (name, other)
        r = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {keys[name]}"}, timeout=60)
        assert r.status_code == 200, (name, r.text[:300])


def test_up_again_is_idempotent(cluster_env: dict[str, str]) -> None:
    before = cluster.load_state()
    assert searchlab("up", env=cluster_env).returncode == 0
    after = cluster.load_state()
    assert before is not None and after is not None and before.pids == after.pids


def test_python_client_reaches_every_service(cluster_env: dict[str, str]) -> None:
    c = Cluster.local()
    [hits] = c.retriever.retrieve(["Who was hung for assisting the surrender of Benedict Arnold?"], topk=3)
    assert len(hits) == 3 and hits[0].document.contents.startswith('"')
    items = [{"question": "q", "gold": ["John André"], "prediction": p} for p in ("john André", "Benedict Arnold")]
    assert c.judge.judge(items, "f1").scores == [1.0, 0.0]
    docs = c.simulator.simulate({"query": "Benedict Arnold", "k": 2, "quality": "useful"}).documents
    assert len(docs) == 2
    assert isinstance(c.trainer.jobs(), list)
    with pytest.raises(ServiceCallError) as refused:  # one service's key is no key for another
        Cluster(c.base_urls, api_key=c.keys.of("retriever")).judge.judge(items, "em")
    assert refused.value.status == 401


def test_jobs_and_workers_send_each_service_its_own_key(cluster_env: dict[str, str]) -> None:
    """Through the cluster: workers search the retriever and the simulator and ask the judge (eval episodes),
    the trainer's own job searches the retriever (coldstart); a wrong key would only show as failed searches
    and judge fallbacks, so every service must also have refused nothing since the checks above."""
    c = Cluster.local()
    before = {name: answers_by_status(c.base_urls[name]) for name in SERVICES}
    tiny = {"max_new_tokens": 16, "max_turns": 1}
    jobs = {
        "retriever": c.trainer.submit("eval", {"datasets": ["hotpotqa"], "methods": ["rag"], "n": 2,
                                               "eval": {**tiny, "metric": "llm", "stamp": "keys-retriever"}}),
        "simulator": c.trainer.submit("eval", {"datasets": ["hotpotqa"], "methods": ["rag"], "n": 2,
                                               "eval": {**tiny, "search_backend": "simulator",
                                                        "stamp": "keys-simulator"}}),
        "coldstart": c.trainer.submit("coldstart", {"qa": ["hotpotqa"], "qa_limit": 2, "ramp_limit": 0,
                                                    "name": "keys"}),
    }
    for what, job in jobs.items():
        done = c.trainer.wait(job, timeout_s=900)
        assert done.state == "succeeded", (what, done.error)
        result = json.loads(c.trainer.artifact(job, "result.json"))
        if what == "coldstart":
            assert result["searches"] > 0
        else:
            rag = result["methods"]["rag"]
            assert rag["searches"] > 0 and rag["search_failures"] == 0 and rag["errors"] == 0, (what, rag)
    after = {name: answers_by_status(c.base_urls[name]) for name in SERVICES}
    for name in SERVICES:
        assert after[name].get("401", 0) == before[name].get("401", 0), (name, after[name])
    assert after["judge"].get("200", 0) > before["judge"].get("200", 0)  # the workers' judge calls got in


def test_quickstart_notebook_runs_top_to_bottom(cluster_env: dict[str, str], tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=1500, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    for name in ("quickstart_eval.png", "quickstart_curves.png"):  # the eval's bars, the RL job's curves
        plot = tmp_path / name
        assert plot.is_file() and plot.stat().st_size > 5000, name
    outputs = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "'succeeded'" in outputs  # the eval job's and the RL job's state
    assert "'direct'" in outputs and "'rag'" in outputs
    assert "trajectories/step_0002.jsonl" in outputs  # a trajectory sample per RL step
    assert "--- policy" in outputs and "--- searches:" in outputs  # one trajectory, the model's turns apart


def test_a_killed_worker_and_service_are_restarted(cluster_env: dict[str, str]) -> None:
    """Issue 18: nothing restarted a dead process of `searchlab up`; now its supervisor does, visibly."""
    import signal
    import time

    before = cluster.load_state()
    assert before is not None and "supervisor" in before.pids
    for name in ("worker-0", "retriever"):
        os.killpg(before.pids[name], signal.SIGKILL)
    deadline = time.monotonic() + 300
    while True:
        report = cluster.status()
        procs = report["processes"]
        if all(procs[n]["restarts"] == 1 and procs[n]["alive"] and procs[n]["pid"] != before.pids[n]
               for n in ("worker-0", "retriever")) and procs["retriever"].get("ready"):
            break
        assert time.monotonic() < deadline, json.dumps(report, indent=2)
        time.sleep(1.0)
    assert report["urls"]["retriever"] == before.urls["retriever"]  # back on its port
    status = json.loads(searchlab("status", env=cluster_env).stdout)
    assert status["processes"]["worker-0"]["restarts"] == 1 and status["processes"]["redis"]["restarts"] == 0
    [hits] = Cluster.local().retriever.retrieve(["Benedict Arnold"], topk=1)
    assert len(hits) == 1


def test_down_leaves_no_process_behind(cluster_env: dict[str, str]) -> None:
    state = cluster.load_state()
    assert state is not None
    pids = list(state.pids.values())
    done = searchlab("down", env=cluster_env)
    assert done.returncode == 0, done.stderr[-2000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # neither the process nor anything it started
    assert cluster.status()["ready"] is False
    assert cluster.load_state() is None
