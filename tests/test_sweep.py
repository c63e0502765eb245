"""Every answer set of the sweep (tests/matrix.py: every accepted architecture, each
feature value, and a 3-wise covering array over all questions) renders a clean,
lint-free project with exactly the parts its answers ask for."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from copier import run_copy

from tests import kustomize
from tests.conftest import load_extension, render, rendering_fast, run, template_copy
from tests.matrix import Answers, copier_data, sweep_set, variant_id

context = load_extension("context")
pymodule = load_extension("pymodule")
# SWEEP_EVERY=N renders one answer set in N (the benchmarks' quick mode).
SWEEP = sweep_set()[:: int(os.environ.get("SWEEP_EVERY", "1"))]
# The sweep runs in batches of at most 24: each renders its answer sets, checks each
# one, then lints and validates the whole batch with one call per tool.
BATCH_COUNT = -(-len(SWEEP) // 24)
# Every batch takes one answer set in BATCH_COUNT, so each mixes layouts and stacks.
BATCHES = [SWEEP[start::BATCH_COUNT] for start in range(BATCH_COUNT)]
# Also `}}`: valid in Python, but it reads as template residue to people and tools.
JINJA_MARKERS = re.compile(r"\{%|%\}|\{\{|\}\}|\{#")
# Except in a GitHub Actions expression: `${{ github.token }}`.
ACTIONS_EXPRESSION = re.compile(r"\$\{\{ [^{}]+ \}\}")
TEXT_SUFFIXES = {
    ".py",
    ".toml",
    ".yml",
    ".yaml",
    ".md",
    ".ini",
    ".mako",
    ".example",
    ".env",
}


TOOLS = Path(sys.executable).parent
# The validators of the deployment files; each distinct file is validated once per
# test process (a few dozen differ among hundreds of renders).
DEPLOYMENT_VALIDATORS = {
    "Dockerfile": [["hadolint"]],
    "compose.yaml": [["check-jsonschema", "--builtin-schema", "vendor.compose-spec"]],
    ".github/workflows/ci.yml": [
        ["actionlint"],
        ["zizmor", "--offline", "--no-progress"],
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"],
    ],
    ".github/workflows/template-update.yml": [
        ["actionlint"],
        ["zizmor", "--offline", "--no-progress"],
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"],
    ],
    ".pre-commit-config.yaml": [["pre-commit", "validate-config"]],
    # Only where there is a database server or a broker (check_render says when).
    "compose.dev.yaml": [
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec"]
    ],
}
OPTIONAL_DEPLOYMENT_FILES = {"compose.dev.yaml"}
# Settings kept in the Kubernetes Secret that the service works without: a Redis it
# leaves out while down (the cache's, the rate limits').
WORKS_WITHOUT = {"CACHE_URL", "RATE_LIMIT_URL"}
_validated: set[tuple[str, str]] = set()


def ruff(*args: str | Path, cwd: Path) -> str:
    return run(TOOLS / "ruff", *args, cwd=cwd)


def validate_deployment_files(projects: list[Path]) -> None:
    """Every distinct deployment file of ``projects`` through its validators, one call
    per validator for all of them."""
    for relative, validators in DEPLOYMENT_VALIDATORS.items():
        for tool, *arguments in validators:
            unseen: dict[str, Path] = {}
            for project in projects:
                path = project / relative
                if relative in OPTIONAL_DEPLOYMENT_FILES and not path.exists():
                    continue
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if (tool, digest) not in _validated:
                    unseen.setdefault(digest, path)
            if unseen:
                run(TOOLS / tool, *arguments, *unseen.values(), cwd=projects[0])
                _validated.update((tool, digest) for digest in unseen)


def text_files(project: Path) -> list[Path]:
    return [
        path
        for path in project.rglob("*")
        if path.is_file()
        and (path.suffix in TEXT_SUFFIXES or path.name.startswith((".", "Dockerfile")))
    ]


# Distributions that share the `opentelemetry` namespace, by the module they add
# (the longest that prefixes an import wins); the API owns the rest.
OPENTELEMETRY = {
    "opentelemetry": "opentelemetry-api",
    "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry.instrumentation.httpx": "opentelemetry-instrumentation-httpx",
    "opentelemetry.instrumentation.celery": "opentelemetry-instrumentation-celery",
}
# Distributions whose import name differs, both ways.
IMPORTED_AS = {
    "pyjwt": "jwt",
    "pydantic-settings": "pydantic_settings",
    "taskiq-fastapi": "taskiq_fastapi",
    "taskiq-redis": "taskiq_redis",
    "taskiq-aio-pika": "taskiq_aio_pika",
    "aio-pika": "aio_pika",
    "prometheus-client": "prometheus_client",
    "sentry-sdk": "sentry_sdk",
    "fastapi-offline": "fastapi_offline",
    **{dist: module for module, dist in OPENTELEMETRY.items()},
}
IMPORT_NAMES = {name: dist for dist, name in IMPORTED_AS.items()}
# Imported by the code, installed by what it declares (FastAPI, Celery, ...).
TRANSITIVE = {"pydantic", "starlette", "anyio", "kombu", "aiormq", "httpx"}


def top_level(module: str) -> str:
    """The package an import comes from: its first name, or for the OpenTelemetry
    namespace the distribution's module."""
    if module.split(".")[0] != "opentelemetry":
        return module.split(".")[0]
    return max(
        (prefix for prefix in OPENTELEMETRY if f"{module}.".startswith(f"{prefix}.")),
        key=len,
    )


