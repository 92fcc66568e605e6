"""RL config rules that fail at submission rather than mid-job."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.trainer.learn.rl import RLConfig


def test_pipelined_rl_keeps_the_version_its_workers_still_generate_with() -> None:
    assert RLConfig(max_staleness=1).keep_versions == 2  # the defaults fit one-step pipelining
    with pytest.raises(ValidationError, match="keep_versions"):
        RLConfig(max_staleness=2, keep_versions=2)
