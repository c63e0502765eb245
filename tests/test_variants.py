"""A covering set of answer sets (every pair of answers at least once, the defaults
first), each installed with uv and run through its own checks: its test suite with the
coverage gate, its migrations and mypy --strict."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import python_for, run, tool_env, uv
from tests.matrix import copier_data, covering_set, variant_id

VARIANTS = covering_set()


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
    result = copie.copy(extra_answers=copier_data(answers))
    assert result.exit_code == 0, result.exception
    project: Path = result.project_dir
    env = tool_env() | {"MYPY_CACHE_DIR": str(mypy_cache)}

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

    tests = uv_run("pytest", "-q", "-p", "no:cacheprovider")
    assert " passed" in tests
    assert "Required test coverage of 95.0% reached" in tests

    checked = ["app", "tests"]
    if answers["db_library"] != "none":
        checked.append("migrations")
        uv_run("alembic", "upgrade", "head")
        uv_run("alembic", "check")
        uv_run("alembic", "downgrade", "base")
    uv_run("mypy", "--strict", *checked)