def third_party_imports(project: Path) -> set[str]:
    """The top-level packages the app and the migrations import from outside."""
    found = set()
    for path in [*project.glob("app/**/*.py"), *project.glob("migrations/**/*.py")]:
        # Parsed as the renderer does: PEP 695 syntax also on Python 3.11.
        for node in ast.walk(pymodule._parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {top_level(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(top_level(node.module))
    return found - set(sys.stdlib_module_names) - {"app", "migrations"}


def app_code(project: Path) -> str:
    return "\n".join(path.read_text() for path in (project / "app").rglob("*.py"))


def dependency_names(project: Path, group: str | None = None) -> set[str]:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    requirements = (
        pyproject["dependency-groups"][group]
        if group
        else pyproject["project"]["dependencies"]
    )
    return {
        re.split(r"[\[<>=]", requirement, maxsplit=1)[0] for requirement in requirements
    }


@pytest.fixture(scope="module", autouse=True)
def render_fast() -> Iterator[None]:
    with rendering_fast():
        yield


def render_answers(destination: Path, answers: Mapping[str, object]) -> Path:
    run_copy(
        str(template_copy()),
        destination,
        data=copier_data(answers),
        defaults=True,
        unsafe=True,
        quiet=True,
    )
    return destination


@pytest.mark.parametrize(
    "batch", BATCHES, ids=[f"{n}-of-{len(BATCHES)}" for n in range(1, len(BATCHES) + 1)]
)
def test_renders_are_clean_lint_free_and_have_only_what_was_chosen(
    batch: list[Answers], tmp_path: Path
) -> None:
    failures = {}
    projects = []
    for answers in batch:
        project = render_answers(tmp_path / variant_id(answers), answers)
        projects.append(project)
        try:
            check_render(answers, project)
        except AssertionError as failure:
            failures[variant_id(answers)] = str(failure)
    assert not failures, "\n\n".join(f"{name}: {why}" for name, why in failures.items())

    # The code passes the linters it ships with, each render under its own
    # configuration (ruff reads the pyproject.toml nearest each file), and the
    # deployment files pass theirs.
    ruff("check", "--no-cache", ".", cwd=tmp_path)
    ruff("format", "--check", "--no-cache", ".", cwd=tmp_path)
    validate_deployment_files(projects)
    validate_kubernetes(projects)


def check_render(answers: Answers, project: Path) -> None:
    """Everything a render must be, but lint: it is done for the whole batch."""
    library = answers["db_library"]
    has_db = library != "none"
    engine = answers["db_engine"] if has_db else "none"
    has_jwt = answers["auth"] == "jwt"
    has_api_key = answers["auth"] == "api_key"
    background = answers["background_tasks"]
    has_jobs = background != "none"
    has_queue = background in {"celery", "taskiq"}
    broker = answers["broker"] if has_queue else "none"
    metrics = bool(answers.get("metrics", False))
    tracing = bool(answers.get("tracing", False))
    sentry = bool(answers.get("sentry", False))

    # Nothing of the template machinery reaches the project.
    for leftover in (".git", "copier.yml", "copier.yaml", "_partials", "extensions"):
        assert not list(project.rglob(leftover)), leftover
    for path in text_files(project):
        text = path.read_text()
        assert not JINJA_MARKERS.search(ACTIONS_EXPRESSION.sub("", text)), (
            f"Jinja left in {path.relative_to(project)}"
        )
        if path.suffix not in {".py", ".mako"}:  # Python puts two blanks before a def
            assert "\n\n\n" not in text, f"blank-line run in {path.name}"
        if path.suffix == ".toml":
            tomllib.loads(text)
        if path.suffix in {".yml", ".yaml"}:
            list(yaml.safe_load_all(text))

    dockerfile = (project / "Dockerfile").read_text()
    for line in (
        f"FROM python:{answers['python_version']}-slim",
        "UV_COMPILE_BYTECODE=1",
        "UV_LINK_MODE=copy",
        "UV_PYTHON_DOWNLOADS=0",
        "--mount=type=cache,target=/root/.cache/uv",
        "uv sync --locked --no-install-project --no-dev",
        "WEB_CONCURRENCY=1",
    ):
        assert line in dockerfile, line
    assert re.search(r"^USER [1-9][0-9]*", dockerfile, re.MULTILINE)  # not root
    assert re.search(r'^CMD \["fastapi", "run", ', dockerfile, re.MULTILINE)
    assert {".env", ".venv"} <= set((project / ".dockerignore").read_text().split())
    hooks = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    hook_tools = {
        hook["entry"].split()[2] for repo in hooks["repos"] for hook in repo["hooks"]
    }
    assert hook_tools == {"ruff", "mypy"}
    assert hook_tools <= dependency_names(project, "dev")
    deploying = (project / "README.md").read_text().split("## Deploying", 1)[1]
    for said in ("docker compose up", "WEB_CONCURRENCY", "/health", "/ready"):
        assert said in deploying, said
    assert ("alembic upgrade head" in deploying) == has_db
    assert ("--scale worker=" in deploying) == has_queue

    # Exactly the dependencies the code uses: each declared one is imported (or is
    # the driver DATABASE_URL names), and each third-party import is declared, by
    # the project or by a package it declares. The list is the context hook's.
    declared = dependency_names(project)
    assert declared == {
        re.split(r"[\[<>=]", requirement, maxsplit=1)[0]
        for requirement in context.derive(answers)["runtime_dependencies"]
    }
    imported = third_party_imports(project)
    drivers = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}
    # uvicorn (fastapi run) picks uvloop up by itself; nothing imports it.
    used = {IMPORT_NAMES.get(name, name) for name in imported} | {"fastapi", "uvloop"}
    used |= {drivers[engine]} if has_db else set()
    assert declared == used & declared, f"declared, never imported: {declared - used}"
    assert imported <= {IMPORTED_AS.get(d, d) for d in declared} | TRANSITIVE, (
        f"imported, never declared: {imported - {IMPORTED_AS.get(d, d) for d in declared}}"
    )

    # Nothing of an option that was not chosen.
    code = app_code(project)
    cache = str(answers.get("cache", "none")) if has_db else "none"
    rate_limit = str(answers.get("rate_limit", "none"))
    assert ("sqlalchemy" in code) == has_db
    assert (project / "alembic.ini").exists() == has_db
    assert (project / "migrations").exists() == has_db
    assert ("import jwt" in code) == has_jwt
    assert ("OAuth2PasswordBearer" in code) == has_jwt
    assert ("SECRET_KEY" in (project / ".env").read_text()) == has_jwt
    assert ("APIKeyHeader" in code) == has_api_key
    keys_table = project / "migrations" / "versions" / "0004_api_keys.py"
    assert keys_table.exists() == (has_api_key and has_db)
    # Every credential has scopes: the routes ask for them, the rows keep them.
    has_auth = has_jwt or has_api_key
    assert ("SecurityScopes" in code) == has_auth
    assert ("insufficient_scope" in code) == has_auth
    assert (project / "tests" / "test_scopes.py").exists() == has_auth
    versions = project / "migrations" / "versions"
    scopes_in_db = has_jwt or (has_api_key and has_db)
    assert (versions / "0007_scopes.py").exists() == scopes_in_db
    joined = (versions / "0008_scopes_and_jobs.py").exists()
    assert joined == (scopes_in_db and has_jobs)
    assert ("API_KEYS" in (project / ".env.example").read_text()) == (
        has_api_key and not has_db
    )
    assert (project / "app" / "cli.py").exists() == (
        has_jwt or (has_api_key and has_db)
    )
    # Service accounts (the client credentials grant): JWT only, and all or nothing.
    clients = has_jwt and bool(answers.get("client_credentials"))
    assert ("client_credentials" in code) == clients
    assert ("class ServiceAccount" in code) == clients
    assert ("create-service-account" in code) == clients
    assert (
        "CLIENT_TOKEN_EXPIRE_MINUTES" in (project / ".env.example").read_text()
    ) == (clients)
    assert (versions / "0009_service_accounts.py").exists() == clients
    joined = (versions / "0010_service_accounts_and_jobs.py").exists()
    assert joined == (clients and has_jobs and has_db)
    assert (project / "tests" / "test_service_accounts.py").exists() == clients
    assert ("BackgroundTasks" in code) == (background == "fastapi")
    assert (project / "app" / "worker.py").exists() == has_queue
    assert ("from celery" in code) == (background == "celery")
    assert ("from taskiq" in code) == (background == "taskiq")
    assert ("BROKER_URL" in (project / ".env.example").read_text()) == has_queue
    assert ('"/api/v1/jobs"' in code or 'prefix="/jobs"' in code) == has_jobs
    assert ("from sqlmodel" in code) == (library == "sqlmodel")
    assert ("DeclarativeBase" in code) == (library == "sqlalchemy")
    assert ("prometheus_client" in code) == metrics
    assert ("watch_pool" in code) == (metrics and has_db)
    assert ("METRICS_PATH" in (project / ".env.example").read_text()) == metrics
    assert (project / "tests" / "test_metrics.py").exists() == metrics
    assert ("from opentelemetry" in code) == tracing
    assert ("trace_database" in code) == (tracing and has_db)
    assert ("TRACE_SAMPLE_RATIO" in (project / ".env.example").read_text()) == tracing
    assert (project / "tests" / "test_tracing.py").exists() == tracing
    assert ("sentry_sdk" in code) == sentry
    assert ("SENTRY_DSN" in (project / ".env.example").read_text()) == sentry
    assert (project / "tests" / "test_sentry.py").exists() == sentry
    # The cache of item reads: its module, its tests, its settings, and the items
    # service reading through it, only when chosen.
    cached = cache != "none"
    assert (project / "tests" / "test_cache.py").exists() == cached
    assert ("await cache.get(key)" in code) == cached
    assert ("CACHE_TTL_SECONDS" in (project / ".env.example").read_text()) == cached
    assert ("CACHE_URL" in (project / ".env.example").read_text()) == (cache == "redis")
    assert ("CACHE_MAX_ENTRIES" in code.upper()) == (cache == "memory")
    assert ("## Caching" in (project / "README.md").read_text()) == cached
    # The rate limits: their middleware, tests and settings; the strict limit on
    # signing in with JWT; Redis's settings with Redis; one process in memory.
    limited = rate_limit != "none"
    example_text = (project / ".env.example").read_text()
    assert ("RateLimitMiddleware" in code) == limited
    assert (project / "tests" / "test_rate_limit.py").exists() == limited
    assert ("RATE_LIMIT=" in example_text) == limited
    assert ("RATE_LIMIT_AUTH=" in example_text) == (limited and has_jwt)
    assert ("AUTH_PATHS" in code) == (limited and has_jwt)
    assert ("RATE_LIMIT_URL=" in example_text) == (rate_limit == "redis")
    assert ("register_script" in code) == (rate_limit == "redis")
    assert ("rate limits are counted in the server" in code) == (rate_limit == "memory")
    assert ("## Rate limiting" in (project / "README.md").read_text()) == limited
    offline_docs = bool(answers.get("offline_docs", False))
    assert ("fastapi_offline" in code) == offline_docs
    assert ("docs_url=None" in code) == offline_docs
    assert (project / "tests" / "test_api_docs.py").exists() == offline_docs
    aws_lambda = bool(answers.get("aws_lambda", False))
    assert (project / "app" / "lambda_handler.py").exists() == aws_lambda
    assert (project / "tests" / "test_lambda.py").exists() == aws_lambda
    assert ("AWS_LAMBDA_FUNCTION_NAME" in code) == aws_lambda
    assert ("### AWS Lambda" in (project / "README.md").read_text()) == aws_lambda
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert ("migrate" in compose["services"]) == has_db
    assert ("db" in compose["services"]) == (engine in {"postgresql", "mysql"})
    assert ("broker" in compose["services"]) == has_queue
    assert ("worker" in compose["services"]) == has_queue
    assert ("cache" in compose["services"]) == (cache == "redis")
    assert ("ratelimit" in compose["services"]) == (rate_limit == "redis")
    for name, service in compose["services"].items():
        checked = {"db", "broker", "cache", "ratelimit", "app"}
        assert ("healthcheck" in service) == (name in checked), name
        assert service.get("env_file", [{"path": ".env"}])[0]["path"] == ".env"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == (
                "service_completed_successfully"
                if dependency == "migrate"
                else "service_healthy"
            ), (name, dependency)
    for name in ("app", "worker") if has_db else ():
        if name in compose["services"]:
            assert "migrate" in compose["services"][name]["depends_on"], name
    mounted = {
        volume.split(":", 1)[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str)
    }
    assert mounted == set(compose.get("volumes", {}))
    # With metrics, the app's containers write their figures to a fresh tmpfs.
    for name in ("app", "worker") if has_queue else ("app",):
        service = compose["services"][name]
        tmpfs = {"type": "tmpfs", "target": "/tmp/prometheus"}
        assert (tmpfs in service.get("volumes", [])) == metrics, name
        multiprocess = service.get("environment", {}).get("PROMETHEUS_MULTIPROC_DIR")
        assert multiprocess == ("/tmp/prometheus" if metrics else None), name
    # The `observability` profile: what looks at the telemetry, on loopback only.
    viewers = {"prometheus": metrics, "jaeger": tracing}
    for name, chosen in viewers.items():
        assert (name in compose["services"]) == chosen, name
        if chosen:
            assert compose["services"][name]["profiles"] == ["observability"]
            assert compose["services"][name]["ports"][0].startswith("127.0.0.1:")
    assert ("configs" in compose) == metrics
    if metrics:
        scraped = yaml.safe_load(compose["configs"]["prometheus"]["content"])
        jobs = {job["job_name"] for job in scraped["scrape_configs"]}
        assert jobs == ({"app", "worker"} if has_queue else {"app"})

    # compose.yaml publishes the API alone; compose.dev.yaml, which exists exactly when
    # there is a database server, a broker or a cache server, publishes those on
    # 127.0.0.1 only.
    servers = (
        ({"db"} if engine in {"postgresql", "mysql"} else set())
        | ({"broker"} if has_queue else set())
        | ({"cache"} if cache == "redis" else set())
        | ({"ratelimit"} if rate_limit == "redis" else set())
    )
    published = {name for name, sv in compose["services"].items() if "ports" in sv}
    assert published - set(viewers) == {"app"}
    assert compose["services"]["app"]["ports"] == ["8000:8000"]
    assert (project / "compose.dev.yaml").exists() == bool(servers)
    dev = (
        yaml.safe_load((project / "compose.dev.yaml").read_text())
        if servers
        else {"services": {}}
    )
    assert set(dev["services"]) == servers
    for name, service in dev["services"].items():
        assert set(service) == {"ports"}, name
        assert all(port.startswith("127.0.0.1:") for port in service["ports"]), name

    # Their passwords are generated into .env only, and .env.example names them.
    def variables(path: Path) -> dict[str, str]:
        return dict(
            line.split("=", 1)
            for line in path.read_text().splitlines()
            if line and not line.startswith("#")
        )

    env = variables(project / ".env")
    example = variables(project / ".env.example")
    passwords = {
        "DB_PASSWORD": "db" in servers,
        "DB_ROOT_PASSWORD": engine == "mysql",
        "BROKER_PASSWORD": has_queue,
    }
    expected = {name for name, wanted in passwords.items() if wanted}
    assert {name for name in env if name.endswith("PASSWORD")} == expected
    assert {name for name in example if name.endswith("PASSWORD")} == expected
    assert all(example[name] == "change-me" for name in expected)
    generated = [
        value
        for name, value in env.items()
        if name.endswith("PASSWORD") or name in {"SECRET_KEY", "API_KEYS"}
    ]
    example_text = (project / ".env.example").read_text()
    assert not [value for value in generated if value in example_text]
    # .env's URLs (python-dotenv expands them) and the containers' carry them.
    app_environment = compose["services"]["app"].get("environment", {})
    for setting, password, wanted in (
        ("DATABASE_URL", "DB_PASSWORD", "db" in servers),
        ("BROKER_URL", "BROKER_PASSWORD", has_queue),
    ):
        if wanted:
            assert f":${{{password}}}@127.0.0.1:" in env[setting], setting
            assert example[setting] == env[setting], setting
            assert f":${{{password}:?" in app_environment[setting], setting
    if broker == "redis":
        redis = compose["services"]["broker"]
        assert redis["command"][:2] == ["redis-server", "--requirepass"]
        assert redis["command"][2].startswith("${BROKER_PASSWORD:?")
        assert redis["environment"]["REDISCLI_AUTH"] == redis["command"][2]

    # No password is written in either compose file: every one is a ${VAR:?why}
    # reference to .env (or $$VAR, the container's own variable), and every
    # variable they use is in .env and .env.example.
    def texts(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key)
                yield from texts(value)
        elif isinstance(node, list):
            for item in node:
                yield from texts(item)
        else:
            yield str(node)

    reference = re.compile(r"\$\{\w+:\?[^}]+\}")
    for document in (compose, dev):
        for service in document["services"].values():
            environment = service.get("environment", {})
            for key, value in environment.items():
                if re.search("PASS|AUTH|SECRET|KEY", key):
                    assert reference.fullmatch(value), key
            for text in texts(service):
                assert set(re.findall(r"\$\$(\w+)", text)) <= set(environment), text
        strings = list(texts(document))
        used = set()
        for text in strings:
            for found in re.finditer(r"(?<!\$)\$\{([^}]*)\}", text):
                assert reference.fullmatch(found.group()), found.group()
                used.add(found.group(1).split(":", 1)[0])
            assert not re.search(r"(?<!\$)\$(?![{$])", text), text  # $VAR: unchecked
            for password in re.findall(r"://[^/@\s:]*:(\$\{[^}]*\}|[^@\s/]*)@", text):
                assert reference.fullmatch(password), text
            for password in re.findall(
                r"(?:^|\s)(?:-p|--password=)\"?([^\s\"]+)", text
            ):
                assert password.startswith("$$"), text
        assert not [value for value in generated if value in "\n".join(strings)]
        assert used <= set(env) & set(example), used - (set(env) & set(example))
    workflow = yaml.safe_load(
        (project / ".github" / "workflows" / "ci.yml").read_text()
    )
    services = set(workflow["jobs"]["test"].get("services", {}))
    containers = {"postgresql": {"postgres"}, "mysql": {"mysql"}}
    expected_containers = containers.get(engine, set()) | ({broker} - {"none"})
    expected_containers |= {"cache"} if cache == "redis" else set()
    expected_containers |= {"ratelimit"} if rate_limit == "redis" else set()
    assert services == expected_containers
    database_url = (project / ".env.example").read_text()
    for name, driver in {
        "sqlite": "aiosqlite",
        "postgresql": "asyncpg",
        "mysql": "aiomysql",
    }.items():
        assert (f"DATABASE_URL={name}+{driver}" in database_url) == (engine == name)

    check_kubernetes(answers, project, compose)


# The Kubernetes versions the built overlays are validated against: the oldest and
# the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi)?")


def built_overlays(project: Path) -> Path:
    """Where check_kubernetes writes the objects each overlay builds to."""
    return project.parent / f"{project.name}.k8s"


def check_kubernetes(
    answers: Answers, project: Path, compose: Mapping[str, Any]
) -> None:
    """The Kubernetes manifests: exactly the objects the answers need, each pod
    locked down and configured from the ConfigMap and the Secret, and every overlay
    built (strictly: tests/kustomize.py) into objects the validators then check."""
    k8s = project / "k8s"
    readme = (project / "README.md").read_text()
    ignored = (project / ".gitignore").read_text().splitlines()
    chosen = bool(answers.get("kubernetes", False))
    assert k8s.exists() == chosen
    assert ("### Kubernetes" in readme) == chosen
    assert ("k8s/secrets.env" in ignored) == chosen
    if not chosen:
        return
    has_db = answers["db_library"] != "none"
    has_queue = answers["background_tasks"] in {"celery", "taskiq"}
    auth = answers["auth"]
    metrics = bool(answers.get("metrics", False))
    slug = answers.get("project_slug", "my-service")
    assert {path.relative_to(k8s).as_posix() for path in k8s.rglob("*.*")} == {
        "secrets.env.example",
        "base/kustomization.yaml",
        "base/settings.env",
        "base/api.yaml",
        "overlays/dev/kustomization.yaml",
        "overlays/prod/kustomization.yaml",
        *(["base/migrate.yaml"] if has_db else []),
        *(["base/worker.yaml"] if has_queue else []),
    }

    # Every setting .env.example documents is in the ConfigMap or the Secret, but
    # for compose's passwords, which the Secret's URLs carry whole.
    example = context.setting_names((project / ".env.example").read_text())
    settings = kustomize.read_env_file(k8s / "base" / "settings.env")
    secrets = context.setting_names((k8s / "secrets.env.example").read_text())
    documented = context.setting_names((k8s / "base" / "settings.env").read_text())
    assert not set(documented) & set(secrets)
    assert {*documented, *secrets} == set(example) - context.COMPOSE_ONLY_SETTINGS
    assert settings["ENVIRONMENT"] == "production"
    required = {
        "DATABASE_URL": has_db,
        "BROKER_URL": has_queue,
        "SECRET_KEY": auth == "jwt",
        "API_KEYS": auth == "api_key" and not has_db,
        # Optional (a cache that is down is left out), but a Redis URL may hold a
        # password.
        "CACHE_URL": has_db and answers.get("cache", "none") == "redis",
        "RATE_LIMIT_URL": answers.get("rate_limit", "none") == "redis",
    }
    given = re.findall(r"^([A-Z_]+)=", (k8s / "secrets.env.example").read_text(), re.M)
    assert set(given) == {name for name, wanted in required.items() if wanted}

    dockerfile = (project / "Dockerfile").read_text()
    user = int(re.search(r"^USER ([0-9]+)", dockerfile, re.MULTILINE).group(1))
    port = int(re.search(r"^EXPOSE ([0-9]+)", dockerfile, re.MULTILINE).group(1))
    images = {"dev": f"{slug}:dev", "prod": f"registry.example.com/{slug}:0.1.0"}
    replicas = {"dev": (1, 1), "prod": (3, 8)}
    out = built_overlays(project)
    out.mkdir()
    for overlay in ("dev", "prod"):
        objects = kustomize.build(k8s / "overlays" / overlay)
        (out / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
        by_key = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
        config_map = next(obj for obj in objects if obj["kind"] == "ConfigMap")
        assert config_map["metadata"]["name"].startswith(f"{slug}-settings-")
        workloads = {
            ("Deployment", f"{slug}-api"): None,
            **(
                {("Job", f"{slug}-migrate"): ["alembic", "upgrade", "head"]}
                if has_db
                else {}
            ),
            **(
                {
                    ("Deployment", f"{slug}-worker"): compose["services"]["worker"][
                        "command"
                    ]
                }
                if has_queue
                else {}
            ),
        }
        assert set(by_key) == {
            *workloads,
            ("Service", slug),
            ("HorizontalPodAutoscaler", f"{slug}-api"),
            ("PodDisruptionBudget", f"{slug}-api"),
            ("ConfigMap", config_map["metadata"]["name"]),
        }
        assert {obj["metadata"]["namespace"] for obj in objects} == {
            slug if overlay == "prod" else f"{slug}-dev"
        }
        for key, command in workloads.items():
            pod = by_key[key]["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, key
            assert pod["securityContext"]["runAsUser"] == user, key
            assert pod["automountServiceAccountToken"] is False, key
            (container,) = pod["containers"]
            assert container.get("command") == command, key
            assert container["image"] == images[overlay], key
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, key
            assert container["envFrom"][0] == {
                "configMapRef": {"name": config_map["metadata"]["name"]}
            }
            secret = container["envFrom"][1]["secretRef"]
            assert secret["name"] == f"{slug}-secrets"
            # A Redis the service works without (the cache's, the rate limits') is
            # in the Secret but does not make it required.
            needed = [v for k, v in required.items() if k not in WORKS_WITHOUT]
            assert secret.get("optional", False) != any(needed)
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert mounts == {"/tmp", *(["/tmp/prometheus"] if metrics else [])}, key
            multiprocess = {e["name"]: e["value"] for e in container.get("env", [])}
            assert multiprocess == (
                {"PROMETHEUS_MULTIPROC_DIR": "/tmp/prometheus"} if metrics else {}
            )
            for kind in ("requests", "limits"):
                for amount in container["resources"][kind].values():
                    assert QUANTITY.fullmatch(str(amount)), (key, amount)
            annotations = by_key[key]["spec"]["template"]["metadata"].get(
                "annotations", {}
            )
            scraped = metrics and key[1] != f"{slug}-migrate"
            assert bool(annotations) == scraped, key
            if scraped:
                assert annotations["prometheus.io/port"] == (
                    str(port) if key[1] == f"{slug}-api" else "9464"
                )
        api = by_key[("Deployment", f"{slug}-api")]
        labels = api["spec"]["template"]["metadata"]["labels"]
        assert api["spec"]["selector"]["matchLabels"] == labels
        assert "replicas" not in api["spec"]  # the autoscaler's
        (container,) = api["spec"]["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        for probe, path in (
            ("startupProbe", "/health"),
            ("livenessProbe", "/health"),
            ("readinessProbe", "/ready"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        service = by_key[("Service", slug)]
        assert service["spec"]["selector"] == labels
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        budget = by_key[("PodDisruptionBudget", f"{slug}-api")]
        assert budget["spec"]["selector"]["matchLabels"] == labels
        scaler = by_key[("HorizontalPodAutoscaler", f"{slug}-api")]["spec"]
        assert scaler["scaleTargetRef"]["name"] == api["metadata"]["name"]
        assert (scaler["minReplicas"], scaler["maxReplicas"]) == replicas[overlay]
        # Production's pods, each process of each, stay within the database's 100
        # connections.
        processes = int(config_map["data"]["WEB_CONCURRENCY"])
        if has_db and overlay == "prod":
            pool = int(config_map["data"]["DATABASE_POOL_SIZE"])
            overflow = int(config_map["data"]["DATABASE_MAX_OVERFLOW"])
            assert scaler["maxReplicas"] * processes * (pool + overflow) < 100


def validate_kubernetes(projects: list[Path]) -> None:
    """The objects of every overlay check_kubernetes built, strictly against the
    Kubernetes API's schemas (unknown fields too), one call per version."""
    built = sorted(
        path
        for project in projects
        if built_overlays(project).exists()
        for path in built_overlays(project).glob("*.yaml")
    )
    unseen: dict[str, Path] = {}
    for path in built:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if ("kubernetes-validate", digest) not in _validated:
            unseen.setdefault(digest, path)
    if unseen:
        for version in KUBERNETES_VERSIONS:
            run(
                TOOLS / "kubernetes-validate",
                "--strict",
                "--quiet",
                "--kubernetes-version",
                version,
                *unseen.values(),
                cwd=projects[0].parent,
            )
        _validated.update(("kubernetes-validate", digest) for digest in unseen)


@pytest.mark.parametrize("layout", ["small", "medium", "large"])
def test_each_layout_has_its_shape(tmp_path: Path, layout: str) -> None:
    project = render(tmp_path / "service", {"project_size": layout})
    app = project / "app"
    packages = {
        path.parent.relative_to(app).as_posix() for path in app.rglob("__init__.py")
    }

    # One assembly function in every layout; tests and servers call it.
    assert "\ndef create_app() -> FastAPI:\n" in (app / "main.py").read_text()
    if layout == "small":
        assert packages == {"."}
        assert {p.name for p in app.glob("*.py")} >= {
            "main.py",
            "config.py",
            "services.py",
        }
        assert "@app.post(" in (app / "main.py").read_text()
    elif layout == "medium":
        assert {"core", "items", "auth", "users", "jobs", "health"} <= packages
        assert not {"api", "services", "repositories", "models", "routers"} & packages
        assert (app / "items" / "router.py").exists()
        assert (app / "items" / "service.py").exists()
    else:
        assert {
            "api",
            "api/v1",
            "api/v1/endpoints",
            "services",
            "repositories",
        } <= packages
        assert {"models", "schemas", "core", "db"} <= packages
        # Routers call services, services call repositories, never the other way.
        for repository in (app / "repositories").glob("*.py"):
            assert "app.services" not in repository.read_text()
            assert "app.api" not in repository.read_text()


@pytest.mark.parametrize("engine", ["sqlite", "mysql"])
def test_long_answers_still_render_lint_free(tmp_path: Path, engine: str) -> None:
    # Names and URLs built from answers land in string assignments of any length.
    project = render(
        tmp_path / "service",
        {
            "project_name": "The Quite Remarkably Long Name Of The Order Fulfilment Service",
            "project_slug": "order-fulfilment-service-for-the-northern-region",
            "description": "Takes orders, checks stock, books couriers and tells customers "
            'where their "parcel" is; written by the team in Zoë\'s office.',
            "db_engine": engine,
        },
    )

    ruff("check", "--no-cache", ".", cwd=project)
    ruff("format", "--check", "--no-cache", ".", cwd=project)
