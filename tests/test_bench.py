"""Every benchmark runs from its one command (quick mode), so none can rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import ROOT, run

EXPECTED = {
    "render": {"defaults_in_process_seconds", "largest_cli_seconds"},
    "sweep": {"sweep_seconds"},
    "variants": {"variants_seconds"},
    "suite": {"suite_seconds"},
    "serve": {
        "health_rps",
        "bare_starlette_rps",
        "health_vs_bare_ratio",
        "startup_to_first_200_seconds",
        "resident_mib_after_load",
        "item_p99_ms",
        "list_50_rps",
    },
}


def test_every_benchmark_runs_and_records_its_figures(tmp_path: Path) -> None:
    run(
        sys.executable, "bench/run.py", "all", "--quick", "--output", tmp_path, cwd=ROOT
    )

    for name, figures in EXPECTED.items():
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["quick"] is True
        assert result["machine"]["cores"]
        for figure in figures:
            assert result["figures"][figure] > 0, (name, figure)
