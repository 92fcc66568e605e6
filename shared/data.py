"""QA data, corpora and the project's one train/eval split rule (docs/design.md §6, docs/data.md).

A dataset is a folder ``<root>/<name>/`` holding ``dev.jsonl`` or ``dev.jsonl.gz``. The roots are
searched in order: the data shipped with the project (``shared.config.data_dir()``: ``<repo>/data``,
or ``SEARCHLAB_DATA_DIR``), then the datasets imported by ``searchlab data import``
(``shared.config.user_data_dir()``: ``<cache>/data``); the first root that has a name wins.

Each dataset is split deterministically by a hash of the question id:
``sha256("searchlab-split-v1|<name>|<id>")``, first 8 hex digits as an integer, modulo 100;
below ``EVAL_PERCENT`` is ``eval``, the rest ``train``. Training never sees ``eval``; reported
numbers are on ``eval``. Nothing else in the project may decide which part a question is in.

Every reader here takes ``.jsonl`` and ``.jsonl.gz`` alike (by the file name's suffix).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast

from shared.config import corpus_path, data_dir, jsonl_file, user_data_dir

Part = Literal["train", "eval", "all"]
SPLIT_SALT = "searchlab-split-v1"
EVAL_PERCENT = 50  # half of each dev set is held for evaluation

DATASETS = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "bamtwoogle", "fanoutqa", "nq", "triviaqa")
ALIASES = {"2wiki": "2wikimultihopqa"}
DEV_FILE = "dev.jsonl"  # a dataset's rows: <root>/<name>/dev.jsonl or dev.jsonl.gz
CORPUS_DIR = "corpus"  # corpora: <root>/corpus/<name>.jsonl[.gz]; never a dataset name


# --------------------------------------------------------------------------- files


def is_jsonl(path: str | Path) -> bool:
    return str(path).endswith((".jsonl", ".jsonl.gz"))


def file_stem(path: str | Path) -> str:
    """``nq.jsonl.gz`` -> ``nq``; ``nq.jsonl`` -> ``nq``."""
    return Path(Path(path).name.removesuffix(".gz")).stem


def open_text(path: str | Path) -> IO[str]:
    """A JSONL file for reading, decompressed on the fly when its name ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def open_binary(path: str | Path) -> IO[bytes]:
    """A file's (decompressed, for ``.gz``) bytes, for hashing and counting lines."""
    if str(path).endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def open_text_for_writing(path: str | Path, compress: bool | None = None) -> IO[str]:
    """A JSONL file for writing, compressed (reproducible bytes: no name, mtime 0) when ``compress``
    says so or, by default, when the name ends in ``.gz``."""
    if not (str(path).endswith(".gz") if compress is None else compress):
        return open(path, "w", encoding="utf-8")
    raw = open(path, "wb")
    packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
    return _ClosingText(packed, raw)


