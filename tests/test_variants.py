"""A covering set of answer sets (every pair of answers at least once, the defaults
first), each installed with uv and run through its own checks: its test suite with the
coverage gate, its migrations and mypy --strict."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import kustomize
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


def contract_auth(answers: dict[str, str]) -> str:
    """The credentials the generated contract test's fixture makes."""
    return answers["auth"]


def contract_engine(answers: dict[str, str]) -> str:
    """The database the generated contract test's fixture makes them in."""
    return answers["db_engine"] if answers["db_library"] != "none" else "none"


def parallel_setup(answers: dict[str, str]) -> tuple[str, str] | None:
    """What the generated suite run by pytest-xdist could break, where it can: the
    scratch databases and queues each xdist worker makes, on a database server and
    on a broker (None without either)."""
    engine = answers["db_engine"] if answers["db_library"] != "none" else "none"
    queue = answers["background_tasks"] in {"celery", "taskiq"}
    broker = answers["broker"] if queue else "none"
    if engine not in {"postgresql", "mysql"} and not queue:
        return None
    return engine, broker


def first_of_each(setup: Callable[[dict[str, str]], Hashable | None]) -> set[str]:
    """The first variant of each value of ``setup`` (but None), by id."""
    first: dict[Hashable, str] = {}
    for answers in covering_set():
        key = setup(answers)
        if key is not None:
            first.setdefault(key, variant_id(answers))
    return set(first.values())


# The in-process contract test runs in the first variant of each kind of auth and of
# each database (each run costs half a minute); the served fuzzing below runs in
# every variant, deeper (on the real servers, with sequences of calls).
CONTRACT_VARIANTS = first_of_each(contract_auth) | first_of_each(contract_engine)


# The fuzzer also runs with a credential that may only read, in the first variant of
# each kind of credential: every write is then refused, as the schema says (403).
# A service account's (client credentials) runs on each database server.
def narrow_auth(answers: dict[str, str]) -> str | None:
    """The kind of credential, where there is one."""
    engine = contract_engine(answers)
    if answers.get("client_credentials") and engine in {"postgresql", "mysql"}:
        return f"service_account_{engine}"
    if answers["auth"] != "api_key":
        return None if answers["auth"] == "none" else answers["auth"]
    return "api_key" if answers["db_library"] == "none" else "api_key_db"


NARROW_VARIANTS = first_of_each(narrow_auth)
# The suite runs under pytest-xdist in the first variant of each server and broker
# pair (each xdist worker costs every variant seconds to start).
PARALLEL_VARIANTS = first_of_each(parallel_setup)


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
    parallel = ["-n", "2"] if variant_id(answers) in PARALLEL_VARIANTS else []
    tests = uv_run("pytest", "-q", "-p", "no:cacheprovider", *parallel)
    summary = tests.strip().splitlines()[-1]
    assert " passed" in summary
    # Nothing skipped: a variant with workers ran them on the real broker.
    assert not re.search(r"\d+ (skipped|xfailed|deselected)", summary), summary
    assert "Required test coverage of 95.0% reached" in tests
    # Its own contract test: the API fuzzed in-process against its schema, briefly
    # (the served fuzzing below goes deeper, on the real database and broker).
    if variant_id(answers) in CONTRACT_VARIANTS:
        contract = run(
            uv(),
            *("run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-m", "contract", "--no-cov"),
            cwd=project,
            env=env | {"CONTRACT_MAX_EXAMPLES": "5"},
        )
        summary = contract.strip().splitlines()[-1]
        assert " passed" in summary
        assert not re.search(r"\d+ (failed|skipped|error)", summary), summary
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

    # Served for real, on its real database and broker, and fuzzed from its schema.
    with migration_database(engine, env):
        fuzz_served(project, answers, env)


# What the fuzzer checks: no 5xx, every answer in its documented shape and status,
# and no 2xx to a request the schema forbids. Bounded: 15 examples an operation
# (sign-ups and sign-ins hash at Argon2's production cost).
FUZZ = [
    "--phases=coverage,fuzzing,stateful",
    "--max-examples=15",
    "--seed=1",
    "--workers=1",
    "--generation-database=none",
    # The credentials are the test's (headers below): the key or token is not fuzzed.
    "--generation-with-security-parameters=false",
    "--no-color",
    "--checks=not_a_server_error,response_schema_conformance,"
    "negative_data_rejection,status_code_conformance",
]
PASSWORD = "a long fuzzing passphrase"


