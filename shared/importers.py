"""Imports of QA sets and corpora from the formats people already have (``searchlab data import``).

    import_data("flashrag", ["nq/test.jsonl"], name="mynq")           # -> <cache>/data/mynq/dev.jsonl.gz
    import_data("search-r1", ["train.parquet", "test.parquet"], name="nq-r1")
    import_data("hf", ["/data/my_saved_dataset"], name="myqa")         # save_to_disk folder, or data files
    import_data("flashrag", ["wiki18.jsonl"], name="wiki18", kind="corpus")  # -> <cache>/data/corpus/wiki18.jsonl.gz

Formats (a registry, :func:`register_format`):

- ``flashrag``   FlashRAG JSONL(.gz): QA ``{id, question, golden_answers}``, corpora ``{id, contents}``
- ``search-r1``  Search-R1 / verl RL parquet (``prompt``, ``reward_model.ground_truth.target``,
                 ``data_source``; also what ``searchlab data export --format verl`` writes)
- ``hf``         a Hugging Face dataset: a ``save_to_disk`` folder, data files (parquet, JSON lines,
                 CSV) or a folder of them, offline; a hub name (``datasets.load_dataset``) when
                 ``HF_DATASETS_OFFLINE=0`` and a network are there. Field names are found
                 (``answers`` | ``golden_answers`` | ``answer``; a TriviaQA ``{value, aliases}`` or a
                 SQuAD ``{text: [...]}`` answer object is flattened) or given (``fields``).
- ``jsonl``      JSONL(.gz) already in the project's schemas, checked

All field mappings are :mod:`shared.formats`'. An imported QA set is a dataset like the shipped ones:
``<root>/<name>/dev.jsonl.gz``, found by name by :func:`shared.data.load_split` and split into
``train``/``eval`` by the same rule (:func:`shared.data.split_of`). The root is ``<cache>/data``
(``shared.config.user_data_dir``) unless ``out`` says otherwise; the shipped ``data/`` is never
written unless named. A corpus goes to ``<root>/corpus/<name>.jsonl.gz`` as ``{id, title, text}``.

Every row is converted and checked on the way; the first bad row stops the import with a
:class:`DataImportError` naming ``file:row`` and the field. Rows stream into a temporary file beside
the destination, renamed into place only after the last row: a failed import leaves nothing behind.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.config import user_data_dir
from shared.data import (
    CORPUS_DIR,
    DEV_FILE,
    data_roots,
    file_stem,
    is_jsonl,
    open_binary,
    open_text,
    open_text_for_writing,
    split_of,
)
from shared.formats import FormatError, answer_list, flashrag_to_qa, passage_row, qa_row, verl_to_qa
from shared.progress import interactive, progress_bar

Kind = Literal["qa", "corpus"]
KINDS: tuple[str, ...] = ("auto", "qa", "corpus")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DataImportError(ValueError):
    """Bad input; the message is one line naming the file (and row and field where there is one)."""


@dataclass(frozen=True)
class RawRow:
    where: str  # "file:row" for messages
    row: Any  # as the source gave it
    default_id: str  # the id a row without one gets (its position: stable while the file is)


@dataclass(frozen=True)
class ImportOptions:
    split: str | None = None  # hf: only this split (default: every split)
    config: str | None = None  # hf hub datasets: the configuration name
    fields: dict[str, str] = field(default_factory=dict)  # our field -> the source's (question, answers, id)


@dataclass(frozen=True)
class DataFormat:
    """One importable format: how to read its rows and how to turn one into the project's schema."""

    name: str
    kinds: tuple[Kind, ...]
    read: Callable[[Sequence[str], ImportOptions], tuple[int | None, Iterator[RawRow]]]  # (row count if known, rows)
    to_qa: Callable[[Mapping[str, Any], str, str], dict[str, Any]]  # (row, source, default id); FormatError


FORMATS: dict[str, DataFormat] = {}


def register_format(fmt: DataFormat) -> DataFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> DataFormat:
    if name not in FORMATS:
        raise DataImportError(f"unknown format '{name}'; valid: {', '.join(FORMATS)}")
    return FORMATS[name]


@dataclass
class ImportReport:
    kind: Kind
    name: str
    path: str  # the file written
    rows: int
    parts: dict[str, int]  # QA: rows per part of the train/eval split
    sources: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- readers


def _existing(paths: Sequence[str]) -> list[Path]:
    if not paths:
        raise DataImportError("no input file given")
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise DataImportError(f"{p}: no such file")
        out.append(path)
    return out


def _count_lines(path: Path) -> int:
    with open_binary(path) as f:
        return sum(1 for line in f if line.strip())


