"""Progress bars written to a file or a pipe stay a handful of plain lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shared.config import REPO_ROOT

LOOP = """
import time
from shared.progress import progress_bar
with progress_bar(total=200, desc="work", unit="item", mininterval=0) as bar:
    for _ in range(200):
        time.sleep(0.001)
        bar.update(1)
"""


def _run_with_stderr_in_a_file(code: str, tmp_path: Path) -> str:
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True, cwd=REPO_ROOT)
    return log.read_bytes().decode()  # not read_text: universal newlines would turn \r into \n


def test_a_bar_off_a_terminal_writes_a_line_per_ten_percent(tmp_path: Path) -> None:
    text = _run_with_stderr_in_a_file(LOOP, tmp_path)
    lines = text.splitlines()
    assert "\r" not in text
    assert len(lines) == 11, text  # 0%, 10%, ..., 100%
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")
    assert "200/200" in lines[-1]


def test_plain_tqdm_would_flood_the_same_file(tmp_path: Path) -> None:
    """What the helper prevents: tqdm redraws its line with a carriage return at every update."""
    text = _run_with_stderr_in_a_file(LOOP.replace("from shared.progress import progress_bar",
                                                   "from tqdm import tqdm as progress_bar"), tmp_path)
    assert text.count("\r") > 100


def test_disable_none_turns_the_bar_off_where_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    code = LOOP.replace("mininterval=0", "mininterval=0, disable=None")
    assert _run_with_stderr_in_a_file(code, tmp_path) == ""
