"""The index in a process of its own: encoding and search do not share a GIL with HTTP.

In one process, the event loop (parsing requests, writing responses) and the search thread
(tokenizer, ~100 torch ops per forward, FAISS) take turns on the GIL. Under load each waits for
the other, requests pile up unparsed in the socket, and micro-batches stay small: measured here
at 64 concurrent clients, batches of ~11 queries instead of the 64 that were in flight. With the
index in a child process, the HTTP process only parses, batches and answers, the child only
searches, and batches fill.

:class:`SearchProcess` has the :class:`~services.retriever.engine.Retriever` surface the HTTP layer
uses (``search``, ``modes``, ``info``, ``len``, ``close``). Calls are blocking (run them off the event
loop); one call runs at a time in the child. A child that dies is reported as
:class:`SearchProcessDied` on the call that noticed it, and a new child is started for the next call.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from shared.schemas import Hit, SearchMode

log = logging.getLogger(__name__)

_RETRIEVER: Any = None  # the child's Retriever


def _init(load: Callable[[], Any]) -> None:
    global _RETRIEVER
    _RETRIEVER = load()


def _describe() -> tuple[int, tuple[str, ...], dict[str, Any], int]:
    return os.getpid(), _RETRIEVER.modes, _RETRIEVER.info(), len(_RETRIEVER)


def _search(queries: Sequence[str], topk: int, mode: SearchMode) -> list[list[Hit]]:
    return _RETRIEVER.search(queries, topk, mode)  # type: ignore[no-any-return]


class SearchProcessDied(RuntimeError):
    """The search process exited (killed, out of memory) while a call was running."""


class SearchProcess:
    """A :class:`Retriever` loaded by ``load`` (a picklable, argument-less callable) in a child process."""

    def __init__(self, load: Callable[[], Any], start_timeout_s: float | None = None):
        self._load = load
        self._lock = threading.Lock()
        self._start_timeout_s = start_timeout_s
        self._pool = self._start()
        log.info("search process %d ready: %d passages", self.pid, self._len)

    def _start(self) -> ProcessPoolExecutor:
        """Start a child, load the index in it and wait until it answers."""
        # spawn: the parent has threads (event loop, executors); forking those is unsafe.
        pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"), initializer=_init,
                                   initargs=(self._load,))
        try:
            self.pid, self.modes, self._info, self._len = pool.submit(_describe).result(timeout=self._start_timeout_s)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return pool

    def search(self, queries: Sequence[str], topk: int = 3, mode: SearchMode = "dense") -> list[list[Hit]]:
        pool = self._pool
        try:
            return pool.submit(_search, list(queries), topk, mode).result()
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:  # the first caller to notice restarts it
                    log.error("the search process died; starting a new one")
                    pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = self._start()
            raise SearchProcessDied("the search process exited during this search; it is being restarted") from exc

    def info(self) -> dict[str, Any]:
        return {**self._info, "search_process": {"pid": self.pid}}

    def __len__(self) -> int:
        return self._len

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
