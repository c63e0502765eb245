"""The template's benchmarks. Each figure comes from one command:

    uv run python bench/run.py render      # copier copy: defaults and the largest answers
    uv run python bench/run.py sweep       # every valid combination rendered and linted
    uv run python bench/run.py variants    # the covering set installed and tested
    uv run python bench/run.py suite       # the default service's own test suite
    uv run python bench/run.py serve       # throughput, p99, start-up and memory
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
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
    if quick:
        env["VARIANT_SHARD"] = f"1/{count}"
    report = work / "variants.xml"
    seconds = pytest_wall_time(
        ["-n", "2", "tests/test_variants.py", f"--junitxml={report}"], env
    )
    per_variant = {
        re.sub(r"^.*\[(.*)\]$", r"\1", case.get("name", "")): round(
            float(case.get("time", 0)), 1
        )
        for case in ElementTree.parse(report).iter("testcase")
    }
    return {
        "variants": 1 if quick else count,
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


@contextmanager
def serving(
    command: list[str], cwd: Path, port: int, env: Mapping[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Start a server; yield it and the seconds until its first 200 on /health."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = started + 60
        while True:
            if process.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"`{' '.join(command)}` did not serve on :{port}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health"
                ) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.02)
        yield process, time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wrk(url: str, seconds: int) -> dict[str, float]:
    """Requests per second and p99 latency (ms) from one wrk run on one thread."""
    command = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", url]
    output = check(command, cwd=ROOT)
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"{url}: {errors.group(1)} failed responses under load")
    return {"requests_per_second": round(rate, 1), "p99_ms": round(p99, 2)}


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(re.search(r"VmRSS:\s*(\d+)", status).group(1))  # type: ignore[union-attr]
    return round(kib / 1024, 1)


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        created: dict[str, Any] = json.load(answer)
        return created


def postgres_sql(statement: str) -> None:
    check(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atq", "-c", statement], cwd=ROOT
    )


def bench_serve(runs: int, seconds: int, work: Path) -> dict[str, Any]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    figures: dict[str, Any] = {"load": f"wrk -t1 -c32 -d{seconds}s", "runs": runs}
    service = installed(render_answers(work / "serve", {"auth": "none"}))
    python = str(service / ".venv" / "bin" / "python")
    env = tool_env()

    health: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    startup: list[float] = []
    memory: list[float] = []
    for _ in range(runs):
        port = free_port()
        fastapi = [python, "-m", "fastapi", "run", "app/main.py", "--port", str(port)]
        with serving(fastapi, service, port, env) as (process, ready):
            startup.append(ready)
            health.append(wrk(f"http://127.0.0.1:{port}/health", seconds))
            memory.append(resident_mib(process.pid))
        port = free_port()
        # The same server as `fastapi run` (uvicorn, one worker, access log on).
        uvicorn = [python, "-m", "uvicorn", "bare_app:app", "--port", str(port)]
        uvicorn += ["--app-dir", str(BARE_APP.parent)]
        with serving(uvicorn, service, port, env):
            bare.append(wrk(f"http://127.0.0.1:{port}/health", seconds))

    def med(samples: list[dict[str, float]], key: str) -> float:
        return median([sample[key] for sample in samples])

    figures["health_rps"] = med(health, "requests_per_second")
    figures["health_p99_ms"] = med(health, "p99_ms")
    figures["bare_starlette_rps"] = med(bare, "requests_per_second")
    figures["health_vs_bare_ratio"] = round(
        figures["health_rps"] / figures["bare_starlette_rps"], 3
    )
    figures["health_vs_bare_target"] = 0.9
    figures["startup_to_first_200_seconds"] = median(startup)
    figures["resident_mib_after_load"] = median(memory)
    figures.update(bench_items(runs, seconds, work))
    return figures


def bench_items(runs: int, seconds: int, work: Path) -> dict[str, Any]:
    """The items endpoints of a PostgreSQL service, on a scratch database."""
    answers = {"auth": "none", "db_engine": "postgresql"}
    service = installed(render_answers(work / "items", answers))
    python = str(service / ".venv" / "bin" / "python")
    database = f"bench_{os.getpid()}"
    env = tool_env() | {"DATABASE_URL": POSTGRES.format(database=database)}
    postgres_sql(f"CREATE DATABASE {database}")
    try:
        check([python, "-m", "alembic", "upgrade", "head"], cwd=service, env=env)
        one: list[dict[str, float]] = []
        page: list[dict[str, float]] = []
        port = free_port()
        command = [python, "-m", "fastapi", "run", "app/main.py", "--port", str(port)]
        with serving(command, service, port, env):
            base = f"http://127.0.0.1:{port}/api/v1/items"
            ids = [
                post_json(base, {"name": f"item {n}", "description": "benchmark"})["id"]
                for n in range(60)
            ]
            for _ in range(runs):
                one.append(wrk(f"{base}/{ids[0]}", seconds))
                page.append(wrk(f"{base}?size=50", seconds))
    finally:
        postgres_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return {
        "item_rps": median([s["requests_per_second"] for s in one]),
        "item_p99_ms": median([s["p99_ms"] for s in one]),
        "list_50_rps": median([s["requests_per_second"] for s in page]),
        "list_50_p99_ms": median([s["p99_ms"] for s in page]),
    }


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
    return bench_serve(runs, 2 if quick else 10, work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    choices = ["render", "sweep", "variants", "suite", "serve", "all"]
    parser.add_argument("benchmark", choices=choices)
    parser.add_argument("--quick", action="store_true", help="once, small: for CI")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
