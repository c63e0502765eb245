"""The telemetry options against what reads them: Prometheus' own text parser on a
served render's /metrics, with several worker processes; an OTLP/HTTP receiver that
decodes the spans a served render exports."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BROKER_URLS, tool_env, uv
from tests.test_live import Http, free_port, serving
from tests.test_variants import forget_queue


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


def counted_by(directory: Path) -> set[str]:
    """The processes (ids) whose files in a multiprocess directory count a request
    (their other counters exist from the start, at zero)."""
    return {
        path.stem.rsplit("_", 1)[-1]
        for path in directory.glob("counter_*.db")
        if any(
            json.loads(key)[0] == "http_requests" and value > 0
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
        )
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
        # The second process may still be starting, and the kernel hands a
        # connection to whichever process accepts first: ask /health in
        # concurrent rounds (one at least) until both processes have counted one.
        healths, deadline = 0, time.monotonic() + 60
        with ThreadPoolExecutor(max_workers=8) as pool:
            while healths == 0 or len(counted_by(shared)) < 2:
                assert time.monotonic() < deadline, counted_by(shared)
                answers = pool.map(lambda _: http("GET", "/health")[0], range(8))
                assert set(answers) == {200}
                healths += 8
        for _ in range(10):
            assert http("GET", f"/api/v1/items/{uuid.uuid4()}")[0] == 401
        for _ in range(5):
            assert http("GET", "/no/such/page")[0] == 404
        # Each scrape is answered by either process; each sums both.
        scrapes = [scrape(http) for _ in range(6)]

    health = {"method": "GET", "route": "/health", "status": "200"}
    item = {"method": "GET", "route": "/api/v1/items/{item_id}", "status": "401"}
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    for after in scrapes:
        assert grown(before, after, "http_requests_total", **health) == healths
        assert grown(before, after, "http_requests_total", **item) == 10
        assert grown(before, after, "http_requests_total", **unmatched) == 5
        count = grown(before, after, "http_request_duration_seconds_count", **health)
        everything = grown(
            before, after, "http_request_duration_seconds_bucket", **health, le="+Inf"
        )
        assert count == everything == healths
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


class OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint on loopback: every span exported to /v1/traces, with
    its service's name."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OtlpHandler)
        self.spans: list[tuple[str, Span]] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/v1/traces", self.path
        assert self.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in export.resource_spans:
                attributes = {
                    a.key: a.value.string_value
                    for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append((attributes["service.name"], span))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiving() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def ancestors(span: Span, spans: list[Span]) -> list[Span]:
    """The span's parents, nearest first, as far as they were exported."""
    by_id = {candidate.span_id: candidate for candidate in spans}
    found = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        found.append(span)
    return found


