"""``searchlab up`` -> every service ready -> the notebook runs against it (eval, a tiny RL job, one of its
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
from shared.client import Cluster

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


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
    assert searchlab("status", env=cluster_env).returncode == 0
    # every service is keyed with a fresh random key, kept where only this user can read it
    state = cluster.load_state()
    assert state is not None and len(state.api_key) >= 32
    assert stat.S_IMODE(cluster.state_path().stat().st_mode) == 0o600
    calls = {"retriever": ("/retrieve", {"queries": ["q"]}), "simulator": ("/simulate", {"query": "q"}),
             "judge": ("/judge", {"method": "em", "items": [{"gold": ["a"], "prediction": "a"}]}),
             "trainer": ("/jobs", {"kind": "eval", "config": {}})}
    for name, (path, body) in calls.items():
        assert httpx.post(report["urls"][name] + path, json=body).status_code == 401, name


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