def read_jsonl_rows(paths: Sequence[str], options: ImportOptions) -> tuple[int | None, Iterator[RawRow]]:
    """Rows of JSONL(.gz) files; a line that is not a JSON object is reported as such."""
    files = _existing(paths)
    for path in files:
        if not is_jsonl(path) and not path.name.endswith(".json"):
            raise DataImportError(f"{path}: expected a .jsonl or .jsonl.gz file")

    def rows() -> Iterator[RawRow]:
        for path in files:
            with open_text(path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{n}"
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataImportError(f"{where}: not valid JSON ({exc.msg})") from None
                    yield RawRow(where, row, f"{file_stem(path)}-{n}")

    return sum(_count_lines(p) for p in files), rows()


def read_parquet_rows(paths: Sequence[str], options: ImportOptions) -> tuple[int | None, Iterator[RawRow]]:
    """Rows of parquet files, read a batch at a time (nested columns come back as dicts and lists)."""
    import pyarrow.parquet as pq

    files = _existing(paths)
    opened = []
    for path in files:
        try:
            opened.append((path, pq.ParquetFile(path)))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not parquet
            raise DataImportError(f"{path}: not a parquet file ({exc})") from None

    def rows() -> Iterator[RawRow]:
        for path, parquet in opened:
            n = 0
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield RawRow(f"{path}:{n}", row, f"{file_stem(path)}-{n}")

    return sum(p.metadata.num_rows for _, p in opened), rows()


_HF_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _hf_data_files(paths: Sequence[Path]) -> tuple[str, list[str]]:
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.suffix in _HF_BUILDERS]
    builders = {_HF_BUILDERS[f.suffix] for f in files}
    if not files or len(builders) != 1:
        raise DataImportError(f"{', '.join(map(str, paths))}: no dataset here (a save_to_disk folder, or parquet, "
                              "JSON lines or CSV files of one kind)")
    return builders.pop(), [str(f) for f in files]


def _load_hf(paths: Sequence[str], options: ImportOptions, cache: str) -> Any:
    """A Dataset or DatasetDict: a ``save_to_disk`` folder, data files (or folders of them), or a hub name."""
    import datasets

    local = [Path(p) for p in paths]
    if len(local) == 1 and local[0].is_dir() and any((local[0] / f).is_file() for f in
                                                     ("dataset_dict.json", "state.json", "dataset_info.json")):
        return datasets.load_from_disk(str(local[0]))
    if all(p.exists() for p in local):
        builder, files = _hf_data_files(local)
        return datasets.load_dataset(builder, data_files=files, cache_dir=cache)
    missing = [p for p, q in zip(paths, local, strict=True) if not q.exists()]
    if len(paths) > 1:
        raise DataImportError(f"{', '.join(missing)}: no such file")
    if os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "false", "False", ""):
        raise DataImportError(f"{paths[0]}: no such folder or file; loading a dataset by name from the hub needs "
                              "a network and HF_DATASETS_OFFLINE=0")
    return datasets.load_dataset(paths[0], options.config, cache_dir=cache)


def read_hf_rows(paths: Sequence[str], options: ImportOptions) -> tuple[int | None, Iterator[RawRow]]:
    """Rows of a Hugging Face dataset (every split, or ``options.split``), one at a time."""
    logging.getLogger("datasets").setLevel(logging.WARNING)  # its import logs INFO lines around our one error line
    import datasets

    if not interactive():
        datasets.disable_progress_bars()
    if not paths:
        raise DataImportError("no dataset given")
    cache = tempfile.mkdtemp(prefix="searchlab-hf-")  # load_dataset's Arrow copy of data files, removed after
    try:
        loaded = _load_hf(paths, options, cache)
        splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {options.split or "train": loaded}
        if options.split is not None and options.split not in splits:
            raise DataImportError(f"{paths[0]}: no split '{options.split}'; it has {', '.join(splits)}")
    except Exception as exc:
        shutil.rmtree(cache, ignore_errors=True)
        if isinstance(exc, DataImportError):
            raise
        # datasets raises many types; the user needs its message
        raise DataImportError(f"{paths[0]}: could not load the dataset ({type(exc).__name__}: {exc})") from None
    if options.split is not None:
        splits = {options.split: splits[options.split]}
    label = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1})"

    def rows() -> Iterator[RawRow]:
        many = len(splits) > 1  # then rows keep their split as source_split, and default ids name it
        try:
            for split, ds in splits.items():
                for i, row in enumerate(ds, 1):
                    yield RawRow(f"{label}[{split}]:{i}", {**row, "_split": split} if many else row,
                                 f"{split}-{i}" if many else f"row-{i}")
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    return sum(len(ds) for ds in splits.values()), rows()


# --------------------------------------------------------------------------- row mappings


def _answers_from_hf(value: Any, name: str) -> list[str]:
    if isinstance(value, Mapping):  # TriviaQA {value, aliases, ...}; SQuAD {text: [...], answer_start}
        if "text" in value:
            return answer_list(value["text"], f"{name}.text")
        if "value" in value:
            aliases = value.get("aliases") or []
            return list(dict.fromkeys(answer_list([value["value"], *aliases], f"{name}.value")))
        raise FormatError(name, "is an object without 'text' or 'value'")
    return answer_list(value, name)


