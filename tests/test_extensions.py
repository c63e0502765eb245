"""The Jinja extensions: the derived context and the Python module filter."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, load_extension
from tests.matrix import sweep_set

context = load_extension("context")
pymodule = load_extension("pymodule")

DEFAULTS = {
    "project_size": "medium",
    "db_library": "sqlalchemy",
    "db_engine": "sqlite",
    "auth": "jwt",
    "background_tasks": "fastapi",
    "python_version": "3.12",
}


# --- the derived context -------------------------------------------------------


def test_every_layout_places_every_concept_it_can_have() -> None:
    shared = {concept for concept, flag in context.CONCEPTS if flag != "is_large"}
    for layout in context.LAYOUTS:
        assert shared <= set(context.module_map(layout))
    assert "api_router" in context.module_map("large")


@pytest.mark.parametrize(
    ("layout", "concept", "module"),
    [
        ("small", "items_service", "app.services"),
        ("small", "items_routes", "app.main"),
        ("medium", "items_service", "app.items.service"),
        ("medium", "items_repository", "app.items.service"),
        ("medium", "session_dep", "app.core.db"),
        ("large", "items_repository", "app.repositories.items"),
        ("large", "items_service", "app.services.items"),
        ("large", "items_routes", "app.api.v1.endpoints.items"),
        ("large", "session_dep", "app.api.deps"),
    ],
)
def test_layouts_place_concepts_where_the_design_says(
    layout: str, concept: str, module: str
) -> None:
    assert context.module_map(layout)[concept] == module


def test_no_database_brings_no_database_code_or_packages() -> None:
    derived = context.derive({**DEFAULTS, "db_library": "none", "auth": "none"})

    assert not any(
        "sqlalchemy" in dep or "alembic" in dep
        for dep in derived["runtime_dependencies"]
    )
    assert "app.core.db" not in derived["modules"]
    assert derived["features"] == ["jobs"]
    assert derived["jobs_in_memory"]


def test_defaults_bring_exactly_the_packages_they_use() -> None:
    derived = context.derive(DEFAULTS)

    names = {dep.split("[")[0].split(">")[0] for dep in derived["runtime_dependencies"]}
    assert names == {
        "aiosqlite",
        "alembic",
        "fastapi",
        "pwdlib",
        "pydantic-settings",
        "pyjwt",
        "sqlalchemy",
        "uvloop",
    }


@pytest.mark.parametrize(
    ("answers", "present", "absent"),
    [
        (
            {"db_engine": "postgresql"},
            {"asyncpg"},
            {"aiosqlite", "aiomysql", "sqlmodel"},
        ),
        ({"db_engine": "mysql"}, {"aiomysql"}, {"aiosqlite", "asyncpg", "sqlmodel"}),
        (
            {"db_library": "sqlmodel"},
            {"sqlmodel", "aiosqlite"},
            {"asyncpg", "aiomysql"},
        ),
    ],
)
def test_each_database_answer_brings_its_packages_and_no_others(
    answers: dict[str, str], present: set[str], absent: set[str]
) -> None:
    derived = context.derive({**DEFAULTS, **answers})

    names = {re.split(r"[\[>]", dep)[0] for dep in derived["runtime_dependencies"]}
    assert present <= names
    assert not absent & names


def _render_call(expression: str, answers: dict[str, str]) -> str:
    """``expression`` rendered with the context hook's globals and derived values."""
    from jinja2 import Environment

    environment = Environment(extensions=[context.ContextUpdater])
    values = context.derive(DEFAULTS | answers)
    return environment.from_string(expression).render(values)


def test_a_route_on_the_app_carries_its_features_prefix_scope_and_errors() -> None:
    answers = {"project_size": "small", "auth": "api_key"}
    rendered = _render_call(
        '{{ route_arguments("items", "/{item_id}", errors=[404], body=true, '
        'scope="ITEMS_WRITE") }}',
        answers,
    )
    assert rendered == (
        "['\"/api/v1/items/{item_id}\"', 'tags=[\"items\"]', "
        "'dependencies=[Security(require_api_key, scopes=[ITEMS_WRITE])]', "
        "'responses=error_responses(400, 401, 403, 404, 413, 422, 503)']"
    )


