"""The index in processes of their own: encoding and search do not share a GIL with HTTP.

In one process, the event loop (parsing requests, writing responses) and the search thread
(tokenizer, ~100 torch ops per forward, FAISS) take turns on the GIL. Under load each waits for
the other, requests pile up unparsed in the socket, and micro-batches stay small: measured here
at 64 concurrent clients, batches of ~11 queries instead of the 64 that were in flight. With the
index in child processes, the HTTP process only parses, batches and answers, the children only
search, and batches fill.

:class:`SearchPool` has the :class:`~services.retriever.engine.Retriever` surface the HTTP layer
uses (``search``, ``modes``, ``info``, ``len``, ``close``) over ``n`` children, one batch at a time
in each (``search`` blocks: call it from as many threads as there are children).

The hop is kept small, so that it costs less than it saves:

- one ``multiprocessing`` pipe per child, no executor machinery (``ProcessPoolExecutor`` passed
  every call through a queue thread and a result thread: three thread hand-offs each way);
- the child sends back only the ``(scores, ids)`` arrays (~50 bytes a query); the passages are
  read and the hits built in this process (``hits``), from the same memory-mapped ``docs.jsonl``,
  by each request after its batch has left the child, which already encodes the next one:
  formatting is off the search process's critical path;
- the children memory-map one FAISS file (``engine.read_faiss_index``): n children, one copy.

A child that dies (killed, out of memory) fails the batch it was running with
:class:`SearchProcessDied` (503 + Retry-After) and is restarted in the background; meanwhile the
other children take the batches, and with none left every batch fails fast with the same 503.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from services.retriever.engine import Found, found_rows, hits_for
from services.retriever.index import DocStore
from shared.schemas import Hit, SearchMode

log = logging.getLogger(__name__)


class SearchProcessDied(RuntimeError):
    """A search process exited (killed, out of memory) while a call was running, or is restarting."""


def _serve(conn: Connection, load: Callable[[], Any]) -> None:
    """The child: load the retriever, say so, then answer (queries, topk, mode) with (scores, ids)."""
    try:
        retriever = load()
    except Exception as exc:  # noqa: BLE001 - the parent reports it and stops
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid(), retriever.modes, retriever.info(), len(retriever)))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent went away
            return
        if request is None:
            return
        queries, topk, mode = request
        try:
            scores, ids = retriever.search_ids(queries, topk, mode)
        except Exception as exc:  # noqa: BLE001 - raised again in the parent, for this batch only
            conn.send(("error", type(exc).__name__, str(exc)))
            continue
        conn.send(("ok", scores, ids))


class _Child:
    """One search process and its end of the pipe."""

    def __init__(self, load: Callable[[], Any], start_timeout_s: float | None):
        ctx = mp.get_context("spawn")  # the parent has threads (event loop, executors): forking them is unsafe
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child_conn, load), daemon=True, name="retriever-search")
        self.process.start()
        child_conn.close()
        try:
            if not self.conn.poll(start_timeout_s):
                raise TimeoutError(f"the search process did not load its index within {start_timeout_s} s")
            reply = self.conn.recv()
        except EOFError as exc:
            self.stop()
            raise RuntimeError(f"the search process exited while loading (exit code {self.process.exitcode})") from exc
        except BaseException:
            self.stop()
            raise
        if reply[0] == "failed":
            self.stop()
            raise RuntimeError(reply[1])
        _, self.pid, self.modes, self.info, self.length = reply

    def search(self, queries: list[str], topk: int, mode: SearchMode) -> tuple[np.ndarray, np.ndarray]:
        self.conn.send((queries, topk, mode))
        reply = self.conn.recv()
        if reply[0] == "error":
            raise (ValueError if reply[1] == "ValueError" else RuntimeError)(reply[2])
        return reply[1], reply[2]

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass  # already gone
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class SearchPool:
    """``n`` children, each with the :class:`Retriever` that ``load`` (picklable, no arguments) returns.

    ``index_dir``: the index folder, whose passages this process reads to build the hits.
    """

    def __init__(self, load: Callable[[], Any], index_dir: Path, n: int = 1, start_timeout_s: float | None = None):
        if n < 1:
            raise ValueError("a search pool needs at least one process")
        self._load = load
        self._start_timeout_s = start_timeout_s
        self._cond = threading.Condition()
        self._children: list[_Child | None] = []  # None: being restarted
        self._idle: list[int] = []  # slots with no call running
        self._closed = threading.Event()
        try:
            for _ in range(n):  # one at a time: n models loading at once would fight for the cores
                self._children.append(_Child(load, start_timeout_s))
                self._idle.append(len(self._children) - 1)
        except BaseException:
            self.close()
            raise
        first = self._children[0]
        assert first is not None
        self.modes: tuple[str, ...] = first.modes
        self._info, self._len = first.info, first.length
        self.docs = DocStore(index_dir)
        log.info("%d search process(es) ready (%s): %d passages", n, ", ".join(map(str, self.pids)), self._len)

    @property
    def size(self) -> int:
        """How many children there are (restarting ones included): how many batches can run at once."""
        return len(self._children)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children if child is not None]

    def search(self, queries: Sequence[str], topk: int = 3, mode: SearchMode = "dense") -> list[list[Hit]]:
        return self.hits(self.search_found(queries, topk, mode))

    def hits(self, found: Sequence[Found]) -> list[list[Hit]]:
        """The passages of ``search_found``'s rows, read here (not in a search process)."""
        return hits_for(self.docs, found)

    def search_found(self, queries: Sequence[str], topk: int = 3, mode: SearchMode = "dense") -> list[Found]:
        """Scores and ids from an idle child (blocking): the child is free again as soon as they are here."""
        slot = self._acquire()
        child = self._children[slot]
        try:
            if child is None:
                raise SearchProcessDied("the search process is restarting; retry shortly")
            try:
                scores, ids = child.search(list(queries), topk, mode)
            except (EOFError, OSError) as exc:
                log.error("search process %d died; starting a new one", child.pid)
                self._children[slot] = None
                threading.Thread(target=self._restart, args=(slot, child), name="retriever-restart",
                                 daemon=True).start()
                raise SearchProcessDied("the search process exited during this search; it is being restarted") from exc
        finally:
            self._release(slot)
        return found_rows(scores, ids)

    def _acquire(self) -> int:
        """An idle slot, a live child's if there is one."""
        with self._cond:
            while not self._idle:
                self._cond.wait()
            live = [slot for slot in self._idle if self._children[slot] is not None]
            slot = live[0] if live else self._idle[0]
            self._idle.remove(slot)
            return slot

    def _release(self, slot: int) -> None:
        with self._cond:
            self._idle.append(slot)
            self._cond.notify()

    def _restart(self, slot: int, dead: _Child) -> None:
        """Start a child in ``slot`` again; a failed start is retried with a capped back-off
        (the slot answers 503 meanwhile) until it works or the pool is closed."""
        dead.stop(timeout_s=1)
        delay_s = 1.0
        while not self._closed.is_set():
            try:
                child = _Child(self._load, self._start_timeout_s)
            except Exception:  # logged, tried again after the back-off
                log.exception("restarting search process %d failed; trying again in %.0f s", slot, delay_s)
                self._closed.wait(delay_s)
                delay_s = min(2 * delay_s, 60.0)
                continue
            with self._cond:
                if self._closed.is_set():
                    child.stop()
                    return
                self._children[slot] = child
            log.info("search process %d replaced by %d", dead.pid, child.pid)
            return

    def info(self) -> dict[str, Any]:
        pids = self.pids
        return {**self._info, "search_process": {"pid": pids[0] if pids else None, "pids": pids}}

    def __len__(self) -> int:
        return self._len

    def close(self) -> None:
        self._closed.set()
        for child in self._children:
            if child is not None:
                child.stop()
        docs = getattr(self, "docs", None)
        if docs is not None:
            docs.close()
