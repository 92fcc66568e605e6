"""SGLang's native /generate body: what the remote backend sends for our sampling settings."""

from __future__ import annotations

from shared.llm import SamplingParams
from shared.sglang import sglang_generate_body


def test_min_new_tokens_is_sent_only_when_set() -> None:
    plain = sglang_generate_body([1, 2], SamplingParams(max_new_tokens=8, stop=["</answer>"]))
    assert plain["sampling_params"] == {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "stop": ["</answer>"]}
    held = sglang_generate_body([1, 2], SamplingParams(max_new_tokens=8, min_content_tokens=1))
    assert held["sampling_params"]["min_new_tokens"] == 1  # SGLang holds EOS back for that many tokens
