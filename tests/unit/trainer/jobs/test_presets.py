"""The dashboard's presets (GET /presets) are jobs this trainer accepts as they are: each validates
against its kind's config, so the page's "Submit" never meets a 422."""

from __future__ import annotations

import pytest

from services.trainer.jobs.kinds import JOB_KINDS
from services.trainer.jobs.presets import PRESETS
from shared.schemas import JobPreset


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_is_a_valid_job(preset: JobPreset) -> None:
    JOB_KINDS[preset.kind].config.model_validate(preset.config)
    assert preset.title and preset.doc


def test_preset_names_are_unique_and_include_the_tiny_ones() -> None:
    names = [p.name for p in PRESETS]
    assert len(names) == len(set(names))
    assert {"tiny-rl", "tiny-eval"} <= set(names)