def test_a_route_on_a_router_leaves_the_prefix_and_feature_errors_to_it() -> None:
    answers = {"project_size": "medium", "auth": "api_key"}
    route = _render_call(
        '{{ route_arguments("items", "", errors=[422], scope="ITEMS_READ") }}', answers
    )
    assert route == (
        "['\"\"', 'dependencies=[Security(require_api_key, scopes=[ITEMS_READ])]', "
        "'responses=error_responses(403, 422)']"
    )
    router = _render_call('{{ router_arguments("items") }}', answers)
    assert "require_api_key" not in router
    assert 'prefix="/items"' in router
    imports = _render_call('{{ route_imports("items") }}', answers)
    assert "from app.core.scopes import ITEMS_READ, ITEMS_WRITE" in imports
    assert _render_call('{{ route_imports("health") }}', answers) == ""


def test_a_jwt_route_asks_for_its_scope_in_the_user_parameter() -> None:
    answers = {"project_size": "medium", "auth": "jwt"}
    route = _render_call(
        '{{ route_arguments("items", "", scope="ITEMS_READ") }}', answers
    )
    assert route == "['\"\"', 'responses=error_responses(403)']"
    parameter = _render_call('{{ user_parameter("ITEMS_WRITE") }}', answers)
    assert parameter == "    user: ItemWriter,\n"
    imports = _render_call('{{ route_imports("items") }}', answers)
    assert "from app.auth.dependencies import ItemReader, ItemWriter" in imports


def test_a_route_that_documents_its_own_200_merges_it_after_the_errors() -> None:
    answers = {"project_size": "medium"}
    route = _render_call(
        '{{ route_arguments("items", "/export", errors=[422], ok="EXPORT") }}', answers
    )
    assert route == (
        "['\"/export\"', 'responses=error_responses(422) | {200: EXPORT}']"
    )
    alone = _render_call('{{ route_arguments("items", "/x", ok="EXPORT") }}', answers)
    assert alone == "['\"/x\"', 'responses={200: EXPORT}']"


def test_a_string_literal_of_none_is_none() -> None:
    assert pymodule.python_string(None) == "None"
    assert pymodule.python_string("0001") == '"0001"'


def test_every_variant_of_a_concept_has_its_file() -> None:
    for concept, (_, variants) in context.VARIANTS.items():
        for variant in variants.values():
            assert (ROOT / context.partial_path(concept, variant)).exists()


def test_packages_include_every_parent_package() -> None:
    derived = context.derive({**DEFAULTS, "project_size": "large"})

    assert {"app.api", "app.api.v1", "app.api.v1.endpoints"} <= set(derived["packages"])


def test_the_hook_survives_a_combination_the_questionnaire_refuses() -> None:
    # Copier runs the hook before the validator's sentence is shown.
    assert context.derive({**DEFAULTS, "db_library": "none"})["has_jwt"]


def test_the_hook_reads_answers_that_do_not_exist_yet() -> None:
    # Copier runs the hook while the questions are still being asked.
    assert context.derive({})["layout"] == "medium"


def template_modules() -> set[str]:
    """Every module the template tree has a wrapper file for."""
    modules = set()
    for wrapper in (ROOT / "template" / "app").rglob("*.jinja"):
        text = wrapper.read_text()
        modules.add(text.split('python_module("', 1)[1].split('"', 1)[0])
    return modules


def test_every_module_an_answer_set_needs_has_a_wrapper_and_no_more() -> None:
    needed = set()
    for answers in sweep_set():
        needed |= set(context.derive(answers)["modules"])

    assert needed == template_modules()


# --- the pymodule filter --------------------------------------------------------


def ruff_tidy(source: str, tmp_path: Path) -> str:
    """What `ruff check --select I --fix` and `ruff format` make of ``source``."""
    (tmp_path / "app").mkdir(exist_ok=True)
    target = tmp_path / "app" / "module.py"
    target.write_text(source)
    config = ["--isolated", "--config", "lint.isort.known-first-party = ['app']"]
    ruff = Path(sys.executable).parent / "ruff"
    subprocess.run(
        [ruff, "check", *config, "--select", "I", "--fix", "-q", target], check=False
    )
    subprocess.run([ruff, "format", *config, "-q", target], check=True)
    return target.read_text()


MESSY = '''"""Doc."""
from sqlalchemy import select, func
from app.items.service import fetch_item
import asyncio

from app.core.db import Base
from pydantic import BaseModel, Field, EmailStr, field_validator, ConfigDict, SecretStr, model_validator
logger = 1



# About f.
async def f() -> None:
    x = 1


    return None
from collections.abc import Sequence
from app.services import items as items_service
from app import worker
from app import main as jobs_routes
from sqlalchemy.ext.asyncio import AsyncSession as S, async_sessionmaker, AsyncEngine
CONST = 2
class A:
    x: int = 1
'''