def pod_environment(project: Path) -> dict[str, str]:
    """What the API's container in the production Kubernetes overlay gets, but the
    Secret: the ConfigMap's settings and the container's own variables (its
    scratch directories made here)."""
    objects = kustomize.build(project / "k8s" / "overlays" / "prod")
    (settings,) = [obj["data"] for obj in objects if obj["kind"] == "ConfigMap"]
    (api,) = [
        obj
        for obj in objects
        if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("-api")
    ]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    variables = {item["name"]: item["value"] for item in container.get("env", [])}
    for name, value in variables.items():
        if value.startswith("/tmp/"):
            variables[name] = str(project / "pod" / value.removeprefix("/tmp/"))
            Path(variables[name]).mkdir(parents=True)
    return settings | variables


def fuzz_served(project: Path, answers: dict[str, str], env: dict[str, str]) -> None:
    """Serve the variant with uvicorn, signed in as its auth requires (an admin where
    admin routes exist), and run schemathesis against its OpenAPI schema. With
    Kubernetes manifests, it is served with the settings they give its pods."""
    if answers.get("kubernetes"):
        env = env | pod_environment(project)
    env = env | {"ENVIRONMENT": "production", "LOG_LEVEL": "WARNING"}
    env["SECRET_KEY"] = secrets.token_urlsafe(32)
    if answers["db_library"] != "none":
        if "DATABASE_URL" not in env or env["DATABASE_URL"].startswith("sqlite"):
            env["DATABASE_URL"] = f"sqlite+aiosqlite:///{project}/fuzz.sqlite3"
        run(
            uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project, env=env
        )
    queue = f"fuzz-{secrets.token_hex(4)}"
    if "BROKER_URL" in env:
        env["JOB_QUEUE"] = queue
    headers = credentials(project, answers, env)
    narrow = variant_id(answers) in NARROW_VARIANTS
    narrow_headers = read_only_credentials(project, answers, env) if narrow else {}
    account = (
        issue_service_account(project, env, read_scopes(answers))
        if narrow and answers.get("client_credentials")
        else None
    )
    port = free_port()
    server = subprocess.Popen(
        [uv(), "run", "--no-sync", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, server)
        headers |= sign_in(base, answers)
        runs = [schemathesis(project, base, headers)]
        if account is not None:
            narrow_headers |= sign_in_account(base, account, read_scopes(answers))
        elif narrow:
            narrow_headers |= sign_in(base, answers, read_scopes(answers))
        if narrow:
            runs.append(schemathesis(project, base, narrow_headers))
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
        if "BROKER_URL" in env:
            forget_queue(project, env, queue)
    for completed in runs:
        report = completed.stdout + completed.stderr
        assert completed.returncode == 0, f"{report[-8000:]}\nserver:\n{errors[-4000:]}"
        assert " passed" in report


def schemathesis(
    project: Path, base: str, headers: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """schemathesis against the served schema, sending ``headers``."""
    # A job's event stream ends when the job does, and no worker runs here: the
    # first event is enough to check, where the default reads it for 10 seconds.
    config = project / "schemathesis.toml"
    config.write_text("max-stream-events = 1\n")
    command = [str(Path(sys.executable).parent / "schemathesis")]
    command += ["--config-file", str(config), "run", f"{base}/openapi.json", *FUZZ]
    command += [f"--header={name}: {value}" for name, value in headers.items()]
    return subprocess.run(
        command,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def read_scopes(answers: dict[str, str]) -> list[str]:
    """What a read-only credential carries: every read scope the variant has."""
    return [
        *(["items:read"] if answers["db_library"] != "none" else []),
        *(["jobs:read"] if answers["background_tasks"] != "none" else []),
    ]


def read_only_credentials(
    project: Path, answers: dict[str, str], env: dict[str, str]
) -> dict[str, str]:
    """A credential that may only read (a JWT user signs in with read_scopes() once
    the service is up, in sign_in)."""
    if answers["auth"] == "api_key" and answers["db_library"] != "none":
        cli = [uv(), "run", "--no-sync", "python", "-m", "app.cli", "create-api-key"]
        scopes = [f"--scope={scope}" for scope in read_scopes(answers)]
        created = run(*cli, "reader", *scopes, cwd=project, env=env)
        return {"X-API-Key": created.strip().splitlines()[-1]}
    if answers["auth"] == "api_key":
        key = secrets.token_urlsafe(32)
        env["API_KEYS"] = json.dumps([*json.loads(env["API_KEYS"]), f"{key} jobs:read"])
        return {"X-API-Key": key}
    return {}


def credentials(
    project: Path, answers: dict[str, str], env: dict[str, str]
) -> dict[str, str]:
    """What the fuzzer sends to get past the variant's auth (set up before serving)."""
    cli = [uv(), "run", "--no-sync", "python", "-m", "app.cli"]
    if answers["auth"] == "jwt":
        completed = subprocess.run(
            [*cli, "create-admin", "fuzz@example.com"],
            cwd=project,
            env=env,
            input=f"{PASSWORD}\n",
            capture_output=True,
            text=True,
            check=True,
        )
        assert "Created admin" in completed.stdout
        return {}
    if answers["auth"] == "api_key" and answers["db_library"] != "none":
        created = run(*cli, "create-api-key", "fuzzer", cwd=project, env=env)
        return {"X-API-Key": created.strip().splitlines()[-1]}
    if answers["auth"] == "api_key":
        key = secrets.token_urlsafe(32)
        env["API_KEYS"] = json.dumps([key])
        return {"X-API-Key": key}
    return {}


def sign_in(
    base: str, answers: dict[str, str], scopes: list[str] | None = None
) -> dict[str, str]:
    """A JWT admin's headers: every scope, or ``scopes``."""
    if answers["auth"] != "jwt":
        return {}
    fields = {"username": "fuzz@example.com", "password": PASSWORD}
    if scopes is not None:
        fields["scope"] = " ".join(scopes)
    form = urllib.parse.urlencode(fields)
    request = urllib.request.Request(f"{base}/api/v1/auth/token", data=form.encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
        token = json.load(answer)["access_token"]
    return {"Authorization": f"Bearer {token}"}


def issue_service_account(
    project: Path, env: dict[str, str], scopes: list[str]
) -> tuple[str, str]:
    """A service account of the fuzzer's admin with ``scopes``: its id and secret."""
    cli = [uv(), "run", "--no-sync", "python", "-m", "app.cli"]
    command = [*cli, "create-service-account", "fuzzer", "--owner=fuzz@example.com"]
    created = run(*command, *(f"--scope={s}" for s in scopes), cwd=project, env=env)
    client_id = re.findall(r"Client id: (\S+)", created)[0]
    return client_id, created.strip().splitlines()[-1]


def sign_in_account(
    base: str, account: tuple[str, str], scopes: list[str]
) -> dict[str, str]:
    """A service account's headers, from the client credentials grant over HTTP:
    an access token alone, with the account's scopes."""
    basic = base64.b64encode(":".join(account).encode()).decode()
    request = urllib.request.Request(
        f"{base}/api/v1/auth/token",
        data=b"grant_type=client_credentials",
        headers={"Authorization": f"Basic {basic}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        token = json.load(answer)
    assert "refresh_token" not in token
    assert token["scope"].split() == sorted(scopes)
    return {"Authorization": f"Bearer {token['access_token']}"}


def wait_until_serving(base: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server stopped: {server.stderr}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not answer /health within 60 s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def forget_queue(project: Path, env: dict[str, str], queue: str) -> None:
    """Delete what the fuzz run left on the broker, with the project's own helper."""
    remove = f"from tests.test_worker import remove_queue; remove_queue({queue!r})"
    run(
        uv(),
        "run",
        "--no-sync",
        "python",
        "-c",
        remove,
        cwd=project,
        env=env | {"INTEGRATION_BROKER_URL": env["BROKER_URL"]},
    )


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
