"""The telemetry options against what reads them: Prometheus' own text parser on a
served render's /metrics, with several worker processes."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_live import Http, serving


def scrape(
    http: Http, path: str = "/metrics"
) -> dict[tuple[str, frozenset[Any]], float]:
    """Every sample of a scrape, keyed by name and labels."""
    with urllib.request.urlopen(http.base + path, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        page = response.read().decode()
    return {
        (found.name, frozenset(found.labels.items())): found.value
        for family in text_string_to_metric_families(page)
        for found in family.samples
    }


def grown(
    before: dict[tuple[str, frozenset[Any]], float],
    after: dict[tuple[str, frozenset[Any]], float],
    name: str,
    **labels: str,
) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.mark.variant
def test_metrics_of_two_worker_processes_add_up(copie: Any, tmp_path: Path) -> None:
    result = copie.copy(extra_answers={"metrics": True})
    assert result.exit_code == 0, result.exception
    shared = tmp_path / "prometheus"
    shared.mkdir()

    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with serving(result.project_dir, "--workers", "2", env=env) as http:
        before = scrape(http)
        for _ in range(40):
            assert http("GET", "/health")[0] == 200
        for _ in range(10):
            assert http("GET", f"/api/v1/items/{uuid.uuid4()}")[0] == 401
        for _ in range(5):
            assert http("GET", "/no/such/page")[0] == 404
        # Each scrape is answered by either process; each sums both.
        scrapes = [scrape(http) for _ in range(6)]
        writers = {path.stem.rsplit("_", 1)[-1] for path in shared.glob("*.db")}

    assert len(writers) >= 2, writers  # both processes wrote figures
    health = {"method": "GET", "route": "/health", "status": "200"}
    item = {"method": "GET", "route": "/api/v1/items/{item_id}", "status": "401"}
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    for after in scrapes:
        assert grown(before, after, "http_requests_total", **health) == 40
        assert grown(before, after, "http_requests_total", **item) == 10
        assert grown(before, after, "http_requests_total", **unmatched) == 5
        count = grown(before, after, "http_request_duration_seconds_count", **health)
        everything = grown(
            before, after, "http_request_duration_seconds_bucket", **health, le="+Inf"
        )
        assert count == everything == 40
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (name, labels), value in after.items()
            if name == "http_request_duration_seconds_bucket"
            and health.items() <= dict(labels).items()
        )
        assert [value for _, value in buckets] == sorted(value for _, value in buckets)
        assert grown(before, after, "http_request_duration_seconds_sum", **health) > 0
        assert after[("http_requests_in_progress", frozenset())] == 0
        assert after[("db_pool_connections_in_use", frozenset())] == 0
    assert not any("/no/such" in str(labels) for _, labels in scrapes[-1])
