"""Every benchmark runs from its one command (quick mode), so none can rot; each
on its own, so they spread over the test workers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run

EXPECTED = {
    "render": {"defaults_in_process_seconds", "largest_cli_seconds"},
    "sweep": {"sweep_seconds"},
    "variants": {"variants_seconds"},
    "suite": {"suite_seconds"},
    "serve": {
        "postgresql_page_requests_per_second",
        "postgresql_item_p99_ms",
        "postgresql_me_cpu_us_per_request",
        "postgresql_health_access_log_requests_per_second",
        "postgresql_health_cors_requests_per_second",
        "postgresql_peak_rss_mib",
        "sqlite_item_requests_per_second",
        "sqlite_startup_seconds",
        "bare_fastapi_health_requests_per_second",
        "health_vs_bare_ratio",
    },
    "export": {
        "postgresql_export_ndjson_rows_per_second",
        "postgresql_export_csv_rows_per_second",
        "postgresql_export_idle_rss_mib",
        "postgresql_export_peak_rss_mib",
    },
    "process": {
        "uvicorn_1_item_requests_per_second",
        "uvicorn_1_health_cpu_us_per_request",
        "gunicorn_2_page_requests_per_second",
        "gunicorn_2_peak_rss_mib",
    },
}


@pytest.mark.parametrize("name", EXPECTED)
def test_benchmark_runs_and_records_its_figures(tmp_path: Path, name: str) -> None:
    run(sys.executable, "bench/run.py", name, "--quick", "--output", tmp_path, cwd=ROOT)

    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["quick"] is True
    assert result["machine"]["cores"]
    for figure in EXPECTED[name]:
        assert result["figures"][figure] > 0, (name, figure)
