"""`copier update` from every earlier release keeps the user's work, and options can
be switched on and off through it.

The template is snapshotted into a clean clone that keeps (or re-creates, from
releases.yml) the release tags, with this work tree committed on top and tagged
TEST_TAG: so the tests see uncommitted changes, and Copier sees a real newer version.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from copier import run_copy, run_update

from tests.conftest import BROKER_URLS, ROOT, run, sync, tool_env, uv

RELEASES: list[dict[str, str]] = yaml.safe_load((ROOT / "releases.yml").read_text())
TEST_TAG = "v999.0.0"  # above every real release, so Copier takes it as the newest
IDENTITY = ["-c", "user.name=Template Tests", "-c", "user.email=tests@example.invalid"]

ANSWER_SETS = {
    "defaults": {},
    "small-no-db": {"project_size": "small", "db_library": "none", "auth": "none"},
    "large-open": {"project_size": "large", "auth": "none", "background_tasks": "none"},
}


def git(*args: str | Path, cwd: Path) -> str:
    return run("git", *IDENTITY, *args, cwd=cwd)


@dataclass(frozen=True)
class Snapshot:
    path: Path
    tag: str


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    path = tmp_path_factory.mktemp("template") / "copier-fastapi"
    git("clone", "--quiet", "--no-local", ROOT, path, cwd=ROOT)
    for release in RELEASES:
        missing = subprocess.run(
            ["git", "cat-file", "-e", f"{release['commit']}^{{commit}}"],
            cwd=path,
            check=False,
        ).returncode
        assert not missing, (
            f"Release {release['version']} ({release['commit']}) is not in this clone's "
            "history: fetch it with `git fetch --unshallow --tags`."
        )
        git("tag", "--force", f"v{release['version']}", release["commit"], cwd=path)
    # The work tree as it is, uncommitted changes included.
    listed = run(
        "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT
    )
    for tracked in run("git", "ls-files", "-z", cwd=path).split("\0"):
        if tracked:
            (path / tracked).unlink(missing_ok=True)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    git("add", "--all", cwd=path)
    git(
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "Snapshot of the work tree",
        cwd=path,
    )
    git("tag", TEST_TAG, cwd=path)
    return Snapshot(path, TEST_TAG)


def generate(
    template: Snapshot, destination: Path, data: dict[str, str], ref: str
) -> Path:
    run_copy(
        str(template.path),
        destination,
        data=data,
        defaults=True,
        unsafe=True,
        quiet=True,
        vcs_ref=ref,
    )
    git("init", "--quiet", cwd=destination)
    commit_all(destination, "Generated")
    return destination


def commit_all(project: Path, message: str) -> None:
    git("add", "--all", cwd=project)
    git("commit", "--quiet", "--allow-empty", "-m", message, cwd=project)


def update(project: Path, template: Snapshot, **data: str) -> None:
    status = run("git", "status", "--short", cwd=project)
    assert not status, f"the project must be committed before an update:\n{status}"
    run_update(
        project,
        data=data,
        defaults=True,
        overwrite=True,
        unsafe=True,
        quiet=True,
        vcs_ref=template.tag,
    )


def project_checks_pass(project: Path) -> str:
    """Install and run the project's suite; commit the lock file, as a user would."""
    sync(project)
    output = run(
        uv(), "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider", cwd=project
    )
    commit_all(project, "Lock")
    return output


GREETING = """from fastapi import APIRouter

router = APIRouter(tags=["greeting"])


@router.get("/greeting")
async def greeting() -> dict[str, str]:
    return {"message": "Hello from the team"}
"""
GREETING_TEST = """from httpx import AsyncClient


async def test_greeting(client: AsyncClient) -> None:
    response = await client.get("/greeting")

    assert response.json() == {"message": "Hello from the team"}
"""
WIRING = """
from app.greeting import router as greeting_router  # noqa: E402

app.include_router(greeting_router)
"""
OUR_DESCRIPTION = 'description = "The orders service of the Shipping team."'
OUR_DEPENDENCY = '    "humanize>=4.0",\n'


