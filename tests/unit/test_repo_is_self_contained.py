"""Nothing in the repository points at a folder outside it: a clone on its own must run."""

from __future__ import annotations

from pathlib import Path

from shared.config import REPO_ROOT

NEEDLE = "/".join(["..", "shared"])  # built from pieces, so this file is not a match itself


def test_no_file_points_at_a_folder_beside_the_repository(repo_files: list[Path]) -> None:
    files = [f for f in repo_files if f.suffix != ".gz"]  # every text file but the shipped data
    assert any(f.name == "README.md" for f in files) and any(f.suffix == ".py" for f in files)
    hits = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(REPO_ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                 if NEEDLE in line]
    assert hits == []


def test_readme_links_only_to_files_in_the_repo() -> None:
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)", readme)
    local = [link for link in links if "://" not in link]
    assert "docs/design.md" in local
    assert [link for link in local if not (REPO_ROOT / link).exists()] == []
