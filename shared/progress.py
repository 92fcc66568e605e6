"""Progress bars that stay readable in log files: every bar in the project comes from here.

    from shared.progress import progress_bar
    with progress_bar(total=n, desc="index wiki", unit="passage") as bar:
        bar.update(k)
    for batch in progress_bar(batches, desc="coldstart"):
        ...

On a terminal this is plain tqdm. When stderr is a file or a pipe (``searchlab up`` logs, CI,
``nohup``), tqdm would redraw its line with a carriage return ten times a second: megabytes of
``\\r`` over a long build, on one endless line. There the bar writes instead one ordinary,
newline-ended line at the start, at every ``LOG_STEP_PERCENT`` of the total, at least every
``LOG_EVERY_S`` seconds (the only rule when the total is unknown) and once at the end, all in
ASCII: ``index wiki:  40%|####      | 8000/20000 [00:40<01:00, 200.00passage/s]``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LOG_STEP_PERCENT = 10.0  # off a terminal: one line per this much of the total
LOG_EVERY_S = 300.0  # ... and at least one line this often


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or a fake stream
        return False


class _Sink:
    """Swallows what tqdm writes itself; :class:`LogLineBar` writes its own lines."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        return None


class LogLineBar(tqdm):  # type: ignore[type-arg]
    """tqdm that prints whole lines at percentage steps instead of redrawing one line (see the module)."""

    def __init__(self, *args: Any, out: IO[str] | None = None, step_percent: float = LOG_STEP_PERCENT,
                 every_s: float = LOG_EVERY_S, **kwargs: Any):
        self._out = out if out is not None else sys.stderr
        self._step = step_percent
        self._every_s = every_s
        self._next_percent = 0.0
        self._last_line_t = -math.inf
        self._last_line_n: float = -1
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("mininterval", 1.0)  # look at most once a second whether a line is due
        kwargs["file"] = _Sink()
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        closing = bool(self.disable)  # tqdm.close() sets disable before its last display()
        now = time.monotonic()
        percent = 100.0 * self.n / self.total if self.total else None
        due = (percent is not None and percent >= self._next_percent) or now - self._last_line_t >= self._every_s
        if (closing and self.n != self._last_line_n) or (not closing and due):
            self._out.write(self.format_meter(**self.format_dict) + "\n")
            self._out.flush()
            self._last_line_t, self._last_line_n = now, self.n
            if percent is not None:
                self._next_percent = (math.floor(percent / self._step) + 1) * self._step
        return False  # nothing for tqdm to clear


def progress_bar(iterable: Iterable[T] | None = None, *, disable: bool | None = False,
                 **kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A tqdm bar: the usual one on a terminal, :class:`LogLineBar` when stderr is not a terminal.

    Takes tqdm's arguments (``total``, ``desc``, ``unit``, ...); ``disable=True`` turns it off and,
    as in tqdm, ``disable=None`` turns it off where stderr is not a terminal."""
    if disable or interactive():
        return tqdm(iterable, disable=bool(disable), **kwargs)
    if disable is None:
        return tqdm(iterable, disable=True, **kwargs)
    return LogLineBar(iterable, **kwargs)