def make_user_edits(project: Path) -> None:
    """A new route in a new file, changed lines in template files, a new dependency."""
    (project / "app" / "greeting.py").write_text(GREETING)
    (project / "tests" / "test_greeting.py").write_text(GREETING_TEST)
    with (project / "app" / "main.py").open("a") as main:
        main.write(WIRING)
    pyproject = project / "pyproject.toml"
    text = re.sub(
        r"^description = .*$", OUR_DESCRIPTION, pyproject.read_text(), flags=re.M
    )
    pyproject.write_text(
        text.replace("dependencies = [\n", "dependencies = [\n" + OUR_DEPENDENCY, 1)
    )
    commit_all(project, "Our changes")


# Conflicts a release's update is known to bring, where the template rewrote the
# region a user's edit sits next to (CHANGELOG and docs/updating.md say so): the
# release, the answers' layout, the file, and why.
KNOWN_CONFLICTS = {
    ("0.1.0", "medium", "app/main.py"): "the app is built in create_app() since 0.2.0",
}
CONFLICT = re.compile(
    r"<<<<<<< before updating\n(?P<ours>.*?)=======\n(?P<theirs>.*?)>>>>>>> after updating\n",
    re.DOTALL,
)


def resolve_known_conflicts(project: Path, release: str, layout: str) -> list[str]:
    """Resolve the known conflicts as docs/updating.md tells users to: take the
    template's side, then put the user's own lines back. The files resolved."""
    resolved = []
    for (version, in_layout, name), _ in KNOWN_CONFLICTS.items():
        path = project / name
        if version != release or in_layout != layout or not path.exists():
            continue
        text = path.read_text()
        if not CONFLICT.search(text):
            continue
        text = CONFLICT.sub(lambda match: match["theirs"], text)
        if not text.endswith(WIRING):
            text += WIRING
        path.write_text(text)
        resolved.append(name)
    return resolved


def assert_no_conflicts(project: Path) -> None:
    assert not list(project.rglob("*.rej")), "copier left .rej files"
    for path in project.rglob("*"):
        if path.is_file() and ".git" not in path.parts and ".venv" not in path.parts:
            text = path.read_text(errors="ignore")
            assert "<<<<<<< " not in text, f"conflict in {path}"
            assert ">>>>>>> " not in text, f"conflict in {path}"


def answers_of(project: Path) -> dict[str, str]:
    answers: dict[str, str] = yaml.safe_load(
        (project / ".copier-answers.yml").read_text()
    )
    return answers


# Every answer set from the newest release, which most services update from; the
# defaults from every older one.
UPDATES = [
    pytest.param(release, answers, id=f"{name}-{release['version']}")
    for release in RELEASES
    for name, answers in ANSWER_SETS.items()
    if release is RELEASES[-1] or name == "defaults"
]


@pytest.mark.variant
@pytest.mark.parametrize(("release", "answers"), UPDATES)
def test_update_from_a_release_keeps_every_user_edit(
    template: Snapshot, tmp_path: Path, release: dict[str, str], answers: dict[str, str]
) -> None:
    project = generate(
        template, tmp_path / "service", answers, f"v{release['version']}"
    )
    make_user_edits(project)
    env_before = (project / ".env").read_bytes()

    update(project, template)
    layout = answers.get("project_size", "medium")
    resolved = resolve_known_conflicts(project, release["version"], layout)

    assert_no_conflicts(project)
    assert set(resolved) <= {name for (_, _, name) in KNOWN_CONFLICTS}
    assert answers_of(project)["_commit"] == template.tag
    assert (project / "app" / "greeting.py").read_text() == GREETING
    assert (project / "tests" / "test_greeting.py").read_text() == GREETING_TEST
    assert (project / "app" / "main.py").read_text().endswith(WIRING)
    pyproject = (project / "pyproject.toml").read_text()
    assert OUR_DESCRIPTION in pyproject
    assert OUR_DEPENDENCY in pyproject
    assert (project / ".env").read_bytes() == env_before  # the secret stays
    project_checks_pass(project)  # the template's tests and ours


