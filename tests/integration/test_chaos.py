"""The fault suite at a small size (issue 18; the full one is ``bench/chaos.py``): 60 episodes through 2
real workers (a tiny real model), 4 worker SIGKILLs, one Redis restart, 3 s retriever and judge
outages, and every episode ends with exactly one result."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_sixty_episodes_survive_kills_a_redis_restart_and_outages() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--episodes", "60", "--workers", "2",
                           "--kills", "4", "--outage-s", "3", "--timeout-s", "900"],
                          capture_output=True, text=True, timeout=1200, cwd=REPO)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH chaos")), "")
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    assert fields["episodes"] == fields["results"] == "60", line
    assert fields["duplicates"] == "0" and fields["lost"] == "0", line
    assert fields["kills"] == "4" and fields["redis_restarts"] == "1", line
    assert int(fields["search_failures"]) > 0, line  # the retriever outage was felt, and survived
    assert int(fields["redis_retries"]) > 0, line  # so was the Redis restart
    assert done.returncode == 0, line
