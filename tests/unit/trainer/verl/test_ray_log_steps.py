"""verl's per-step console lines, as a Ray job's driver log carries them, become our step metrics: the line
is made by verl's own logger (``concat_dict_to_str``), prefixed the way Ray prefixes an actor's output."""

from __future__ import annotations

from verl.utils.logger.aggregate_logger import concat_dict_to_str

from services.trainer.verl.ray_jobs import StepCounter, parse_step_line


def test_a_verl_step_line_parses_to_its_step_and_numbers() -> None:
    data = {"critic/score/mean": 0.375, "actor/pg_loss": -0.0123, "timing_s/gen": 41.5,
            "response_length/mean": 212, "training/global_step": 3, "note": "not a number"}
    line = "(TaskRunner pid=4242) " + concat_dict_to_str(data, step=3)
    assert parse_step_line(line) == (3, {"critic/score/mean": 0.375, "actor/pg_loss": -0.0123, "timing_s/gen": 41.5,
                                         "response_length/mean": 212.0, "training/global_step": 3.0})


def test_other_lines_are_not_steps() -> None:
    for line in ("", "Training Progress:  10%|#         | 1/10", "(TaskRunner pid=1) validation generation end",
                 "2026-01-01 INFO waiting for retriever at http://x:8001 (590s left)", "mystep:3 - a:1"):
        assert parse_step_line(line) is None
    assert parse_step_line("step:4 - a:nan - b:inf - c:np.float64(0.5)") == (4, {"c": 0.5})


def test_steps_keep_increasing_across_stages() -> None:
    counter = StepCounter()
    assert [counter.global_step(s) for s in (1, 2, 3, 1, 2)] == [1, 2, 3, 4, 5]