def test_answers_file_holds_the_answers_and_no_secret(
    template: Snapshot, tmp_path: Path
) -> None:
    project = generate(template, tmp_path / "service", {}, template.tag)

    answers = answers_of(project)
    secret = (project / ".env").read_text().split("SECRET_KEY=", 1)[1].split()[0]
    assert answers["_src_path"] == str(template.path)
    assert answers["auth"] == "jwt"
    assert secret not in (project / ".copier-answers.yml").read_text()
    assert "do not edit" in (project / ".copier-answers.yml").read_text().lower()


@pytest.mark.variant
def test_switching_background_jobs_on_then_off(
    template: Snapshot, tmp_path: Path
) -> None:
    project = generate(
        template, tmp_path / "service", {"background_tasks": "none"}, template.tag
    )
    project_checks_pass(project)
    # A database already in use: the jobs table must arrive by migration.
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)

    update(project, template, background_tasks="fastapi")
    commit_all(project, "Background jobs on")

    assert_no_conflicts(project)
    assert answers_of(project)["background_tasks"] == "fastapi"
    assert (project / "app" / "jobs" / "router.py").exists()
    assert (project / "migrations" / "versions" / "0003_jobs.py").exists()
    assert (project / "tests" / "test_jobs.py").exists()
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)
    run(uv(), "run", "--no-sync", "alembic", "check", cwd=project)
    project_checks_pass(project)

    # Switching off: first take the jobs' revisions, and only them, out of the
    # database: the scopes' stay (docs/updating.md).
    run(uv(), "run", "--no-sync", "alembic", "downgrade", "0005@0002", cwd=project)
    update(project, template, background_tasks="none")

    assert_no_conflicts(project)
    assert not (project / "app" / "jobs").exists()
    assert not (project / "tests" / "test_jobs.py").exists()
    assert not (project / "migrations" / "versions" / "0003_jobs.py").exists()
    assert "jobs" not in (project / "app" / "main.py").read_text()
    run(uv(), "run", "--no-sync", "alembic", "check", cwd=project)
    project_checks_pass(project)


@pytest.mark.variant
def test_turning_telemetry_on_from_the_last_release_then_off(
    template: Snapshot, tmp_path: Path
) -> None:
    """metrics, tracing and sentry came after the last release: a service made
    from it takes them with `copier update --data`, and gives them back."""
    release = RELEASES[-1]["version"]
    project = generate(template, tmp_path / "service", {}, f"v{release}")
    options = ("metrics", "tracing", "sentry")
    added = [
        project / "app" / "core" / "metrics.py",
        project / "app" / "core" / "tracing.py",
        project / "app" / "core" / "sentry.py",
        project / "tests" / "test_metrics.py",
        project / "tests" / "test_tracing.py",
        project / "tests" / "test_sentry.py",
    ]

    update(project, template, **dict.fromkeys(options, "true"))
    commit_all(project, "Telemetry on")

    assert_no_conflicts(project)
    assert all(answers_of(project)[option] is True for option in options)
    assert all(path.exists() for path in added)
    project_checks_pass(project)

    update(project, template, **dict.fromkeys(options, "false"))

    assert_no_conflicts(project)
    assert not any(path.exists() for path in added)
    pyproject = (project / "pyproject.toml").read_text()
    for package in ("prometheus-client", "opentelemetry", "sentry-sdk"):
        assert package not in pyproject, package
    project_checks_pass(project)


def test_kubernetes_manifests_come_and_go_with_copier_update(
    template: Snapshot, tmp_path: Path
) -> None:
    """kubernetes came after the last release: an update adds k8s/ and the line that
    keeps its Secret's values out of git, beside the user's own lines in .gitignore,
    and a second update takes them away again."""
    release = RELEASES[-1]["version"]
    data = {"db_engine": "postgresql"}
    project = generate(template, tmp_path / "service", data, f"v{release}")
    gitignore = project / ".gitignore"
    gitignore.write_text(f"{gitignore.read_text()}\n# Ours\nnotes/\n")
    commit_all(project, "Our own ignores")

    update(project, template, kubernetes="true")
    commit_all(project, "Kubernetes on")

    assert_no_conflicts(project)
    assert answers_of(project)["kubernetes"] is True
    assert (project / "k8s" / "base" / "migrate.yaml").exists()
    assert {"k8s/secrets.env", "notes/"} <= set(gitignore.read_text().splitlines())

    update(project, template, kubernetes="false")

    assert_no_conflicts(project)
    assert not (project / "k8s").exists()
    ignored = gitignore.read_text().splitlines()
    assert "notes/" in ignored
    assert "k8s/secrets.env" not in ignored


