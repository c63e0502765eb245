"""The docs site: its generated pages match the template, and it builds strictly."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import ROOT, run


def test_generated_pages_are_current() -> None:
    # Renders the layouts and each option for real: the pages say what renders.
    run(sys.executable, "docs/generate.py", "--check", cwd=ROOT)


def test_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    # --strict turns every warning (a broken link, a page left out of the nav) into
    # a failure.
    run(mkdocs, "build", "--strict", "--site-dir", tmp_path, cwd=ROOT)

    for page in ("reference/questionnaire", "reference/layouts", "options/background"):
        assert (tmp_path / page / "index.html").exists(), page