@pytest.mark.variant
def test_traces_of_a_served_render_reach_an_otlp_receiver(copie: Any) -> None:
    result = copie.copy(extra_answers={"tracing": True})
    assert result.exit_code == 0, result.exception
    account = {"email": "ada@example.com", "password": "correct horse battery"}

    with receiving() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "TRACE_SAMPLE_RATIO": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with serving(result.project_dir, env=env) as http:
            assert http("POST", "/api/v1/auth/register", json_body=account)[0] == 201
            login = {"username": account["email"], "password": account["password"]}
            token = http("POST", "/api/v1/auth/token", form=login)[1]["access_token"]
            bearer = {"Authorization": f"Bearer {token}"}
            item = http(
                "POST", "/api/v1/items", json_body={"name": "Lamp"}, headers=bearer
            )
            read = http("GET", f"/api/v1/items/{item[1]['id']}", headers=bearer)
            missing = http("GET", "/no/such/page")
            job = http(
                "POST", "/api/v1/jobs", json_body={"text": "a b c"}, headers=bearer
            )
            deadline = time.monotonic() + 30
            while http("GET", f"/api/v1/jobs/{job[1]['id']}", headers=bearer)[1][
                "status"
            ] not in {"succeeded", "failed"}:
                assert time.monotonic() < deadline, "the job did not finish"
                time.sleep(0.1)
        # The server flushed its spans as it stopped.
        with receiver.lock:
            exported = list(receiver.spans)

    assert (item[0], read[0], job[0]) == (201, 200, 202)
    assert {service for service, _ in exported} == {"my-service"}
    spans = [span for _, span in exported]
    server = {span.name: span for span in spans if span.kind == Span.SPAN_KIND_SERVER}
    get_item = server["GET /api/v1/items/{item_id}"]
    assert attributes(get_item)["http.route"] == "/api/v1/items/{item_id}"
    assert attributes(get_item)["http.response.status_code"] == 200
    # An error body names its trace: the id a user quotes leads to the spans.
    (refused,) = [
        span
        for span in server.values()
        if span.trace_id.hex() == missing[1]["error"]["trace_id"]
    ]
    assert attributes(refused)["http.response.status_code"] == 404

    # The read's SQL statement is a client span inside the request's trace.
    selects = [
        span
        for span in spans
        if span.kind == Span.SPAN_KIND_CLIENT and get_item in ancestors(span, spans)
    ]
    assert [span.name for span in selects] == ["SELECT"]
    assert attributes(selects[0])["db.system.name"] == "sqlite"

    # The job runs after the response, in the trace of the request that queued it:
    # its statements (reading the job, recording its result) are in that trace.
    post_job = server["POST /api/v1/jobs"]
    in_job_trace = [
        span
        for span in spans
        if span.kind == Span.SPAN_KIND_CLIENT and span.trace_id == post_job.trace_id
    ]
    assert all(post_job in ancestors(span, spans) for span in in_job_trace)
    operations = [attributes(span)["db.query.text"].split()[0] for span in in_job_trace]
    assert operations.count("UPDATE") == 2, operations  # running, then its result
    # Statements are exported with placeholders: no password reaches a span.
    assert not [s for s in spans if account["password"] in str(attributes(s))]


WORKERS = {
    # A node name of its own: two Celery workers called celery@<host> on one
    # RabbitMQ (another test's, at the same time) fight over its control queue.
    "celery": [
        *("celery", "-A", "app.worker", "worker", "--pool=solo"),
        *("--hostname", f"telemetry-{uuid.uuid4().hex[:8]}@%h"),
    ],
    "taskiq": ["taskiq", "worker", "app.worker:broker", "--workers", "1"],
}


@contextmanager
def working(project: Path, tool: str, env: dict[str, str], port: int) -> Iterator[None]:
    """A worker of the project, until its metrics answer; stopped as a supervisor
    stops it (SIGTERM), whatever happens."""
    log_path = project / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [uv(), "run", "--no-sync", *WORKERS[tool]],
            cwd=project,
            env=tool_env() | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/metrics", timeout=5
                    )
                    break
                except OSError:
                    assert worker.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.2)
            yield
        finally:
            worker.terminate()
            worker.wait(timeout=30)


@contextmanager
def leaving_nothing_on_the_broker(project: Path, env: dict[str, str]) -> Iterator[None]:
    try:
        yield
    finally:
        forget_queue(project, tool_env() | env, env["JOB_QUEUE"])