@pytest.mark.variant
def test_switching_service_accounts_on_then_off_keeps_the_database_in_step(
    template: Snapshot, tmp_path: Path
) -> None:
    project = generate(template, tmp_path / "service", {}, template.tag)
    sync(project)
    commit_all(project, "Lock")
    # A database in use, with jobs (0010 joins the accounts to their migrations).
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)

    update(project, template, client_credentials="true")
    commit_all(project, "Service accounts on")

    assert_no_conflicts(project)
    versions = project / "migrations" / "versions"
    assert (versions / "0009_service_accounts.py").exists()
    assert (versions / "0010_service_accounts_and_jobs.py").exists()
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)
    run(uv(), "run", "--no-sync", "alembic", "check", cwd=project)
    cli = [uv(), "run", "--no-sync", "python", "-m", "app.cli"]
    made = subprocess.run(
        [*cli, "create-admin", "ops@example.com"],
        cwd=project,
        input="a long passphrase\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Created admin" in made.stdout
    created = run(
        *cli, "create-service-account", "sync", "--owner=ops@example.com", cwd=project
    )
    assert "shown only once" in created
    project_checks_pass(project)

    # Switching off: first take the accounts' revisions, and only them, out of the
    # database (docs/updating.md); the jobs' and the scopes' stay.
    run(uv(), "run", "--no-sync", "alembic", "downgrade", "0009@0007", cwd=project)
    update(project, template, client_credentials="false")

    assert_no_conflicts(project)
    assert not (versions / "0009_service_accounts.py").exists()
    assert not (versions / "0010_service_accounts_and_jobs.py").exists()
    assert (
        "client_credentials" not in (project / "app" / "auth" / "router.py").read_text()
    )
    current = run(uv(), "run", "--no-sync", "alembic", "current", cwd=project)
    assert "0008" in current
    run(uv(), "run", "--no-sync", "alembic", "check", cwd=project)
    run(uv(), "run", "--no-sync", "python", "-c", "import app.main", cwd=project)


@pytest.mark.variant
def test_switching_api_keys_on_migrates_a_database_in_use(
    template: Snapshot, tmp_path: Path
) -> None:
    project = generate(template, tmp_path / "service", {"auth": "none"}, template.tag)
    project_checks_pass(project)
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)

    update(project, template, auth="api_key")
    commit_all(project, "API keys on")

    assert_no_conflicts(project)
    assert answers_of(project)["auth"] == "api_key"
    assert (project / "migrations" / "versions" / "0004_api_keys.py").exists()
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)
    run(uv(), "run", "--no-sync", "alembic", "check", cwd=project)
    issued = run(
        uv(),
        "run",
        "--no-sync",
        "python",
        "-m",
        "app.cli",
        "create-api-key",
        "ops",
        cwd=project,
    )
    assert "shown only once" in issued
    project_checks_pass(project)


@pytest.mark.variant
def test_switching_auth_on_gives_a_working_service_on_a_fresh_database(
    template: Snapshot, tmp_path: Path
) -> None:
    # Not a clean switch for a database in use (items gain an owner column that
    # existing rows cannot fill): docs/updating.md says so. The code itself switches.
    project = generate(template, tmp_path / "service", {"auth": "none"}, template.tag)

    update(project, template, auth="jwt")

    assert_no_conflicts(project)
    assert (project / "app" / "auth" / "router.py").exists()
    assert "SECRET_KEY" not in (project / ".env").read_text()  # .env is never rewritten
    project_checks_pass(project)


