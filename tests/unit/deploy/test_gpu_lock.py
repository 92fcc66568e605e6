"""The GPU closure (deploy/requirements-gpu.lock) is one consistent set pip's resolver accepts for Linux x86-64
/ CPython 3.11, wheels only, from PyPI: verl 0.7.1 with its SGLang extra (sglang 0.5.6, torch 2.9.1), Ray at
the CPU lock's version, and searchlab's other runtime pins; flash-attn (sdist only on PyPI) is pinned for the
image's source build. The CPU lock stays its own."""

from __future__ import annotations

import socket

import pytest
from deploy_helpers import REPO, deploy_script
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def test_the_gpu_lock_pins_the_gpu_stack_and_differs_from_the_cpu_lock() -> None:
    lock = deploy_script("lock_gpu")
    gpu = lock.read_lock()
    cpu = lock.read_lock(REPO / "deploy" / "requirements.lock")
    assert (gpu["torch"], gpu["sglang"], gpu["verl"], gpu["transformers"]) == ("2.9.1", "0.5.6", "0.7.1", "4.57.1")
    assert gpu["ray"] == cpu["ray"]  # the trainer's Jobs API client (CPU image) and the cluster agree
    assert cpu["torch"] == "2.13.0" and "sglang" not in cpu
    assert "flash-attn==2.8.3.post2" in (REPO / "deploy" / "requirements-gpu-source.lock").read_text()
    roots = {canonicalize_name(Requirement(r).name) for r in lock.gpu_roots()}
    assert {"faiss-cpu", "fastapi", "redis", "sglang", "verl", "ray", "torch"} <= roots


@pytest.mark.slow
def test_pips_resolver_accepts_the_gpu_lock_as_it_is() -> None:
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
    except OSError as exc:
        pytest.skip(f"PyPI is not reachable from here ({exc}): the resolver check needs it")
    problems = deploy_script("lock_gpu").check()
    assert not problems, "deploy/requirements-gpu.lock: " + "; ".join(problems) + \
        " (re-resolve: .venv/bin/python deploy/lock_gpu.py)"
