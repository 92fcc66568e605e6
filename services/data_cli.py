"""``searchlab data``: the datasets and corpora the project can see, imports, exports.

    searchlab data list [--json]
    searchlab data import --format flashrag|search-r1|hf|jsonl --name NAME [--kind auto|qa|corpus]
                          [--out DIR] [--force] [--split S] [--config C] [--field ours=theirs ...] SOURCE...
    searchlab data export --format verl|search-r1|flashrag --dataset NAME [--dataset ...] --out DIR
                          [--template search_r1]

``list`` shows every dataset (rows and the sizes of its train/eval parts) and corpus (passages, size)
found in the shipped data (``<repo>/data``) and in the imported data (``<cache>/data``).
``import`` converts a FlashRAG JSONL, a Search-R1 / verl parquet, a Hugging Face dataset (a
``save_to_disk`` folder, data files, or a hub name with a network) or a JSONL of our own schema
into ``<cache>/data/<name>/dev.jsonl.gz`` (QA; split by the project's rule) or
``<cache>/data/corpus/<name>.jsonl.gz`` (corpus); see :mod:`shared.importers` and ``docs/data.md``.
Bad input stops with one ``error:`` line naming the file, row and field, exit status 2, and
nothing written. ``export`` writes the train and eval parts in another tool's format.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.config import data_dir
from shared.data import available_corpora, available_datasets, read_jsonl, split_of
from shared.importers import DataImportError, ImportOptions, import_data

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("verl", "search-r1", "flashrag")


def _fail(verb: str, message: str) -> int:
    sys.stderr.write(f"searchlab data {verb}: error: {message}\n")
    return 2


# --------------------------------------------------------------------------- list


def inventory() -> dict[str, Any]:
    """Every dataset (rows, train/eval sizes) and corpus (passages, bytes) the loaders find."""
    from services.retriever.plan import scan_corpus

    shipped = data_dir().resolve()
    datasets = {}
    for name, path in available_datasets().items():
        parts = {"train": 0, "eval": 0}
        for row in read_jsonl(path):
            parts[split_of(name, str(row["id"]))] += 1
        datasets[name] = {"rows": sum(parts.values()), **parts, "path": str(path),
                          "origin": "shipped" if shipped in path.resolve().parents else "imported"}
    corpora = {}
    for name, path in available_corpora().items():
        scan = scan_corpus(path)
        corpora[name] = {"passages": scan.count, "bytes": scan.bytes, "path": str(path),
                         "origin": "shipped" if shipped in path.resolve().parents else "imported"}
    return {"datasets": datasets, "corpora": corpora}


def _list(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="searchlab data list", description="datasets and corpora found")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = parser.parse_args(argv)
    found = inventory()
    if args.json:
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return 0
    lines = ["| dataset | rows | train | eval | origin | file |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {d['rows']} | {d['train']} | {d['eval']} | {d['origin']} | {d['path']} |"
              for n, d in found["datasets"].items()]
    lines += ["", "| corpus | passages | MB | origin | file |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {c['passages']} | {c['bytes'] / 2 ** 20:.1f} | {c['origin']} | {c['path']} |"
              for n, c in found["corpora"].items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# --------------------------------------------------------------------------- import


def _fields(pairs: Sequence[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep or ours not in ("id", "question", "answers", "title", "text", "contents") or not theirs:
            raise DataImportError(f"--field {pair!r}: expected ours=theirs, ours one of id, question, answers, "
                                  "title, text, contents")
        fields[ours] = theirs
    return fields


def _import(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="searchlab data import", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="files, a dataset folder, or (hf) a hub dataset name")
    parser.add_argument("--format", required=True, help="flashrag | search-r1 | hf | jsonl")
    parser.add_argument("--name", required=True, help="the dataset's (or corpus's) name for the loaders")
    parser.add_argument("--kind", default="auto", help="qa | corpus | auto (from the first row)")
    parser.add_argument("--out", type=Path, default=None, help="data root to write (default: <cache>/data)")
    parser.add_argument("--force", action="store_true", help="replace an earlier import of the same name")
    parser.add_argument("--split", default=None, help="hf: import only this split (default: all)")
    parser.add_argument("--config", default=None, help="hf hub datasets: the configuration name")
    parser.add_argument("--field", action="append", default=[], metavar="OURS=THEIRS",
                        help="take our field OURS from the source's THEIRS (e.g. answers=gold)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        options = ImportOptions(split=args.split, config=args.config, fields=_fields(args.field))
        report = import_data(args.format, args.sources, args.name, kind=args.kind, out=args.out, force=args.force,
                             options=options, progress=not args.no_progress)
    except DataImportError as exc:
        return _fail("import", str(exc))
    parts = f" (train {report.parts['train']}, eval {report.parts['eval']})" if report.kind == "qa" else ""
    noun = "QA rows" if report.kind == "qa" else "passages"
    sys.stdout.write(f"imported {report.rows} {noun} as '{report.name}' into {report.path}{parts}\n")
    return 0


# --------------------------------------------------------------------------- export


def _export(argv: Sequence[str]) -> int:
    from shared.exports import export_flashrag, export_verl

    parser = argparse.ArgumentParser(prog="searchlab data export",
                                     description="the train and eval parts of datasets in another tool's format")
    parser.add_argument("--format", required=True, help="verl | search-r1 (the same parquet) | flashrag")
    parser.add_argument("--dataset", action="append", required=True, help="dataset name (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--template", default="search_r1", help="verl: the prompt template (shared.protocol)")
    args = parser.parse_args(argv)
    if args.format not in EXPORT_FORMATS:
        return _fail("export", f"unknown format '{args.format}'; valid: {', '.join(EXPORT_FORMATS)}")
    try:
        if args.format == "flashrag":
            written = export_flashrag(args.dataset, args.out)
        else:
            written = list(export_verl(args.dataset, args.out, args.template))
    except (ValueError, FileNotFoundError) as exc:
        return _fail("export", str(exc))
    sys.stdout.write("".join(f"wrote {p}\n" for p in written))
    return 0


VERBS = {"list": _list, "import": _import, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """``searchlab data list|import|export ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        sys.stderr.write(f"usage: searchlab data {{{','.join(VERBS)}}} ...\n")
        return 2
    return VERBS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