# Switching worker tool on one broker: both tools' entities stay on the broker (a
# drained queue is not deleted), so their names must not clash.
WORKERS = {
    "taskiq": ["-m", "taskiq", "worker", "app.worker:broker", "--workers", "1"],
    # A node name of its own: two Celery workers called celery@<host> on one
    # RabbitMQ (another test's, at the same time) fight over its control queue.
    "celery": [
        *("-m", "celery", "-A", "app.worker", "worker", "--pool=solo"),
        *("--hostname", f"update-{uuid.uuid4().hex[:8]}@%h"),
    ],
}
JOB_WAIT_SECONDS = 30
# Deletes what either tool, of this release or an earlier one, made for JOB_QUEUE;
# runs in the service's venv, which holds kombu (Celery) or aio_pika (Taskiq).
REMOVE_QUEUES = """
import sys
url, queue = sys.argv[1:]
if url.startswith("redis"):
    from redis import Redis
    client = Redis.from_url(url)
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)
    client.close()
    raise SystemExit
queues = [queue, f"{queue}.dead_letter", f"{queue}.taskiq", f"{queue}.taskiq.dead_letter"]
exchanges = [queue, f"{queue}.taskiq"]
try:
    from kombu import Connection
except ImportError:
    import asyncio
    import aio_pika

    async def remove():
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)

    asyncio.run(remove())
else:
    with Connection(url) as connection:
        channel = connection.channel()
        for name in queues:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def call(method: str, url: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def require_broker(url: str) -> None:
    address = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((address.hostname, address.port), timeout=5).close()
    except OSError as error:
        pytest.fail(
            f"The broker at {address.hostname}:{address.port} does not answer "
            f"({error}); start it, or run .ci/run, which starts the servers the "
            "tests use."
        )


@contextmanager
def started(
    project: Path, arguments: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process of the service, in its venv; stopped whatever happens."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [project / ".venv" / "bin" / "python", *arguments],
            cwd=project,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serving(
    project: Path, log: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """The service under uvicorn, once it answers; its base URL."""
    port = free_port()
    api = ["-m", "uvicorn", "app.main:app", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with started(project, api, env or tool_env(), log) as server:
        deadline = time.monotonic() + JOB_WAIT_SECONDS
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the API did not start"
            try:
                if call("GET", base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield base


def run_a_job(project: Path, tool: str, env: dict[str, str], logs: Path) -> None:
    """Start the API and a worker of ``tool``, submit a job, see it succeed."""
    worker_log, api_log = logs / f"{tool}-worker.log", logs / f"{tool}-api.log"
    with ExitStack() as stack:
        stack.enter_context(started(project, WORKERS[tool], env, worker_log))
        base = stack.enter_context(serving(project, api_log, env))
        deadline = time.monotonic() + JOB_WAIT_SECONDS
        status, job = call(
            "POST", base + "/api/v1/jobs", {"text": "four words to count"}
        )
        assert status == 202, (
            f"{tool}: POST /api/v1/jobs answered {status} {job}\n"
            f"{api_log.read_text()[-2000:]}\n{worker_log.read_text()[-2000:]}"
        )
        while job["status"] not in {"succeeded", "failed"}:
            assert time.monotonic() < deadline, (
                f"{tool}: the job is still {job['status']}\n"
                f"{worker_log.read_text()[-3000:]}"
            )
            time.sleep(0.2)
            job = call("GET", f"{base}/api/v1/jobs/{job['id']}")[1]
    assert job["status"] == "succeeded", job
    assert job["result"] == {"word_count": 4}


@pytest.mark.variant
@pytest.mark.parametrize("broker", ["rabbitmq", "redis"])
def test_switching_worker_tool_on_one_broker_keeps_jobs_running(
    template: Snapshot, tmp_path: Path, broker: str
) -> None:
    # docs/updating.md: drain the old workers, switch, start the new ones. What the
    # old tool left on the broker (its queue, exchange or stream) must not break them.
    require_broker(BROKER_URLS[broker])
    project = generate(
        template,
        tmp_path / "service",
        {
            "auth": "none",
            "db_engine": "sqlite",
            "background_tasks": "taskiq",
            "broker": broker,
        },
        template.tag,
    )
    queue = f"switch-{uuid.uuid4().hex[:12]}"
    env = tool_env() | {
        "BROKER_URL": BROKER_URLS[broker],
        "JOB_QUEUE": queue,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/jobs.sqlite3",
        "ENVIRONMENT": "development",
    }
    try:
        sync(project)
        commit_all(project, "Lock")
        run(
            uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project, env=env
        )
        run_a_job(project, "taskiq", env, tmp_path)

        update(project, template, background_tasks="celery")
        sync(project)
        commit_all(project, "Celery")
        run_a_job(project, "celery", env, tmp_path)

        update(project, template, background_tasks="taskiq")
        sync(project)
        run_a_job(project, "taskiq", env, tmp_path)
    finally:
        python = project / ".venv" / "bin" / "python"
        if python.exists():
            run(python, "-c", REMOVE_QUEUES, BROKER_URLS[broker], queue, cwd=tmp_path)


def post_form(url: str, form: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def send(method: str, url: str, headers: dict[str, str], body: object = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


ADMIN_PASSWORD = "a long passphrase for the admin"
EVERY_SCOPE = "items:read items:write jobs:read jobs:write"


@pytest.mark.variant
@pytest.mark.parametrize("auth", ["jwt", "api_key"])
def test_credentials_from_before_scopes_keep_every_scope_after_an_update(
    template: Snapshot, tmp_path: Path, auth: str
) -> None:
    """A service of the last release without scopes, with a user signed in (JWT) or
    a key issued (API keys), updated: the sign-in and the key can do all they could."""
    before = f"v{RELEASES[-1]['version']}"
    project = generate(template, tmp_path / "service", {"auth": auth}, before)
    sync(project)
    commit_all(project, "Lock")
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)
    cli = [uv(), "run", "--no-sync", "python", "-m", "app.cli"]
    if auth == "api_key":
        issued = run(*cli, "create-api-key", "ops", cwd=project)
        headers = {"X-API-Key": issued.strip().splitlines()[-1]}
    else:
        subprocess.run(
            [*cli, "create-admin", "admin@example.com"],
            input=ADMIN_PASSWORD + "\n",
            cwd=project,
            env=tool_env(),
            check=True,
            capture_output=True,
            text=True,
        )
        with serving(project, tmp_path / "before.log") as base:
            status, tokens = post_form(
                base + "/api/v1/auth/token",
                {"username": "admin@example.com", "password": ADMIN_PASSWORD},
            )
        assert status == 200, tokens
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    update(project, template, auth=auth)
    commit_all(project, "Scopes")
    assert_no_conflicts(project)
    assert (project / "migrations" / "versions" / "0007_scopes.py").exists()
    sync(project)
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)

    with serving(project, tmp_path / "after.log") as base:
        read = send("GET", base + "/api/v1/items", headers)
        written = send("POST", base + "/api/v1/items", headers, {"name": "kept"})
        job = send("GET", f"{base}/api/v1/jobs/{uuid.uuid4()}", headers)
        if auth == "jwt":
            status, refreshed = call(
                "POST",
                base + "/api/v1/auth/refresh",
                {"refresh_token": tokens["refresh_token"]},
            )
            assert status == 200, refreshed
            assert refreshed["scope"] == EVERY_SCOPE + " users:admin"
            bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
            assert send("GET", base + "/api/v1/users", bearer) == 200
            assert send("GET", base + "/api/v1/users", headers) == 200
    assert (read, written, job) == (200, 201, 404)
    if auth == "api_key":
        listed = run(*cli, "list-api-keys", cwd=project)
        assert listed.rstrip().endswith("ops  active  every scope")


def test_check_update_reports_the_newer_version(
    template: Snapshot, tmp_path: Path
) -> None:
    oldest = RELEASES[0]["version"]
    project = generate(template, tmp_path / "service", {}, f"v{oldest}")

    completed = subprocess.run(
        [
            Path(sys.executable).parent / "copier",
            "check-update",
            "--output-format",
            "json",
        ],
        cwd=project,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=True,
    )

    report = json.loads(completed.stdout)
    assert report["update_available"] is True
    assert report["current_version"] == oldest
    assert report["latest_version"] == TEST_TAG.removeprefix("v")


def test_every_release_is_in_the_changelog() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    for release in RELEASES:
        assert f"## [{release['version']}]" in changelog


# One entry per `_migrations` step in copier.yml: the old version to render from, and
# a check of the answers file and files after updating. None are needed yet.
MIGRATION_SCENARIOS: dict[str, object] = {}


def test_every_answer_migration_has_a_test() -> None:
    copier_yml = yaml.safe_load((ROOT / "copier.yml").read_text())
    migrations = copier_yml.get("_migrations", [])
    # Each entry renames or removes an answer or moves a file; MIGRATION_SCENARIOS
    # below must render the old version, update, and check the result for each.
    assert len(migrations) == len(MIGRATION_SCENARIOS)


# GitHub's CLI, as the template-update workflow calls it: the calls are recorded,
# `pr list` lists the pull request once one was created, the rest succeed.
GH_STUB = """#!/bin/sh
echo "$*" >> "$GH_LOG"
if [ "$1 $2" = "pr list" ] && grep -q "^pr create" "$GH_LOG"; then
  echo 1