@pytest.mark.variant
@pytest.mark.parametrize(
    ("tool", "broker"), [("celery", "redis"), ("taskiq", "rabbitmq")]
)
def test_job_through_a_real_broker_continues_the_trace_and_is_counted(
    copie: Any, tmp_path: Path, tool: str, broker: str
) -> None:
    answers = {
        "background_tasks": tool,
        "broker": broker,
        "metrics": True,
        "tracing": True,
        "auth": "none",
    }
    result = copie.copy(extra_answers=answers)
    assert result.exit_code == 0, result.exception
    project: Path = result.project_dir
    figures = tmp_path / "worker-metrics"
    figures.mkdir()
    queue = f"telemetry-{uuid.uuid4().hex[:12]}"

    with receiving() as receiver:
        env = {
            "BROKER_URL": BROKER_URLS[broker],
            "JOB_QUEUE": queue,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "TRACE_SAMPLE_RATIO": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        port = free_port()
        worker_env = env | {
            "WORKER_METRICS_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(figures),
        }
        with (
            leaving_nothing_on_the_broker(project, env),
            serving(project, env=env) as http,
            working(project, tool, worker_env, port),
        ):
            before = scrape(http)
            worker_before = scrape(Http(f"http://127.0.0.1:{port}"))
            status, job = http("POST", "/api/v1/jobs", json_body={"text": "a b c"})
            deadline = time.monotonic() + 30
            while http("GET", f"/api/v1/jobs/{job['id']}")[1]["status"] not in {
                "succeeded",
                "failed",
            }:
                assert time.monotonic() < deadline, "the job did not finish"
                time.sleep(0.1)
            after = scrape(http)
            worker_after = scrape(Http(f"http://127.0.0.1:{port}"))
        # Both processes flushed their spans as they stopped.
        with receiver.lock:
            exported = list(receiver.spans)

    assert status == 202
    assert grown(before, after, "jobs_queued_total") == 1
    succeeded = {"status": "succeeded"}
    assert grown(worker_before, worker_after, "jobs_finished_total", **succeeded) == 1
    count = grown(
        worker_before, worker_after, "job_duration_seconds_count", **succeeded
    )
    assert count == 1

    spans = [span for _, span in exported]
    (request,) = [s for s in spans if s.name == "POST /api/v1/jobs"]
    (job_span,) = [s for s in spans if s.name == "job"]
    assert attributes(job_span)["job.id"] == job["id"]
    # The job's span is in the request's trace, across the broker: a producer span
    # under the request, a consumer span in the worker under it, the job under that.
    chain = ancestors(job_span, spans)
    assert request in chain
    kinds = [span.kind for span in chain[: chain.index(request)]]
    assert kinds == [Span.SPAN_KIND_CONSUMER, Span.SPAN_KIND_PRODUCER]
    # The worker's own statements (reading the job, recording it) are in that trace.
    statements = [
        span
        for span in spans
        if span.kind == Span.SPAN_KIND_CLIENT and request in ancestors(span, spans)
    ]
    assert len(statements) >= 3, [span.name for span in statements]


class SentryHost(ThreadingHTTPServer):
    """Plays the host of a Sentry DSN: keeps every event of the envelopes posted to
    /api/<project>/envelope/."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SentryHandler)
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server_address[1]}/1"


class SentryHandler(BaseHTTPRequestHandler):
    server: SentryHost

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.path == "/api/1/envelope/", self.path
        # An envelope: a header line, then for each item a header line and its payload.
        lines = body.split(b"\n")
        with self.server.lock:
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    self.server.events.append(json.loads(payload))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


CRASHING_APP = """
from fastapi import Request

from app.main import create_app

app = create_app()


@app.get("/crash")
async def crash(request: Request) -> None:
    password = request.headers["X-Password"]
    raise RuntimeError(f"forced after {len(password)} characters")
"""


@pytest.mark.variant
def test_unhandled_error_of_a_served_render_reaches_the_sentry_host(
    copie: Any,
) -> None:
    result = copie.copy(extra_answers={"sentry": True, "auth": "none"})
    assert result.exit_code == 0, result.exception
    project: Path = result.project_dir
    (project / "crashing.py").write_text(CRASHING_APP)
    host = SentryHost()
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        env = {"SENTRY_DSN": host.dsn, "ENVIRONMENT": "production"}
        with serving(project, env=env, target="crashing:app") as http:
            headers = {"X-Request-ID": "trace-42", "X-Password": "hunter2-secret"}
            crashed = http("GET", "/crash", headers=headers)
            missing = http("GET", "/no/such/page")
            deadline = time.monotonic() + 10
            while not host.events and time.monotonic() < deadline:
                time.sleep(0.1)
        with host.lock:
            events = list(host.events)
    finally:
        host.shutdown()
        host.server_close()

    assert crashed[0] == 500
    assert missing[0] == 404  # handled: not reported
    (event,) = events
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert event["tags"]["request_id"] == "trace-42"
    assert event["environment"] == "production"
    assert "hunter2-secret" not in json.dumps(event)
