"""Trajectories as a person reads them: the policy's turns and the environment's observations apart,
the searches, the answer, the reward and its parts; a bounded sample of them per RL step.

    view = episode_view(result, decode, template="search_r1")
    {"turns": [{"role": "policy", "text": "<think> ... <search> q </search>"},
               {"role": "observation", "text": "<information> Doc 1 ... </information>"},
               {"role": "policy", "text": "<answer> Paris </answer>"}],
     "searches": ["q"], "answer": "Paris", "reward": 1.2, "reward_parts": {...}, "scores": {...}, ...}

The split follows the worker's loss mask (1 on the policy's tokens, 0 on the environment's), each run
decoded with the policy's tokenizer as the workers decode: the same split distillation turns into SFT
records (:func:`segments`). RL keeps :func:`pick` of each step's episodes (a few per group, every group
first) in ``trajectories/step_NNNN.jsonl`` (:func:`sample_name`); the dashboard and the notebook read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from services.trainer.data.records import Segment, SegmentRole
from shared.protocol import find_blocks, get_template
from shared.schemas import EpisodeRequest, EpisodeResult

Decode = Callable[[list[int]], str]


def mask_runs(ids: Sequence[int], mask: Sequence[int]) -> Iterator[tuple[SegmentRole, list[int]]]:
    """Maximal runs of equal loss mask: (policy | observation, token ids)."""
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            yield ("policy" if mask[start] else "observation"), list(ids[start:i])
            start = i


def segments(result: EpisodeResult, decode: Decode) -> list[Segment]:
    """The response as policy / observation segments, split where the loss mask changes (empty runs dropped)."""
    out: list[Segment] = []
    for role, ids in mask_runs(result.response_ids, result.loss_mask):
        text = decode(ids)
        if not text:
            continue  # e.g. only an end-of-turn token
        if out and out[-1].role == role:
            out[-1].text += text
        else:
            out.append(Segment(role, text))
    return out


def search_queries(parts: Sequence[Segment], template: str = "search_r1") -> list[str]:
    """The queries of the policy's complete search blocks, in order."""
    tag = get_template(template).search_tag
    return [b.content.strip() for s in parts if s.role == "policy" for b in find_blocks(s.text, tag)]


def episode_view(result: EpisodeResult, decode: Decode, template: str = "search_r1") -> dict[str, Any]:
    """One episode as the dashboard and the notebook show it (see the module docstring)."""
    parts = segments(result, decode)
    return {
        "episode_id": result.episode_id, "group_id": result.group_id, "policy_version": result.policy_version,
        "turns": [{"role": s.role, "text": s.text} for s in parts],
        "searches": search_queries(parts, template), "answer": result.answer,
        "reward": result.reward, "reward_parts": dict(result.reward_parts), "scores": dict(result.scores),
        "n_turns": result.turns, "n_searches": result.searches, "search_failures": result.search_failures,
        "finish_reason": result.finish_reason, "error": result.error,
    }


def pick(results: Sequence[EpisodeResult], k: int) -> list[EpisodeResult]:
    """Up to ``k`` results, round-robin over groups (the first sample of every group, then the second ...)."""
    groups: dict[str, list[EpisodeResult]] = {}
    for r in results:
        groups.setdefault(r.group_id or r.episode_id, []).append(r)
    out: list[EpisodeResult] = []
    rank = 0
    while len(out) < k and any(rank < len(g) for g in groups.values()):
        out += [g[rank] for g in groups.values() if rank < len(g)][:k - len(out)]
        rank += 1
    return out


def step_samples(step: int, results: Sequence[EpisodeResult], requests: dict[str, EpisodeRequest], k: int,
                 decode: Decode) -> list[dict[str, Any]]:
    """The kept trajectories of one RL step: the episode's view plus its question, gold and prompt text."""
    rows = []
    for r in pick(results, k):
        req = requests.get(r.episode_id)
        template = req.template if req is not None else "search_r1"
        rows.append({
            "step": step, "question": req.question if req else "", "ground_truth": req.ground_truth if req else [],
            "prompt_id": req.meta.get("prompt_id") if req else None,
            "prompt": decode(r.prompt_ids), **episode_view(r, decode, template),
        })
    return rows


def sample_name(step: int) -> str:
    """The artifact name of step ``step``'s trajectories (1-based, as the job reports steps)."""
    return f"trajectories/step_{step:04d}.jsonl"


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path


def tokenizer_decoder(model: str) -> Decode:
    """Token ids -> text with ``model``'s tokenizer (a name or folder), exactly as the workers decode."""
    from transformers import AutoTokenizer

    from shared.config import hf_offline
    from shared.models import resolve

    hf_offline()
    tokenizer = AutoTokenizer.from_pretrained(str(resolve(model)))
    return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))
