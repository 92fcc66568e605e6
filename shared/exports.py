"""Exports of QA sets to other tools' formats (``searchlab data export``), by the mappings of
:mod:`shared.formats`; the inverse of :mod:`shared.importers`.

    export_verl(["hotpotqa"], out)     # out/train.parquet (train parts), out/val.parquet (eval parts)
    export_flashrag(["hotpotqa"], out) # out/hotpotqa/train.jsonl, out/hotpotqa/test.jsonl

The ``train`` part of the project's split becomes the training data and the ``eval`` part the
validation / test data: never mixed (:func:`shared.data.load_split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.data import Part, canonical_name, load_split, write_jsonl
from shared.formats import qa_to_flashrag, qa_to_verl

PARTS_AS_FLASHRAG: tuple[tuple[Part, str], ...] = (("train", "train.jsonl"), ("eval", "test.jsonl"))


def write_parquet(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def export_verl(datasets: Sequence[str], out_dir: Path, template: str = "search_r1") -> tuple[Path, Path]:
    """verl / Search-R1 RL parquet: ``train.parquet`` from the train parts, ``val.parquet`` from the eval parts."""
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for name in datasets:
        train += [qa_to_verl(r, len(train) + i, "train", template) for i, r in enumerate(load_split(name, "train"))]
        val += [qa_to_verl(r, len(val) + i, "eval", template) for i, r in enumerate(load_split(name, "eval"))]
    return write_parquet(train, out_dir / "train.parquet"), write_parquet(val, out_dir / "val.parquet")


def export_flashrag(datasets: Sequence[str], out_dir: Path) -> list[Path]:
    """FlashRAG's dataset layout: ``<out>/<name>/train.jsonl`` (train part) and ``test.jsonl`` (eval part)."""
    written = []
    for name in datasets:
        folder = out_dir / canonical_name(name)
        for part, file in PARTS_AS_FLASHRAG:
            write_jsonl(folder / file, (qa_to_flashrag(r) for r in load_split(name, part)))
            written.append(folder / file)
    return written
