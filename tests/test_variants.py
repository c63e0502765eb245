"""A covering set of answer sets (every pair of answers at least once, the defaults
first), each installed with uv and run through its own checks: its test suite with the
coverage gate, its migrations and mypy --strict."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    SERVER_URLS,
    databases,
    python_for,
    run,
    server_sql,
    server_url,
    uv,
    variant_env,
)
from tests.matrix import copier_data, covering_set, shard, variant_id

# CI runs the covering set in shards (VARIANT_SHARD="2/4", from
# `python tests/matrix.py --shards 4`); locally it runs whole.
SHARD = os.environ.get("VARIANT_SHARD")
VARIANTS = shard(SHARD) if SHARD else covering_set()


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache per xdist worker: the library stubs are analysed once."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return tmp_path_factory.getbasetemp().parent / f"mypy-cache-{worker}"


@pytest.mark.variant
@pytest.mark.parametrize("answers", VARIANTS, ids=[variant_id(a) for a in VARIANTS])
def test_variant_installs_and_passes_its_own_checks(
    copie: Any, answers: dict[str, str], mypy_cache: Path
) -> None:
    # A slug of its own: variants running side by side never share database names.
    slug = "svc-" + hashlib.sha1(variant_id(answers).encode()).hexdigest()[:8]
    result = copie.copy(extra_answers=copier_data(answers) | {"project_slug": slug})
    assert result.exit_code == 0, result.exception
    project: Path = result.project_dir
    env = variant_env(answers) | {"MYPY_CACHE_DIR": str(mypy_cache)}
    engine = answers["db_engine"] if answers["db_library"] != "none" else "none"
    on_server = "DATABASE_URL" in env
    # A variant with workers runs them on the real broker in its integration tests.
    broker = "BROKER_URL" in env

    def uv_run(*command: str) -> str:
        return run(uv(), "run", "--no-sync", *command, cwd=project, env=env)

    run(
        uv(),
        "sync",
        "--python",
        python_for(answers["python_version"]),
        cwd=project,
        env=env,
    )
    assert uv_run("python", "-c", "import sys; print(sys.version)").startswith(
        answers["python_version"]
    )

    # On a server, the suite must also hold up run in parallel by pytest-xdist.
    parallel = ["-n", "2"] if on_server or broker else []
    tests = uv_run("pytest", "-q", "-p", "no:cacheprovider", *parallel)
    summary = tests.strip().splitlines()[-1]
    assert " passed" in summary
    # Nothing skipped: a variant with workers ran them on the real broker.
    assert not re.search(r"\d+ (skipped|xfailed|deselected)", summary), summary
    assert "Required test coverage of 95.0% reached" in tests
    if on_server:
        prefix = "test_" + slug.replace("-", "_")
        left = {name for name in databases(engine) if name.startswith(prefix)}
        assert not left, f"the suite left databases behind: {left}"

    checked = ["app", "tests"]
    if answers["db_library"] != "none":
        checked.append("migrations")
        with migration_database(engine, env):
            uv_run("alembic", "upgrade", "head")
            uv_run("alembic", "check")
            uv_run("alembic", "downgrade", "base")
    uv_run("mypy", "--strict", *checked)


@contextmanager
def migration_database(engine: str, env: dict[str, str]) -> Iterator[None]:
    """An empty database for the alembic commands (SQLite makes its own file)."""
    if engine not in SERVER_URLS:
        yield
        return
    name = f"migrations_{secrets.token_hex(4)}"
    server_sql(engine, f"CREATE DATABASE {name}")
    env["DATABASE_URL"] = server_url(engine, name)
    try:
        yield
    finally:
        server_sql(engine, f"DROP DATABASE {name}")