def hf_to_qa(row: Mapping[str, Any], source: str, default_id: str | None = None) -> dict[str, Any]:
    """A Hugging Face QA row: ``question``; ``answers`` | ``golden_answers`` | ``answer``; ``id`` if any."""
    out = {k: v for k, v in row.items() if k not in ("answers", "golden_answers", "answer", "_split")}
    found = next((f for f in ("answers", "golden_answers", "answer") if f in row and row[f] is not None), None)
    if found is None:
        raise FormatError("answers", "is missing (looked for 'answers', 'golden_answers', 'answer')")
    out["answers"] = _answers_from_hf(row[found], found)
    if row.get("_split"):
        out["source_split"] = row["_split"]
    return qa_row(out, source, default_id)


register_format(DataFormat("flashrag", ("qa", "corpus"), read_jsonl_rows, flashrag_to_qa))
register_format(DataFormat("search-r1", ("qa",), read_parquet_rows, verl_to_qa))
register_format(DataFormat("hf", ("qa", "corpus"), read_hf_rows, hf_to_qa))
register_format(DataFormat("jsonl", ("qa", "corpus"), read_jsonl_rows, qa_row))


# --------------------------------------------------------------------------- the import


def _guess_kind(row: Any) -> Kind:
    if isinstance(row, Mapping) and ("contents" in row or ("text" in row and "question" not in row)):
        return "corpus"
    return "qa"


def _renamed(row: Any, fields: Mapping[str, str], where: str) -> Any:
    """Our field names from the source's (``fields``: ours -> theirs)."""
    if not fields or not isinstance(row, Mapping):
        return row
    out = dict(row)
    for ours, theirs in fields.items():
        if theirs not in row:
            raise DataImportError(f"{where}: field '{theirs}' (given for '{ours}') is missing")
        out[ours] = out.pop(theirs)
    return out


def destination(kind: Kind, name: str, out: Path | None) -> Path:
    """Where an import named ``name`` goes, refusing names the loaders would not find it under."""
    if not NAME_PATTERN.match(name) or name == CORPUS_DIR:
        raise DataImportError(f"bad name '{name}': letters, digits, '_', '-', '.'; not '{CORPUS_DIR}'")
    root = Path(out) if out is not None else user_data_dir()
    if kind == "corpus":
        return root / CORPUS_DIR / f"{name}.jsonl.gz"
    for other in data_roots():
        if other.resolve() != root.resolve() and any((other / name / f).is_file()
                                                     for f in (DEV_FILE, DEV_FILE + ".gz")):
            raise DataImportError(f"a dataset '{name}' already exists in {other}, and the loaders would find that "
                                  "one first: choose another --name")
    return root / name / (DEV_FILE + ".gz")


def import_data(fmt: str, paths: Sequence[str], name: str, *, kind: str = "auto", out: Path | None = None,
                force: bool = False, options: ImportOptions | None = None, progress: bool = True) -> ImportReport:
    """Convert ``paths`` (format ``fmt``) into a dataset or corpus called ``name``; see the module docstring."""
    source = get_format(fmt)
    if kind not in KINDS:
        raise DataImportError(f"unknown kind '{kind}'; valid: {', '.join(KINDS)}")
    options = options or ImportOptions()
    total, rows = source.read(paths, options)
    first = next(rows, None)
    if first is None:
        raise DataImportError(f"{', '.join(paths)}: no rows")
    resolved: Kind = _guess_kind(first.row) if kind == "auto" else kind  # type: ignore[assignment]
    if resolved not in source.kinds:
        raise DataImportError(f"format '{fmt}' holds QA sets only, not corpora")
    dest = destination(resolved, name, out)
    if dest.exists() and not force:
        raise DataImportError(f"{dest} exists; pass --force to replace it")
    made = [p for p in (dest.parent, dest.parent.parent) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    parts = {"train": 0, "eval": 0}
    count = 0
    try:
        seen: dict[str, str] = {}
        with open_text_for_writing(tmp, compress=True) as f, progress_bar(total=total, desc=f"import {name}", unit="row",
                                                           disable=not progress) as bar:
            for raw in itertools.chain([first], rows):
                row = _renamed(raw.row, options.fields, raw.where)
                try:
                    if resolved == "corpus":
                        p = passage_row({"id": raw.default_id, **row} if isinstance(row, Mapping) else row)
                        record: dict[str, Any] = {"id": p.id, "title": p.title, "text": p.text}
                    else:
                        if not isinstance(row, Mapping):
                            raise FormatError("row", f"expected an object, got {type(row).__name__}")
                        record = source.to_qa(row, name, raw.default_id)
                except FormatError as exc:
                    raise DataImportError(f"{raw.where}: {exc}") from None
                if resolved == "qa":
                    if record["id"] in seen:
                        raise DataImportError(f"{raw.where}: field 'id': '{record['id']}' repeats "
                                              f"{seen[record['id']]} (ids decide the train/eval split)")
                    seen[record["id"]] = raw.where
                    parts[split_of(name, record["id"])] += 1
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
                bar.update(1)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in made:  # folders this import created, innermost first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return ImportReport(resolved, name, str(dest), count, parts if resolved == "qa" else {}, list(paths))
