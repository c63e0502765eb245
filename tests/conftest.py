"""Fixtures of the template's own tests: isolated copier settings, renders, tools."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import copier._main
import jinja2
import pytest
from copier import run_copy

ROOT = Path(__file__).resolve().parent.parent
TOOL_TIMEOUT = 600


@pytest.fixture(scope="session", autouse=True)
def isolated_copier_settings(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """A developer's ~/.config/copier/settings.yml must not change what renders."""
    settings = tmp_path_factory.mktemp("copier") / "settings.yml"
    settings.write_text("{}\n")  # copier rejects an empty file
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COPIER_SETTINGS_PATH", str(settings))
        yield


# The modules whose tests take a minute or more each, longest first: pytest-xdist
# (`--dist=worksteal`, pyproject.toml) splits the run between the workers, and a
# worker that runs out takes half of what another has not started, so long tests
# started first leave no worker idle at the end.
LONG_FIRST = ("test_variants", "test_bench", "test_update", "test_telemetry")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.path.stem
        return LONG_FIRST.index(module) if module in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order


def render(destination: Path, data: Mapping[str, str], **options: object) -> Path:
    """Render this checkout (HEAD plus uncommitted changes) with ``data``."""
    run_copy(
        str(ROOT),
        destination,
        data=dict(data),
        defaults=True,
        unsafe=True,
        quiet=True,
        vcs_ref="HEAD",
        **options,  # type: ignore[arg-type]
    )
    return destination


def tool_env() -> dict[str, str]:
    """The environment a generated project's tools run in: nothing of ours leaks in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT"}
        and not key.startswith(("PYTEST_", "COV_CORE_", "COVERAGE_"))
    }
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    return env


def run(*command: str | Path, cwd: Path, env: Mapping[str, str] | None = None) -> str:
    """Run a command; on failure the assertion shows the end of its output."""
    completed = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=dict(env or tool_env()),
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, (
        f"`{' '.join(map(str, command))}` failed in {cwd} "
        f"(exit {completed.returncode}):\n{output[-6000:]}"
    )
    return output


@cache
def uv() -> str:
    """The uv of this environment (a pyenv shim would follow .python-version files)."""
    candidate = Path(sys.executable).parent / "uv"
    found = str(candidate) if candidate.exists() else shutil.which("uv")
    assert found, "uv is not installed: run the tests with `uv run pytest`"
    return found


@cache
def python_for(version: str) -> str:
    """An interpreter for ``version`` that really runs (pyenv shims may not)."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run(
            [pyenv, "root"], capture_output=True, text=True, check=False
        ).stdout.strip()
        candidates += sorted(
            str(path)
            for path in Path(root, "versions").glob(f"{version}.*/bin/python{version}")
        )
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    pytest.fail(f"No Python {version} interpreter found; the variants need 3.11-3.13")


def sync(project: Path, env: Mapping[str, str] | None = None) -> str:
    """`uv sync` a rendered project on the Python its `.python-version` names."""
    version = (project / ".python-version").read_text().strip()
    python = python_for(version)
    return run(uv(), "sync", "--quiet", "--python", python, cwd=project, env=env)


# The servers on this machine that variants naming them are tested against; the
# generated suites create (and drop) databases of their own there.
SERVER_URLS = {
    "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
    "mysql": "mysql+aiomysql://root@127.0.0.1:3306/{database}?charset=utf8mb4",
}
SERVER_DATABASES = {"postgresql": "postgres", "mysql": "test"}


def server_url(engine: str, database: str | None = None) -> str:
    """DATABASE_URL for a local server: its default database unless one is named."""
    return SERVER_URLS[engine].format(database=database or SERVER_DATABASES[engine])


SERVER_CLIENTS = {
    "postgresql": ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atq", "-c"],
    "mysql": ["mysql", "-h", "127.0.0.1", "-uroot", "-N", "-e"],
}
LIST_DATABASES = {
    "postgresql": "SELECT datname FROM pg_database",
    "mysql": "SHOW DATABASES",
}


# How each client names the database it runs in.
DATABASE_OPTIONS = {"postgresql": "-d", "mysql": "-D"}


