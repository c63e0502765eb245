"""The template's benchmarks. Each figure comes from one command:

    uv run python bench/run.py render      # copier copy: defaults and the largest answers
    uv run python bench/run.py sweep       # every valid combination rendered and linted
    uv run python bench/run.py variants    # the covering set installed and tested
    uv run python bench/run.py suite       # the default service's own test suite
    uv run python bench/run.py serve       # throughput, p99, start-up and memory
    uv run python bench/run.py export      # memory of a 100,000-item streamed export
    uv run python bench/run.py process     # servers and process counts side by side
    uv run python bench/run.py all         # all of them

`--quick` runs each once on a small scale (CI does, so they cannot rot); the full runs
take medians over several runs and write bench/results/<name>.json. `--output DIR`
writes elsewhere. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import python_for, render, tool_env, variant_env  # noqa: E402
from tests.matrix import copier_data, defaults  # noqa: E402

RESULTS = ROOT / "bench" / "results"
UV = [sys.executable, "-m", "uv"]
# The largest service: every part the questionnaire can add at once.
LARGEST = {
    "project_size": "large",
    "db_library": "sqlmodel",
    "db_engine": "postgresql",
    "auth": "jwt",
    "background_tasks": "celery",
    "broker": "rabbitmq",
}
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
BARE_APP = ROOT / "bench" / "bare_app.py"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    memory = Path("/proc/meminfo")
    total = (
        re.search(r"MemTotal:\s*(\d+)", memory.read_text()) if memory.exists() else None
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(total.group(1)) / 2**20, 1) if total else None,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def check(command: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        command,
        cwd=cwd,
        env=dict(env or tool_env()),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise SystemExit(f"`{' '.join(command)}` failed in {cwd}:\n{output}")
    return done.stdout + done.stderr


def timed(action: Callable[..., object], *arguments: Any) -> float:
    started = time.perf_counter()
    action(*arguments)
    return time.perf_counter() - started


def median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def render_answers(destination: Path, answers: Mapping[str, str]) -> Path:
    return render(destination, copier_data(defaults() | dict(answers)))


def render_cli(destination: Path, answers: Mapping[str, str]) -> None:
    data = [
        f"--data={key}={value}"
        for key, value in copier_data(defaults() | dict(answers)).items()
    ]
    command = [
        sys.executable,
        "-m",
        "copier",
        "copy",
        "--trust",
        "--defaults",
        "--quiet",
    ]
    check([*command, "--vcs-ref", "HEAD", *data, str(ROOT), str(destination)], cwd=ROOT)


def bench_render(runs: int, work: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, answers in {"defaults": {}, "largest": LARGEST}.items():
        for how, action in {"in_process": render_answers, "cli": render_cli}.items():
            samples = []
            for index in range(runs):
                destination = work / f"render-{name}-{how}-{index}"
                samples.append(timed(action, destination, answers))
            figures[f"{name}_{how}_seconds"] = median(samples)
    return figures


def pytest_wall_time(arguments: list[str], env: Mapping[str, str]) -> float:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *arguments,
    ]
    return timed(check, command, ROOT, env)


def bench_sweep(quick: bool) -> dict[str, Any]:
    env = tool_env()
    if quick:
        env["SWEEP_EVERY"] = "100"  # one combination in a hundred
    seconds = pytest_wall_time(["-n", "2", "tests/test_sweep.py"], env)
    return {
        "sweep_seconds": round(seconds, 1),
        "sweep_target_seconds": 120,
        "quick": quick,
    }


def bench_variants(quick: bool, work: Path) -> dict[str, Any]:
    """The covering set installed and tested, and each variant's own wall time (the
    CI plan balances its shards with them)."""
    from tests.matrix import covering_set

    env = tool_env()
    count = len(covering_set())
    report = work / "variants.xml"
    arguments = ["-n", "2", "tests/test_variants.py", f"--junitxml={report}"]
    if quick:
        # The covering set collected, not run: the template's own tests install and
        # test every variant already, so the quick run keeps only this command from
        # rotting.
        arguments = [*arguments[2:], "--collect-only"]
    seconds = pytest_wall_time(arguments, env)
    per_variant = {
        re.sub(r"^.*\[(.*)\]$", r"\1", case.get("name", "")): round(
            float(case.get("time", 0)), 1
        )
        for case in ElementTree.parse(report).iter("testcase")
    }
    return {
        "variants": count,
        "variants_seconds": round(seconds, 1),
        "variants_target_seconds": 600,
        "seconds_per_variant": dict(sorted(per_variant.items())),
        "quick": quick,
    }


def installed(project: Path, env: Mapping[str, str] | None = None) -> Path:
    python = python_for((project / ".python-version").read_text().strip())
    check([*UV, "sync", "--quiet", "--python", python], cwd=project, env=env)
    return project


def bench_suite(runs: int, work: Path, quick: bool) -> dict[str, Any]:
    """`uv run pytest` in the default render, and in every covering variant, as the
    variants run it (on the servers their answers name)."""
    from tests.matrix import covering_set, servers_for, variant_id

    command = [*UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"]
    project = installed(render_answers(work / "suite", {}))
    figures: dict[str, Any] = {
        "suite_seconds": median([timed(check, command, project) for _ in range(runs)]),
        "suite_target_seconds": 4,
        "runs": runs,
    }
    if quick:
        return figures
    embedded: dict[str, float] = {}
    on_servers: dict[str, float] = {}
    for index, answers in enumerate(covering_set()):
        env = variant_env(answers)
        project = installed(render_answers(work / f"variant-{index}", answers), env)
        seconds = median([timed(check, command, project, env) for _ in range(3)])
        name = variant_id(answers)
        (on_servers if servers_for(answers) else embedded)[name] = seconds
    figures["variant_suite_seconds_embedded"] = embedded
    figures["variant_suite_target_seconds_embedded"] = 6
    figures["variant_suite_seconds_on_servers"] = on_servers
    return figures


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# One server process on the first core, the load generator on the second, as the
# side-by-side script measures (../shared/bench/ in this workplace).
SERVER_CPU, CLIENT_CPU = "0", "1"
BOTH_CPUS = "0,1"


@dataclass(frozen=True)
class ProcessModel:
    """How a service is served: the server, its processes, and the cores the server
    and the load generator may use."""

    server: str
    workers: int = 1
    server_cpus: str = SERVER_CPU
    client_cpus: str = CLIENT_CPU

    def command(self, python: str, app: str, port: int) -> list[str]:
        workers = ["--workers", str(self.workers)]
        if self.server == "granian":
            return [
                *(python, "-m", "granian", "--interface", "asgi", "--http", "1"),
                *("--loop", "uvloop", *workers, "--port", str(port)),
                *("--no-access-log", "--log-level", "warning", app),
            ]
        if self.server == "gunicorn":
            return [
                *(python, "-m", "gunicorn", app, *workers),
                *("--worker-class", "uvicorn_worker.UvicornWorker"),
                *("--bind", f"127.0.0.1:{port}", "--log-level", "warning"),
            ]
        return [
            *(python, "-m", "uvicorn", app, "--port", str(port), *workers),
            *("--no-access-log", "--log-level", "warning"),
        ]


# What the serve benchmark measures each render with, as the side-by-side script does.
ONE_UVICORN = ProcessModel("uvicorn")


@contextmanager
def serving(
    python: str,
    app: str,
    cwd: Path,
    env: Mapping[str, str],
    model: ProcessModel = ONE_UVICORN,
) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """The app served as ``model`` says, in a process group of its own; the base
    URL, the group's leader and the seconds until its first 200 on /health."""
    port = free_port()
    command = model.command(python, app, port)
    if shutil.which("taskset"):
        command = ["taskset", "-c", model.server_cpus, *command]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = started + 60
        while True:
            if process.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"`{' '.join(command)}` did not serve on :{port}")
            try:
                with urllib.request.urlopen(f"{base}/health") as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.02)
        yield base, process, time.perf_counter() - started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wrk(
    url: str, seconds: int, headers: Mapping[str, str], cpus: str = CLIENT_CPU
) -> dict[str, float]:
    """Requests per second and p50/p99 latency (ms) from one wrk run on one thread
    and 32 connections, pinned to ``cpus`` (the core the server does not use)."""
    command = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", url]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", cpus, *command]
    output = check(command, cwd=ROOT)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses under load")

    def latency(percent: str) -> float:
        found = re.search(rf"{percent}%\s+([\d.]+)(us|ms|s)", output)
        assert found, output
        return float(found[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found[2]]

    rate = re.search(r"Requests/sec:\s*([\d.]+)", output)
    done = re.search(r"(\d+) requests in", output)
    assert rate, output
    assert done, output
    return {
        "requests": int(done[1]),
        "requests_per_second": round(float(rate[1]), 1),
        "p50_ms": round(latency("50"), 2),
        "p99_ms": round(latency("99"), 2),
    }


def group_stats(group: int) -> Iterator[tuple[int, list[str]]]:
    """Each live process of the process group ``group``: its pid and the fields of
    its /proc stat after the command name (a server's workers are its group)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone since the listing
            continue
        if int(fields[2]) == group:
            yield int(stat.parent.name), fields


def cpu_seconds(group: int) -> float:
    """The CPU time (user + system) the live processes of a process group have used
    so far: one server process, or a supervisor and its workers."""
    ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in group_stats(group))
    return ticks / os.sysconf("SC_CLK_TCK")


def loaded(
    url: str,
    seconds: int,
    headers: Mapping[str, str],
    group: int,
    cpus: str = CLIENT_CPU,
) -> dict[str, float]:
    """One wrk run, and the server's CPU time per request in it: steadier than
    requests per second on a machine that other work shares."""
    before = cpu_seconds(group)
    figures = wrk(url, seconds, headers, cpus)
    used = cpu_seconds(group) - before
    figures["cpu_us_per_request"] = round(used / figures["requests"] * 1e6, 1)
    return figures


def memory_mib(pid: int, field: str) -> float:
    """A memory figure of the process from /proc, in MiB: ``VmHWM``, the most it
    has held, or ``VmRSS``, what it holds now."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"{field}:\s*(\d+)", status)
    assert found, status
    return round(int(found[1]) / 1024, 1)


def peak_mib(pid: int) -> float:
    return memory_mib(pid, "VmHWM")


def group_peak_mib(group: int) -> float:
    """The peak memory of each process of the group, added up."""
    return round(sum(peak_mib(pid) for pid, _ in group_stats(group)), 1)


def call_json(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    form: dict[str, str] | None = None,
    token: str = "",
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def seed(base: str) -> tuple[str, int]:
    """One user and 50 items, as the side-by-side script seeds: a token, an item id."""
    account = {"email": "bench@example.com", "password": "bench-user-password"}
    call_json("POST", f"{base}/api/v1/auth/register", account)
    form = {"username": account["email"], "password": account["password"]}
    token = call_json("POST", f"{base}/api/v1/auth/token", form=form)["access_token"]
    ids = [
        call_json(
            "POST",
            f"{base}/api/v1/items",
            {"name": f"Item {n:02d}", "description": f"Description of item {n:02d}"},
            token=token,
        )["id"]
        for n in range(50)
    ]
    return token, ids[len(ids) // 2]


def postgres_sql(statement: str, database: str = "postgres") -> None:
    client = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-Atq"]
    check([*client, "-c", statement], cwd=ROOT)


@contextmanager
def postgres_database(label: str) -> Iterator[str]:
    """A database of its own on the local PostgreSQL, dropped afterwards: its name."""
    database = f"bench_{label}_{os.getpid()}"
    postgres_sql(f"CREATE DATABASE {database}")
    try:
        yield database
    finally:
        postgres_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# What every measured render is served with.
SERVED = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "serve-benchmark-secret-key-0123456789abcdefghijkl",
    # Long enough for every run: the token of the seed stays valid.
    "ACCESS_TOKEN_EXPIRE_MINUTES": "600",
    # As the side-by-side script serves both services: no access log (its cost is
    # measured apart, on /health).
    "ACCESS_LOG": "false",
    # As a production API without a browser front end: the rendered .env allows a
    # local development origin, whose cost is measured apart too.
    "CORS_ORIGINS": "[]",
}


def migrated_and_seeded(service: Path, env: Mapping[str, str]) -> tuple[str, int]:
    """The render's database migrated and seeded by a server process of its own (so
    the one measured next never registered a user, an Argon2 hash): a token of the
    seeded user and an item id."""
    python = str(service / ".venv" / "bin" / "python")
    check([python, "-m", "alembic", "upgrade", "head"], cwd=service, env=env)
    with serving(python, "app.main:app", service, env) as (base, _, _):
        return seed(base)


# The endpoints measured, as the side-by-side script measures them.
ENDPOINTS = {
    "page": "/api/v1/items?size=50",
    "item": "/api/v1/items/{item_id}",
    "me": "/api/v1/users/me",
    "health": "/health",
}


def measure_service(
    service: Path,
    env: Mapping[str, str],
    runs: int,
    seconds: int,
    endpoints: Mapping[str, str] = ENDPOINTS,
) -> dict[str, Any]:
    """Each endpoint of a served render under load: the median of ``runs`` runs.

    Seeded by one server process and measured by a fresh one, as the side-by-side
    script does: the peak memory is what serving takes.
    """
    token, item_id = migrated_and_seeded(service, env)
    return measure_served(service, env, (token, item_id), runs, seconds, endpoints)


def measure_served(
    service: Path,
    env: Mapping[str, str],
    seeded: tuple[str, int],
    runs: int,
    seconds: int,
    endpoints: Mapping[str, str],
    model: ProcessModel = ONE_UVICORN,
) -> dict[str, Any]:
    """Each endpoint of a seeded render, served by a fresh server as ``model`` says:
    the medians of ``runs`` runs, the start-up time, and the server's peak memory
    (all its processes')."""
    python = str(service / ".venv" / "bin" / "python")
    token, item_id = seeded
    figures: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {token}"}
    cpus = model.client_cpus
    with serving(python, "app.main:app", service, env, model) as (
        base,
        process,
        startup,
    ):
        for name, path in endpoints.items():
            url = base + path.format(item_id=item_id)
            wrk(url, min(seconds, 3), headers, cpus)  # warm-up, discarded
            samples = [
                loaded(url, seconds, headers, process.pid, cpus) for _ in range(runs)
            ]
            for key in (
                "requests_per_second",
                "p50_ms",
                "p99_ms",
                "cpu_us_per_request",
            ):
                figures[f"{name}_{key}"] = median([s[key] for s in samples])
        figures["startup_seconds"] = round(startup, 3)
        figures["peak_rss_mib"] = group_peak_mib(process.pid)
    return figures


def health_with(
    service: Path, env: Mapping[str, str], runs: int, seconds: int
) -> float:
    """`/health` served with ``env``: what a setting costs a light request."""
    python = str(service / ".venv" / "bin" / "python")
    with serving(python, "app.main:app", service, env) as (base, process, _):
        wrk(f"{base}/health", min(seconds, 3), {})
        samples = [
            loaded(f"{base}/health", seconds, {}, process.pid) for _ in range(runs)
        ]
    return median([sample["requests_per_second"] for sample in samples])


# Renders with an option on the request path, measured beside the plain PostgreSQL
# render: the answers, and the settings they are served with.
COSTED = {
    "metrics": ({"metrics": "true"}, {}),
    "telemetry": (
        {"metrics": "true", "tracing": "true"},
        {"TRACE_SAMPLE_RATIO": "0.1"},
    ),
    "telemetry_full": (
        {"metrics": "true", "tracing": "true"},
        {"TRACE_SAMPLE_RATIO": "1"},
    ),
    # Item reads cached in the local Redis: the item read is a cache hit after the
    # first.
    "cache": (
        {"cache": "redis"},
        {
            "CACHE_URL": "redis://127.0.0.1:6379/0",
            "CACHE_PREFIX": f"bench-{os.getpid()}:",
        },
    ),
    # Item reads cached in the process's memory: no round trip at all.
    "cache_memory": ({"cache": "memory"}, {}),
    # Rate limits counted in memory and in the local Redis, under a limit the load
    # never reaches: what counting costs each request (/health is not limited).
    "rate_limit_memory": (
        {"rate_limit": "memory"},
        {"RATE_LIMIT": "1000000000/minute"},
    ),
    "rate_limit_redis": (
        {"rate_limit": "redis"},
        {
            "RATE_LIMIT": "1000000000/minute",
            "RATE_LIMIT_URL": "redis://127.0.0.1:6379/0",
            "RATE_LIMIT_PREFIX": f"bench-{os.getpid()}:limits:",
        },
    ),
}


def option_cost(
    runs: int,
    seconds: int,
    work: Path,
    env: Mapping[str, str],
    plain: Mapping[str, Any],
    labels: Sequence[str] = tuple(COSTED),
) -> dict[str, Any]:
    """The item read and /health of the PostgreSQL render with metrics on, with
    metrics and tracing (10 % and 100 % of traces sampled), and with item reads
    cached in Redis, and what each keeps of the same render without them
    (``plain``, measured in the same run). Spans are recorded but not exported: no
    collector runs."""
    endpoints = {name: ENDPOINTS[name] for name in ("item", "health")}
    figures: dict[str, Any] = {}
    # One install for each set of answers (10 % and 100 % sampling share one).
    services: dict[str, Path] = {}
    for label in labels:
        answers, settings = COSTED[label]
        key = json.dumps(answers, sort_keys=True)
        if key not in services:
            services[key] = installed(
                render_answers(work / label, {"db_engine": "postgresql", **answers})
            )
        service = services[key]
        with postgres_database(label) as database:
            served = (
                env | settings | {"DATABASE_URL": POSTGRES.format(database=database)}
            )
            measured = measure_service(service, served, runs, seconds, endpoints)
        for name in endpoints:
            for key in ("requests_per_second", "p99_ms", "cpu_us_per_request"):
                figures[f"postgresql_{label}_{name}_{key}"] = measured[f"{name}_{key}"]
            figures[f"{label}_{name}_ratio"] = round(
                measured[f"{name}_requests_per_second"]
                / plain[f"postgresql_{name}_requests_per_second"],
                3,
            )
    return figures


def bench_costs(
    runs: int, seconds: int, work: Path, labels: Sequence[str]
) -> dict[str, Any]:
    """Only the option costs named (``labels`` of COSTED), each against the plain
    PostgreSQL render measured in the same run: for a new option's row, without
    measuring everything again. Merged into the serve benchmark's figures."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    env = tool_env() | SERVED
    postgres = installed(render_answers(work / "postgres", {"db_engine": "postgresql"}))
    endpoints = {name: ENDPOINTS[name] for name in ("item", "health")}
    figures: dict[str, Any] = {}
    with postgres_database("costs") as database:
        on_postgres = env | {"DATABASE_URL": POSTGRES.format(database=database)}
        measured = measure_service(postgres, on_postgres, runs, seconds, endpoints)
    for name in endpoints:
        for key in ("requests_per_second", "p99_ms", "cpu_us_per_request"):
            figures[f"postgresql_{name}_{key}"] = measured[f"{name}_{key}"]
    return figures | option_cost(runs, seconds, work, env, figures, labels)


# The serve benchmark's targets on this machine class: (comparison, limit).
SERVE_TARGETS = {
    "postgresql_me_requests_per_second": (">=", 1550),
    "postgresql_item_requests_per_second": (">=", 1250),
    "postgresql_page_requests_per_second": (">=", 670),
    "postgresql_me_p99_ms": ("<", 50),
    "postgresql_item_p99_ms": ("<", 50),
    "postgresql_page_p99_ms": ("<", 50),
    "health_vs_bare_ratio": (">=", 0.9),
    "postgresql_peak_rss_mib": ("<=", 90),
    "telemetry_item_ratio": (">=", 0.85),
    "telemetry_health_ratio": (">=", 0.85),
    "cache_item_ratio": (">=", 2.0),
    "cache_memory_item_ratio": (">=", 2.0),
}


def bench_serve(runs: int, seconds: int, work: Path, quick: bool) -> dict[str, Any]:
    """The default answers on PostgreSQL and on SQLite, and a bare FastAPI app in the
    same virtual environment, all under one uvicorn worker on one core."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    figures: dict[str, Any] = {
        "load": f"wrk -t1 -c32 -d{seconds}s, pinned to core {CLIENT_CPU}",
        "server": f"uvicorn, one worker, pinned to core {SERVER_CPU}",
        "runs": runs,
    }
    env = tool_env() | SERVED
    postgres = installed(render_answers(work / "postgres", {"db_engine": "postgresql"}))
    with postgres_database("serve") as database:
        on_postgres = env | {"DATABASE_URL": POSTGRES.format(database=database)}
        for key, value in measure_service(postgres, on_postgres, runs, seconds).items():
            figures[f"postgresql_{key}"] = value
        figures["postgresql_health_access_log_requests_per_second"] = health_with(
            postgres, on_postgres | {"ACCESS_LOG": "true"}, runs, seconds
        )
        figures["postgresql_health_cors_requests_per_second"] = health_with(
            postgres,
            on_postgres | {"CORS_ORIGINS": "http://localhost:3000"},
            runs,
            seconds,
        )
    # A quick run measures one set (the benchmark's code is the same for each).
    labels = ("telemetry",) if quick else tuple(COSTED)
    figures |= option_cost(runs, seconds, work, env, figures, labels)
    sqlite = installed(render_answers(work / "sqlite", {}))
    on_sqlite = env | {"DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.sqlite3"}
    for key, value in measure_service(sqlite, on_sqlite, runs, seconds).items():
        figures[f"sqlite_{key}"] = value
    python = str(postgres / ".venv" / "bin" / "python")
    bare: list[dict[str, float]] = []
    with serving(python, "bare_app:app", BARE_APP.parent, env) as (base, _, _):
        wrk(f"{base}/health", min(seconds, 3), {})
        bare = [wrk(f"{base}/health", seconds, {}) for _ in range(runs)]
    figures["bare_fastapi_health_requests_per_second"] = median(
        [sample["requests_per_second"] for sample in bare]
    )
    figures["health_vs_bare_ratio"] = round(
        figures["postgresql_health_requests_per_second"]
        / figures["bare_fastapi_health_requests_per_second"],
        3,
    )
    figures["targets"] = SERVE_TARGETS
    return figures


# The ways to serve the API that the image's command was chosen among: one process
# per core the server may use, for each server (the load generator on the other core,
# or, with two processes, sharing both with them), and one uvicorn process sharing
# both cores, to compare two processes with one under the same load generator.
PROCESS_MODELS = {
    "uvicorn_1": ONE_UVICORN,
    "granian_1": ProcessModel("granian"),
    "gunicorn_1": ProcessModel("gunicorn"),
    "uvicorn_1_shared": ProcessModel("uvicorn", 1, BOTH_CPUS, BOTH_CPUS),
    "uvicorn_2": ProcessModel("uvicorn", 2, BOTH_CPUS, BOTH_CPUS),
    "granian_2": ProcessModel("granian", 2, BOTH_CPUS, BOTH_CPUS),
    "gunicorn_2": ProcessModel("gunicorn", 2, BOTH_CPUS, BOTH_CPUS),
}
# The servers besides the image's own (fastapi run: uvicorn), installed into the
# measured render's environment only.
OTHER_SERVERS = ["granian", "gunicorn", "uvicorn-worker"]


def bench_process(runs: int, seconds: int, work: Path, quick: bool) -> dict[str, Any]:
    """The PostgreSQL render of the defaults, seeded once, served by each process
    model in turn: the item read, the 50-item page and /health under load."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    service = installed(render_answers(work / "process", {"db_engine": "postgresql"}))
    python = str(service / ".venv" / "bin" / "python")
    check([*UV, "pip", "install", "-q", "--python", python, *OTHER_SERVERS], cwd=ROOT)
    endpoints = {name: ENDPOINTS[name] for name in ("page", "item", "health")}
    # A quick run measures one model of one process and one of several.
    labels = ("uvicorn_1", "gunicorn_2") if quick else tuple(PROCESS_MODELS)
    figures: dict[str, Any] = {
        "load": f"wrk -t1 -c32 -d{seconds}s",
        "runs": runs,
        "models": {
            label: {
                "server": PROCESS_MODELS[label].server,
                "processes": PROCESS_MODELS[label].workers,
                "server_cores": PROCESS_MODELS[label].server_cpus,
                "load_cores": PROCESS_MODELS[label].client_cpus,
            }
            for label in labels
        },
    }
    with postgres_database("process") as database:
        env = tool_env() | SERVED | {"DATABASE_URL": POSTGRES.format(database=database)}
        seeded = migrated_and_seeded(service, env)
        for label in labels:
            model = PROCESS_MODELS[label]
            measured = measure_served(
                service, env, seeded, runs, seconds, endpoints, model
            )
            for key, value in measured.items():
                figures[f"{label}_{key}"] = value
    if not quick:
        # What a second process adds on two cores, under the same load generator.
        for name in endpoints:
            figures[f"uvicorn_2_vs_1_{name}_ratio"] = round(
                figures[f"uvicorn_2_{name}_requests_per_second"]
                / figures[f"uvicorn_1_shared_{name}_requests_per_second"],
                3,
            )
    return figures


def seed_items(database: str, rows: int) -> None:
    """``rows`` items of the seeded user, inserted by the server in one statement."""
    postgres_sql(
        "INSERT INTO items (name, description, owner_id, created_at, updated_at) "
        "SELECT 'Item ' || n, 'Description of item ' || n, "
        "(SELECT min(id) FROM users), now(), now() "
        f"FROM generate_series(1, {rows}) AS n",
        database,
    )


def exported(url: str, token: str) -> tuple[int, int]:
    """Reads a streamed export to the end, a chunk at a time: its lines and bytes."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    lines = size = 0
    with urllib.request.urlopen(request) as answer:
        while chunk := answer.read(1 << 16):
            lines += chunk.count(b"\n")
            size += len(chunk)
    return lines, size


def bench_export(rows: int, work: Path) -> dict[str, Any]:
    """A PostgreSQL render of the defaults serving an export of ``rows`` items, as
    NDJSON and as CSV: what the server holds before (after a warm-up) and at its
    peak, and how fast the rows stream."""
    service = installed(render_answers(work / "export", {"db_engine": "postgresql"}))
    python = str(service / ".venv" / "bin" / "python")
    figures: dict[str, Any] = {"rows": rows}
    with postgres_database("export") as database:
        served = (
            tool_env() | SERVED | {"DATABASE_URL": POSTGRES.format(database=database)}
        )
        token, _ = migrated_and_seeded(service, served)
        seed_items(database, rows)
        with serving(python, "app.main:app", service, served) as (base, process, _):
            # Warm: the routes, the pool and the models have served (not the
            # export: its first run is part of what is measured).
            for _ in range(3):
                call_json("GET", f"{base}/api/v1/items?size=50", token=token)
            idle = memory_mib(process.pid, "VmRSS")
            for file_format, header in (("ndjson", 0), ("csv", 1)):
                url = f"{base}/api/v1/items/export?format={file_format}"
                started = time.perf_counter()
                lines, size = exported(url, token)
                seconds = time.perf_counter() - started
                if lines != rows + 50 + header:
                    raise SystemExit(f"{url}: {lines} lines for {rows + 50} items")
                figures[f"postgresql_export_{file_format}_rows_per_second"] = round(
                    lines / seconds
                )
                figures[f"postgresql_export_{file_format}_mib"] = round(size / 2**20, 1)
            peak = peak_mib(process.pid)
    figures["postgresql_export_idle_rss_mib"] = idle
    figures["postgresql_export_peak_rss_mib"] = peak
    figures["postgresql_export_rss_growth_mib"] = round(peak - idle, 1)
    figures["targets"] = {"postgresql_export_rss_growth_mib": ("<=", 20)}
    return figures


def run_benchmark(name: str, quick: bool, work: Path) -> dict[str, Any]:
    runs = 1 if quick else 5
    if name == "render":
        return bench_render(runs, work)
    if name == "sweep":
        return bench_sweep(quick)
    if name == "variants":
        return bench_variants(quick, work)
    if name == "suite":
        return bench_suite(runs, work, quick)
    if name == "export":
        return bench_export(10_000 if quick else 100_000, work)
    if name == "process":
        return bench_process(1 if quick else 3, 1 if quick else 10, work, quick)
    return bench_serve(runs, 1 if quick else 10, work, quick)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = ["render", "sweep", "variants", "suite", "serve", "export", "process"]
    choices.append("all")
    parser.add_argument("benchmark", choices=[*choices, "costs"])
    parser.add_argument("--quick", action="store_true", help="once, small: for CI")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--labels",
        nargs="+",
        choices=list(COSTED),
        default=list(COSTED),
        help="costs: the option costs to measure again (merged into serve.json)",
    )
    options = parser.parse_args()
    if options.benchmark == "costs":
        return merge_costs(options.output, options.labels)
    names = choices[:-1] if options.benchmark == "all" else [options.benchmark]
    options.output.mkdir(parents=True, exist_ok=True)
    for name in names:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            # A developer's own copier settings must not change what renders.
            (work / "copier-settings.yml").write_text("{}\n")
            os.environ["COPIER_SETTINGS_PATH"] = str(work / "copier-settings.yml")
            figures = run_benchmark(name, options.quick, work)
        result = {
            "benchmark": name,
            "quick": options.quick,
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "figures": figures,
        }
        path = options.output / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: {json.dumps(figures)}")
    return 0


def merge_costs(output: Path, labels: Sequence[str]) -> int:
    """The `costs` benchmark: the option rows of serve.json measured again, with the
    plain render beside them, and the date they were measured (``costs_date``)."""
    path = output / "serve.json"
    result = json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "copier-settings.yml").write_text("{}\n")
        os.environ["COPIER_SETTINGS_PATH"] = str(work / "copier-settings.yml")
        figures = bench_costs(5, 10, work, labels)
    costs = {
        key: value
        for key, value in figures.items()
        if any(f"_{label}_" in f"_{key}" for label in labels)
    }
    result["figures"] |= costs
    result["figures"]["targets"] = SERVE_TARGETS
    result["costs_date"] = time.strftime("%Y-%m-%d")
    result["costs_plain"] = {
        key: value for key, value in figures.items() if key not in costs
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"costs: {json.dumps(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
