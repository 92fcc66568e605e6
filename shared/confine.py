"""Where a job may read, write and connect: path and URL fields confined to allowed roots.

A service that takes file paths from a request (the trainer's ``POST /jobs``) validates the config with a
:class:`Confinement` as pydantic's validation context; the field types below then refuse what lies
outside it, so the error is a 422 naming the field, never a file read, overwritten or probed elsewhere:

- :data:`InputFile` — an existing file under a read root (SFT data, RAMP samples, prompt files, corpora);
- :data:`OutputDir` — a folder under a write root (``out_dir`` of the data jobs);
- :data:`ModelRef` — an embedded model name, or a model folder under a read root;
- :data:`RemoteModelRef` — a hub id a remote cluster downloads, or a :data:`ModelRef`;
- :data:`SafeName` — one plain path component (``checkpoint_name``, dataset ``name``): always checked,
  context or not, since it is joined onto a folder of ours;
- :data:`ServiceURL` — one of the service URLs the service was configured with.

Without a context (the CLI, a script, the tests of a pipeline) paths are the caller's own business and
only :data:`SafeName` and existence are checked. Paths are resolved (``..`` and symlinks) before the
check, and a path outside the roots is refused with the same message whether or not it exists, so a
refusal tells nothing about the file system.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

from shared.models import MINILM, SMOLLM2, check_model_name

MAX_PATH_CHARS = 4096
EMBEDDED_MODELS = frozenset({SMOLLM2, MINILM})
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Confinement:
    """The roots a request may read from and write to, and the URLs it may name."""

    read_roots: tuple[Path, ...]
    write_roots: tuple[Path, ...]
    urls: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, read: Iterable[Path], write: Iterable[Path], urls: Iterable[str] = ()) -> Confinement:
        writes = tuple(_real(p) for p in write)
        return cls(read_roots=tuple(dict.fromkeys((*(_real(p) for p in read), *writes))), write_roots=writes,
                   urls=frozenset(normalize_url(u) for u in urls if u))

    def readable(self, path: str) -> Path:
        return _inside(path, self.read_roots, "read")

    def writable(self, path: str) -> Path:
        return _inside(path, self.write_roots, "write")


def _real(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _inside(raw: str, roots: tuple[Path, ...], what: str) -> Path:
    if len(raw) > MAX_PATH_CHARS or "\x00" in raw:
        raise ValueError("not a usable path")
    path = _real(Path(raw))
    if not any(path.is_relative_to(root) for root in roots):
        names = ", ".join(str(r) for r in roots) or "none"
        raise ValueError(f"'{raw}' is outside the folders this service may {what} ({names})")
    return path


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/").lower()


def confinement_of(info: ValidationInfo) -> Confinement | None:
    ctx = info.context
    if isinstance(ctx, Confinement):
        return ctx
    if isinstance(ctx, dict) and isinstance(ctx.get("confinement"), Confinement):
        return ctx["confinement"]
    return None


def check_input_file(value: str, info: ValidationInfo) -> str:
    rules = confinement_of(info)
    if rules is not None:
        rules.readable(value)
    if not Path(value).expanduser().is_file():
        raise ValueError(f"no such file: {value}")
    return value


def check_output_dir(value: str, info: ValidationInfo) -> str:
    rules = confinement_of(info)
    if rules is not None:
        rules.writable(value)
    return value


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def check_model_ref(value: str, info: ValidationInfo) -> str:
    rules = confinement_of(info)
    if rules is not None and value not in EMBEDDED_MODELS:  # a folder
        rules.readable(value)
    return check_model_name(value)


def check_remote_model(value: str, info: ValidationInfo) -> str:
    """A model a remote cluster loads: a hub id (``Qwen/Qwen2.5-7B-Instruct``) or, like :data:`ModelRef`,
    an embedded name or a local folder (confined)."""
    if HUB_ID.match(value) and ".." not in value and not Path(value).expanduser().exists():
        return value
    return check_model_ref(value, info)


def readable_source(value: str, info: ValidationInfo) -> str:
    """A dataset name (``hotpotqa``), or a data file: through a service, one it may read that exists."""
    from shared.data import DATASETS, canonical_name

    try:
        canonical_name(value)
        return value
    except ValueError:
        pass
    if confinement_of(info) is None:
        return value  # a caller's own path: the loader says what is wrong with it
    try:
        return check_input_file(value, info)
    except ValueError as exc:
        raise ValueError(f"{exc} (or a dataset name: {', '.join(DATASETS)})") from None


def check_safe_name(value: str) -> str:
    if not SAFE_NAME.match(value) or ".." in value:
        raise ValueError(f"'{value}' is not a plain name (letters, digits, '.', '_', '-'; at most 128; "
                         "no '/' or '..')")
    return value


def check_service_url(value: str, info: ValidationInfo) -> str:
    rules = confinement_of(info)
    if rules is not None and normalize_url(value) not in rules.urls:
        allowed = ", ".join(sorted(rules.urls)) or "none configured"
        raise ValueError(f"'{value}' is not one of this service's configured URLs ({allowed})")
    return value


InputFile = Annotated[str, AfterValidator(check_input_file)]
OutputDir = Annotated[str, AfterValidator(check_output_dir)]
ModelRef = Annotated[str, AfterValidator(check_model_ref)]
RemoteModelRef = Annotated[str, AfterValidator(check_remote_model)]
SafeName = Annotated[str, AfterValidator(check_safe_name)]
ServiceURL = Annotated[str, AfterValidator(check_service_url)]