def server_sql(engine: str, statement: str, database: str | None = None) -> list[str]:
    """Run SQL on a local server with its command-line client, in its default
    database unless one is named; the output lines."""
    *client, run_option = SERVER_CLIENTS[engine]
    if database:
        client += [DATABASE_OPTIONS[engine], database]
    completed = subprocess.run(
        [*client, run_option, statement],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"The {engine} server on 127.0.0.1 does not answer ({completed.stderr.strip()}); "
            "start it, or run .ci/run, which starts the servers the tests use."
        )
    return completed.stdout.split()


def databases(engine: str) -> set[str]:
    return set(server_sql(engine, LIST_DATABASES[engine]))


# The brokers on this machine; a variant's own tests give each run a queue of its own.
# RabbitMQ lets `guest` in only over loopback: a broker in a container (the template's
# CI) has another user, named by TEMPLATE_RABBITMQ_URL.
# The local Redis, for the services that cache item reads in it.
CACHE_URL = "redis://127.0.0.1:6379/2"
# The local Redis, for the services that count rate limits in it.
RATE_LIMIT_URL = "redis://127.0.0.1:6379/4"
BROKER_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": os.environ.get(
        "TEMPLATE_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"
    ),
}


@cache
def template_copy() -> Path:
    """This work tree as plain files (no git): what the sweep renders, fast."""
    copy = Path(tempfile.mkdtemp(prefix="copier-fastapi-"))
    listed = run(
        "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT
    )
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


def variant_env(answers: Mapping[str, object]) -> dict[str, str]:
    """The environment a rendered variant's own checks run in: its suite runs on the
    database server and the broker its answers name, on this machine."""
    env = tool_env()
    if answers["db_library"] != "none" and answers["db_engine"] in SERVER_URLS:
        env["DATABASE_URL"] = server_url(str(answers["db_engine"]))
    if answers["background_tasks"] in {"celery", "taskiq"}:
        env["BROKER_URL"] = BROKER_URLS[str(answers["broker"])]
    if answers["db_library"] != "none" and answers.get("cache") == "redis":
        # Keys under a prefix of the variant's own (each test uses its own too), so
        # variants running at once never read each other's items.
        env["CACHE_URL"] = CACHE_URL
        env["CACHE_PREFIX"] = f"variant-{uuid.uuid4().hex[:12]}:"
    if answers.get("rate_limit", "none") != "none":
        # Limits no fuzzer reaches, so the served fuzzing explores the API (the
        # suite's tests of the limits set their own).
        env["RATE_LIMIT"] = "1000000/minute"
        if answers["auth"] == "jwt":
            env["RATE_LIMIT_AUTH"] = "1000000/minute"
    if answers.get("rate_limit") == "redis":
        env["RATE_LIMIT_URL"] = RATE_LIMIT_URL
        env["RATE_LIMIT_PREFIX"] = f"variant-{uuid.uuid4().hex[:12]}:"
    return env


@contextmanager
def rendering_fast() -> Iterator[None]:
    """What does not change between many renders is done once.

    Copier makes a new Jinja environment per render and compiles every template
    again: each compiled template is kept (the rendering itself is untouched). And
    after writing each file Copier asks git whether the destination tracks file
    modes; a fresh destination is no repository, so it is not asked.
    """
    compile_template = jinja2.Environment.compile
    compiled: dict[tuple[object, ...], Any] = {}

    def compile_once(
        environment: jinja2.Environment, source: Any, *args: Any, **kwargs: Any
    ) -> Any:
        key = (
            environment.trim_blocks,
            environment.lstrip_blocks,
            environment.keep_trailing_newline,
            environment.undefined,
            tuple(sorted(environment.extensions)),
            source,
            args,
            tuple(sorted(kwargs.items())),
        )
        if key not in compiled:
            compiled[key] = compile_template(environment, source, *args, **kwargs)
        return compiled[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jinja2.Environment, "compile", compile_once)
        patch.setattr(copier._main, "is_git_available", lambda: False)
        yield


def load_extension(name: str) -> ModuleType:
    """Load an extension the way copier-template-extensions does: by file path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "extensions" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
