"""The fuzz suite at a small size: ``bench/fuzz.py`` (schemathesis over every service's OpenAPI, keyed
and with a wrong key) finds no server error and no accepted schema violation, and the judge's /health
stays under a second while its largest rule request is scored. The full size is the bench's default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_no_input_makes_a_server_error(small_index: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz.py"), "--examples", "2", "--max-time", "12",
                           "--out", str(tmp_path), "--index", str(small_index)], capture_output=True, text=True, timeout=1200, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH fuzz")), "")
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    assert int(fields["operations"]) >= 35 and int(fields["cases"]) > 200, line
    assert fields["server_errors"] == "0" and fields["schema_violations_accepted"] == "0", done.stdout[-6000:]
    assert int(fields["health_max_ms"]) < 1000, line
    assert done.returncode == 0, done.stdout[-3000:]