class _ClosingText(io.TextIOWrapper):
    """A text wrapper over a gzip stream that also closes the file under the gzip stream."""

    def __init__(self, packed: gzip.GzipFile, raw: IO[bytes]):
        super().__init__(packed, encoding="utf-8")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            yield row


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open_text_for_writing(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------- datasets


def data_roots() -> list[Path]:
    """Where datasets and corpora are looked for, in order: shipped data, then imported data."""
    return [data_dir(), user_data_dir()]


def _dev_file(folder: Path) -> Path | None:
    found = jsonl_file(folder / DEV_FILE)
    return found if found.is_file() else None


def available_datasets() -> dict[str, Path]:
    """Every dataset found in :func:`data_roots`, name -> its rows file (the first root wins)."""
    found: dict[str, Path] = {}
    for root in data_roots():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name == CORPUS_DIR or folder.name in found or not folder.is_dir():
                continue
            path = _dev_file(folder)
            if path is not None:
                found[folder.name] = path
    return found


def available_corpora() -> dict[str, Path]:
    """Every corpus found in :func:`data_roots` (``corpus/<name>.jsonl[.gz]``), name -> file."""
    found: dict[str, Path] = {}
    for root in data_roots():
        folder = root / CORPUS_DIR
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            name = file_stem(path)
            if is_jsonl(path) and path.is_file() and name not in found:
                found[name] = path
    return found


def canonical_name(name: str) -> str:
    """A dataset's name (aliases resolved); unknown names raise, listing the valid ones."""
    name = ALIASES.get(name, name)
    if name in DATASETS or any(_dev_file(root / name) for root in data_roots() if name != CORPUS_DIR):
        return name
    valid = [*DATASETS, *(n for n in available_datasets() if n not in DATASETS)]
    raise ValueError(f"unknown dataset '{name}'; valid: {', '.join(valid)} (or a path to a .jsonl[.gz] file)")


def split_of(dataset: str, qid: str) -> Literal["train", "eval"]:
    """Which part of the fixed split question ``qid`` of ``dataset`` belongs to (any dataset name,
    shipped or imported; aliases count as their dataset)."""
    digest = hashlib.sha256(f"{SPLIT_SALT}|{ALIASES.get(dataset, dataset)}|{qid}".encode()).hexdigest()
    return "eval" if int(digest[:8], 16) % 100 < EVAL_PERCENT else "train"


def dataset_path(name: str) -> Path:
    """The rows file of dataset ``name`` (the shipped location when no root has it yet)."""
    name = canonical_name(name)
    for root in data_roots():
        path = _dev_file(root / name)
        if path is not None:
            return path
    return jsonl_file(data_dir() / name / DEV_FILE)


def load_split(name: str, part: Part = "eval", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a named dataset's ``train`` or ``eval`` part (or ``all``), in file order."""
    dataset = canonical_name(name)
    rows = [r for r in read_jsonl(dataset_path(dataset)) if part == "all" or split_of(dataset, str(r["id"])) == part]
    return rows[:limit] if limit is not None else rows


def load_questions(source: str, part: Part = "eval", limit: int | None = None) -> list[dict[str, Any]]:
    """A dataset name (its ``part``) or a path to any JSONL(.gz) of the shared QA schema (taken whole)."""
    path = Path(source)
    if is_jsonl(source) or path.is_file():
        rows = []
        for n, row in enumerate(read_jsonl(path), 1):
            if "question" not in row or "answers" not in row:
                raise ValueError(f"{path}:{n}: a QA row needs 'question' and 'answers'")
            row.setdefault("id", f"{file_stem(path)}-{n}")
            row.setdefault("source", file_stem(path))
            rows.append(row)
        return rows[:limit] if limit is not None else rows
    return load_split(source, part, limit)


@dataclass(frozen=True)
class Passage:
    """One corpus passage; every component reads corpora through :func:`iter_passages`."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """FlashRAG / Search-R1's document text: the quoted title, a newline, the text."""
        return f'"{self.title}"\n{self.text}'


def passage_from_row(row: Any, line_no: int = 0) -> Passage:
    """``{id, title, text}`` or FlashRAG ``{id, contents}`` (``"Title"\ntext``) -> :class:`Passage`.

    Titles are HTML-unescaped (the HotpotQA dumps carry ``&quot;``/``&amp;`` in some titles)."""
    if not isinstance(row, dict):
        raise ValueError(f"line {line_no}: expected a JSON object, got {type(row).__name__}")
    pid = str(row.get("id", line_no))
    if "text" in row:
        title, text = str(row.get("title") or ""), str(row["text"])
    elif "contents" in row:
        title, _, text = str(row["contents"]).partition("\n")
        title = title.strip()
        if len(title) >= 2 and title[0] == title[-1] == '"':
            title = title[1:-1]
    else:
        raise ValueError(f"line {line_no}: a corpus row needs 'text' (with 'title') or FlashRAG 'contents'")
    return Passage(pid, html.unescape(title).strip(), text.strip())


def iter_passages(path: str | Path | None = None, limit: int | None = None) -> Iterator[Passage]:
    """Passages of a JSONL(.gz) corpus (default: the shipped 17,600 passages) in file order."""
    for n, row in enumerate(read_jsonl(path or corpus_path())):
        if limit is not None and n >= limit:
            return
        yield passage_from_row(row, n + 1)


def load_passages(path: str | Path | None = None, limit: int | None = None) -> list[Passage]:
    return list(iter_passages(path, limit))


def load_corpus(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, str]]:
    """Passages as plain ``{id, title, text}`` dicts."""
    return [asdict(p) for p in iter_passages(path, limit)]