def test_pymodule_output_is_what_ruff_would_write(tmp_path: Path) -> None:
    tidy = pymodule.format_module(MESSY, "app.other")

    assert tidy == ruff_tidy(tidy, tmp_path)


def test_pymodule_drops_imports_of_the_module_itself() -> None:
    tidy = pymodule.format_module(MESSY, "app.items.service")

    assert "from app.items.service import" not in tidy
    assert "from app.core.db import Base" in tidy


def test_pymodule_merges_imports_from_one_module() -> None:
    source = "from a import x\nfrom a import y\nfrom a import x\n\nz = x, y\n"

    assert pymodule.format_module(source, "app.m") == "from a import x, y\n\nz = x, y\n"


def test_pymodule_names_the_module_when_a_partial_is_not_python() -> None:
    with pytest.raises(ValueError, match=r"app\.broken does not render as Python"):
        pymodule.format_module("def broken(:\n", "app.broken")


def test_pymodule_reads_pep_695_syntax_on_any_renderer() -> None:
    source = "from typing import Any\n\n\ndef first[T](items: list[T]) -> T:\n    return items[0]\n"

    assert pymodule.format_module(source, "app.m") == source


def test_quoted_is_a_valid_string_literal_everywhere() -> None:
    value = 'Zoë\'s "API" \\ v2'

    literal = pymodule.quoted(value)

    assert eval(literal) == value  # Python
    assert __import__("json").loads(literal) == value  # TOML/YAML basic strings


def test_python_strings_are_quoted_as_ruff_quotes_them(tmp_path: Path) -> None:
    texts = ["plain", 'has "two" quotes', "one's", "back\\slash", 'mix "a" \'b\' "c"']
    source = "".join(
        f"VALUE_{n} = {pymodule.python_string(text)}\n" for n, text in enumerate(texts)
    )

    assert ruff_tidy(source, tmp_path) == source
    for n, text in enumerate(texts):
        assert eval(pymodule.python_string(text)) == text, n


def test_an_environment_setting_keeps_the_imports_below_it(tmp_path: Path) -> None:
    source = (
        '"""Doc."""\nimport os\n\n# Before the app loads.\n'
        'os.environ["BROKER_URL"] = "memory://"\nfrom app.main import app\n'
        "import pytest\nX = (pytest, app)\n"
    )

    tidy = pymodule.format_module(source, "tests.conftest")

    assert tidy.index("os.environ") < tidy.index("from app.main import app")
    assert tidy == ruff_tidy(tidy, tmp_path)


def test_answers_read_a_yes_no_answer_as_a_bool() -> None:
    @dataclass(frozen=True)
    class WithMetrics(context.Answers):
        metrics: bool = False

    assert WithMetrics.read({"metrics": True}).metrics is True
    assert WithMetrics.read({"metrics": "false"}).metrics is False
    assert WithMetrics.read({"project_size": "large"}).layout == "large"
    assert WithMetrics.read({}).metrics is False


def test_every_contribution_an_answer_set_needs_exists() -> None:
    for answers in sweep_set():
        for point, parts in context.derive(answers)["points"].items():
            for part in parts:
                assert (ROOT / part).exists(), (point, part)


def test_every_option_file_is_a_contribution_some_option_lists() -> None:
    listed = {
        f"template/_partials/{option.folder}/{context.POINTS[point]}"
        for option in context.OPTIONS
        for point in option.points
    }
    point_files = set(context.POINTS.values())
    found = {
        str(path.relative_to(ROOT))
        for folder in {option.folder for option in context.OPTIONS}
        for path in (ROOT / "template" / "_partials" / folder).glob("*")
        if path.name in point_files
    }
    assert found <= listed, found - listed


@pytest.mark.parametrize(
    ("cache", "ratio"), [("memory", "cache_memory"), ("redis", "cache")]
)
def test_readme_cache_cost_is_the_serve_benchmarks(cache: str, ratio: str) -> None:
    # The generated README quotes the benchmark; measuring again must update it.
    serve = json.loads((ROOT / "bench" / "results" / "serve.json").read_text())
    measured = serve["figures"][f"{ratio}_item_ratio"]

    quoted = context.derive({**DEFAULTS, "cache": cache})["cache_cost"]

    assert quoted == f"{measured:.1f} times"
