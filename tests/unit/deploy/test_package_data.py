"""An installed trainer (the image runs ``pip install .``, not the checkout) still serves its dashboard:
every file under services/trainer/jobs/ui/ is matched by the package-data globs in pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

from deploy_helpers import REPO


def test_every_dashboard_file_ships_with_the_package() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["services.trainer.jobs"]
    root = REPO / "services" / "trainer" / "jobs"
    files = [p for p in (root / "ui").rglob("*") if p.is_file()]
    assert {"index.html", "app.js", "uPlot.iife.min.js", "uPlot.LICENSE"} <= {p.name for p in files}
    for path in files:
        relative = path.relative_to(root)
        if relative.suffix == ".md":
            continue  # notes for the people who update the vendored files
        assert any(Path(relative).match(pattern) for pattern in patterns), f"{relative} is not shipped"