fi
"""


def run_workflow_job(workflow: Path, project: Path, env: dict[str, str]) -> None:
    """The steps of the workflow's one job that run commands, as a runner runs them
    (bash with -e and pipefail), with the one expression they use filled in."""
    (job,) = yaml.safe_load(workflow.read_text())["jobs"].values()
    token = "${{ secrets.TEMPLATE_UPDATE_TOKEN || github.token }}"
    for step in job["steps"]:
        if "run" not in step:
            continue
        assert "if" not in step, step
        step_env = {**job["env"], **step.get("env", {})}
        step_env = {
            name: "a-token" if value == token else value
            for name, value in step_env.items()
        }
        assert not any("${{" in value for value in step_env.values()), step_env
        run(
            "bash",
            "-e",
            "-o",
            "pipefail",
            "-c",
            step["run"],
            cwd=project,
            env={**env, **step_env},
        )


def test_template_update_workflow_opens_one_pull_request_per_release(
    template: Snapshot, tmp_path: Path
) -> None:
    # A template whose next release comes after the project was generated.
    source = tmp_path / "template"
    git("clone", "--quiet", template.path, source, cwd=tmp_path)
    project = generate(
        Snapshot(source, template.tag), tmp_path / "service", {}, template.tag
    )
    origin = tmp_path / "origin.git"
    git("init", "--quiet", "--bare", origin, cwd=tmp_path)
    git("remote", "add", "origin", origin, cwd=project)
    git("push", "--quiet", "origin", "HEAD", cwd=project)
    readme = source / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nA line of the next release.\n")
    git("commit", "--quiet", "--all", "-m", "The next release", cwd=source)
    git("tag", "v999.0.1", cwd=source)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "gh").write_text(GH_STUB)
    (stubs / "gh").chmod(0o755)
    runner = tmp_path / "runner"
    runner.mkdir()
    env = tool_env() | {
        "PATH": f"{stubs}:{Path(sys.executable).parent}:{tool_env()['PATH']}",
        "GH_LOG": str(tmp_path / "gh.log"),
        "RUNNER_TEMP": str(runner),
    }
    workflow = project / ".github" / "workflows" / "template-update.yml"

    default_branch = git("branch", "--show-current", cwd=project).strip()
    for _ in range(2):  # the second run finds the pull request of the first
        # Each scheduled run starts from a fresh checkout of the default branch.
        git("switch", "--quiet", default_branch, cwd=project)
        run_workflow_job(workflow, project, env)

    calls = (tmp_path / "gh.log").read_text().splitlines()
    branch = "template-update/999.0.1"
    # A project on the newest release: the run asks GitHub nothing.
    git("switch", "--quiet", branch, cwd=project)
    run_workflow_job(workflow, project, env)
    assert (tmp_path / "gh.log").read_text().splitlines() == calls
    answers = git("show", f"{branch}:.copier-answers.yml", cwd=origin)
    assert "_commit: v999.0.1" in answers
    assert "A line of the next release." in git(
        "show", f"{branch}:README.md", cwd=origin
    )
    assert [call for call in calls if call.startswith("pr create")] == [
        f"pr create --head {branch} --title Update to template 999.0.1 "
        f"--body-file {runner}/body.md"
    ]
    assert "template 999.0.1" in (runner / "body.md").read_text()
