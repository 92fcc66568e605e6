"""The local cluster's supervisor: restarts what dies, with a cap and a backoff.

    python -m services.supervisor <run_dir>        (started by ``searchlab up``, stopped by ``searchlab down``)

``searchlab up`` starts Redis, the services and the workers as detached processes, writes how each was
started to ``<run_dir>/supervisor.json`` (argv and the environment on top of its own; mode 0600: it
holds the cluster's keys) and then starts this process. Every ``SEARCHLAB_CLUSTER_SUPERVISE_S`` it
looks at each process recorded in the state file (``cluster.json``); one that is gone (or a zombie)
is started again the same way, on the same port, appending to the same log::

    dead -> wait backoff (1 s, doubling, at most 60 s) -> restart -> record pid and restart count
    more than max_restarts restarts within window_s  -> give up on it (logged; listed in gave_up)

The state file holds each process's ``restarts`` and the ``gave_up`` list, so ``searchlab status``
shows them. Workers need nothing more: a restarted worker takes over the episodes its predecessor held
once their visibility timeout passes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from shared import local_cluster
from shared.local_cluster import ClusterState
from shared.processes import Proc, pid_alive, spawn

log = logging.getLogger("searchlab.supervisor")

SPECS_FILE = "supervisor.json"
NAME = "supervisor"


def write_specs(run_dir: Path, procs: dict[str, Proc]) -> Path:
    """Record how each process (by its name in the state file) was started, readable by this user only."""
    path = run_dir / SPECS_FILE
    specs = {name: {"argv": p.argv, "env": p.env, "log_dir": str(p.log_path.parent)} for name, p in procs.items()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(specs, f)
    return path


def start(run_dir: Path, procs: dict[str, Proc], log_dir: Path, poll_s: float = 1.0) -> Proc:
    """Write the specs of ``procs`` (state name -> process) and start the supervisor over them."""
    write_specs(run_dir, procs)
    return spawn(NAME, [sys.executable, "-m", "services.supervisor", str(run_dir)],
                 env={"SEARCHLAB_CLUSTER_SUPERVISE_S": str(poll_s)}, log_dir=log_dir)


@dataclass
class Policy:
    """When to restart, and when to stop trying."""

    first_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_restarts: int = 5  # restarts of one process within window_s before giving up on it
    window_s: float = 600.0


class Supervisor:
    def __init__(self, run_dir: Path, policy: Policy | None = None, poll_s: float = 1.0):
        self.run_dir = run_dir
        self.policy = policy or Policy()
        self.poll_s = poll_s
        self.specs: dict[str, dict[str, object]] = json.loads((run_dir / SPECS_FILE).read_text())
        self.children: dict[str, Proc] = {}  # the ones this supervisor started (reaped through their Popen)
        self.recent: dict[str, deque[float]] = defaultdict(deque)  # restart times within the window
        self.backoff: dict[str, float] = {}
        self.not_before: dict[str, float] = {}  # a dead process is restarted no earlier than this
        self.stopping = threading.Event()

    def alive(self, name: str, pid: int) -> bool:
        child = self.children.get(name)
        if child is not None and child.popen.pid == pid:
            return child.alive()
        return pid_alive(pid)

    def run(self) -> None:
        log.info("supervising %s (%s)", ", ".join(self.specs), self.run_dir)
        while not self.stopping.wait(self.poll_s):
            state = local_cluster.load_state(self.run_dir)
            if state is None:  # `searchlab down` removed it: nothing to supervise
                break
            if self.check(state):
                state.pids[NAME] = os.getpid()  # (were `up` still writing its own pid when this was read)
                local_cluster.save_state(state, self.run_dir)
        log.info("supervisor stopped")

    def check(self, state: ClusterState) -> bool:
        """Restart what died (when its backoff allows); True if ``state`` changed."""
        changed = False
        now = time.monotonic()
        for name, pid in list(state.pids.items()):
            if name == NAME or name not in self.specs or name in state.gave_up or self.alive(name, pid):
                continue
            if name not in self.not_before:
                delay = self.backoff.get(name, self.policy.first_backoff_s)
                self.not_before[name] = now + delay
                log.warning("%s (pid %d) died; restarting it in %.0fs", name, pid, delay)
                continue
            if now < self.not_before[name]:
                continue
            recent = self.recent[name]
            while recent and now - recent[0] > self.policy.window_s:
                recent.popleft()
            if len(recent) >= self.policy.max_restarts:
                log.error("%s died %d times within %.0fs: giving up on it (see %s)", name, len(recent) + 1,
                          self.policy.window_s, state.logs.get(name, "its log"))
                state.gave_up.append(name)
                changed = True
                continue
            spec = self.specs[name]
            proc = spawn(name, list(spec["argv"]), env=dict(spec["env"]),  # type: ignore[call-overload]
                         log_dir=Path(str(spec["log_dir"])))
            self.children[name] = proc
            recent.append(now)
            del self.not_before[name]
            self.backoff[name] = min(self.backoff.get(name, self.policy.first_backoff_s) * 2,
                                     self.policy.max_backoff_s)
            state.pids[name] = proc.popen.pid
            state.restarts[name] = state.restarts.get(name, 0) + 1
            log.warning("restarted %s: pid %d (restart %d)", name, proc.popen.pid, state.restarts[name])
            changed = True
        return changed

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self.stopping.set()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor(Path(args[0]), poll_s=float(os.environ.get("SEARCHLAB_CLUSTER_SUPERVISE_S", "1")))
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
