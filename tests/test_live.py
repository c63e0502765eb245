"""Rendered services, started with uvicorn on a loopback port, driven over real HTTP."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BROKER_URLS, run, sync, tool_env, uv

STARTUP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Http:
    """A tiny HTTP client: status, JSON body and headers of every call."""

    def __init__(
        self, base: str, server: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.base = base
        # The process that serves it, where this module started one.
        self.server = server

    def __call__(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data, all_headers = None, dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(
            self.base + path, data=data, headers=all_headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@contextmanager
def serving(
    project: Path,
    *options: str,
    env: dict[str, str] | None = None,
    target: str = "app.main:app",
) -> Iterator[Http]:
    """Install, migrate and serve the project's ``target`` (with uvicorn's
    ``options`` and ``env`` added to its environment); stop the server whatever
    happens."""
    sync(project)
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project)
    port = free_port()
    log_path = project / "server.log"
    log = log_path.open("w")
    command = [uv(), "run", "--no-sync", "uvicorn", target, "--port", str(port)]
    server = subprocess.Popen(
        [*command, *options],
        cwd=project,
        env=tool_env() | (env or {}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = Http(f"http://127.0.0.1:{port}", server)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if http("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the service did not start in time"
            time.sleep(0.2)
        yield http
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.variant
def test_stop_signal_ends_job_streams_and_the_server_stops(copie: Any) -> None:
    # No worker runs: the job stays queued, and its follower's stream would stay
    # open (the server waits for open responses before it stops).
    answers = {"auth": "none", "background_tasks": "celery", "broker": "redis"}
    result = copie.copy(extra_answers=answers)
    assert result.exit_code == 0, result.exception
    project = result.project_dir
    queue = f"live-{secrets.token_hex(4)}"
    env = {
        "BROKER_URL": BROKER_URLS["redis"],
        "JOB_QUEUE": queue,
        "JOB_EVENTS_REFRESH_SECONDS": "1",
    }

    try:
        with serving(project, env=env) as http:
            server = http.server
            assert server is not None
            created, job = http("POST", "/api/v1/jobs", json_body={"text": "a b"})
            events = f"{http.base}/api/v1/jobs/{job['id']}/events"
            with urllib.request.urlopen(events, timeout=30) as stream:
                first = stream.readline()
                server.send_signal(signal.SIGTERM)
                told = time.monotonic()
                rest, ended = read_until_end(stream, told + 15)
            assert ended, "the stream was still open 15 s after SIGTERM"
            server.wait(timeout=30)
            stopped = time.monotonic() - told
            logged = (project / "server.log").read_text()
    finally:
        remove = f"from tests.test_worker import remove_queue; remove_queue({queue!r})"
        run(
            uv(),
            *("run", "--no-sync", "python", "-c", remove),
            cwd=project,
            env=tool_env() | env | {"INTEGRATION_BROKER_URL": env["BROKER_URL"]},
        )

    assert created == 202
    assert first.startswith(b"data: ")
    assert b'"queued"' in first
    assert b"data: " not in rest  # only keepalives, then the end
    # A graceful stop: the lifespan ended (uvicorn then exits by the signal it got).
    assert "Application shutdown complete" in logged, logged
    # Within a refresh (1 s) and uvicorn's own steps, not when the job ends.
    assert stopped < 10


def read_until_end(stream: Any, deadline: float) -> tuple[bytes, bool]:
    """What a response sends until it ends, or until ``deadline``; whether it ended
    (a stream's keepalives never let a read time out)."""
    received = b""
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            return received, True
        received += line
    return received, False


def cli(project: Path, *args: str) -> str:
    return run(uv(), "run", "--no-sync", "python", "-m", "app.cli", *args, cwd=project)


@pytest.mark.variant
def test_jwt_service_over_http(copie: Any) -> None:
    result = copie.copy(extra_answers={"auth": "jwt"})
    assert result.exit_code == 0, result.exception

    with serving(result.project_dir) as http:
        account = {"email": "ada@example.com", "password": "correct horse battery"}
        registered = http("POST", "/api/v1/auth/register", json_body=account)
        login = {"username": account["email"], "password": account["password"]}
        status, tokens = http("POST", "/api/v1/auth/token", form=login)
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        me = http("GET", "/api/v1/users/me", headers=bearer)
        item = http("POST", "/api/v1/items", json_body={"name": "Lamp"}, headers=bearer)
        spent = {"refresh_token": tokens["refresh_token"]}
        rotated = http("POST", "/api/v1/auth/refresh", json_body=spent)
        reused = http("POST", "/api/v1/auth/refresh", json_body=spent)
        newest = {"refresh_token": rotated[1]["refresh_token"]}
        after_reuse = http("POST", "/api/v1/auth/refresh", json_body=newest)
        anonymous = http("GET", "/api/v1/users/me")
        narrow = http(
            "POST", "/api/v1/auth/token", form=login | {"scope": "items:read"}
        )
        reader = {"Authorization": f"Bearer {narrow[1]['access_token']}"}
        read = http("GET", "/api/v1/items", headers=reader)
        written = http(
            "POST", "/api/v1/items", json_body={"name": "Vase"}, headers=reader
        )

    assert registered[0] == 201
    assert status == 200
    assert me == (200, me[1])
    assert me[1]["email"] == "ada@example.com"
    assert item[0] == 201
    assert rotated[0] == 200
    assert reused[0] == 401
    assert after_reuse[0] == 401  # the reuse revoked the whole family
    assert anonymous[0] == 401
    assert narrow[1]["scope"] == "items:read"
    assert read[0] == 200
    assert written[0] == 403
    assert "items:write" in written[1]["error"]["message"]


@pytest.mark.variant
def test_api_key_service_over_http(copie: Any) -> None:
    result = copie.copy(extra_answers={"auth": "api_key"})
    assert result.exit_code == 0, result.exception
    project: Path = result.project_dir

    with serving(project) as http:
        key = cli(project, "create-api-key", "live test").strip().splitlines()[-1]
        headers = {"X-API-Key": key}
        created = http(
            "POST", "/api/v1/items", json_body={"name": "Desk"}, headers=headers
        )
        listed = http("GET", "/api/v1/items", headers=headers)
        without = http("GET", "/api/v1/items")
        cli(project, "revoke-api-key", key.split(".")[0])
        revoked = http("GET", "/api/v1/items", headers=headers)
        probe = http("GET", "/health")
        issued = cli(project, "create-api-key", "reader", "--scope", "items:read")
        reader = {"X-API-Key": issued.strip().splitlines()[-1]}
        read = http("GET", "/api/v1/items", headers=reader)
        written = http(
            "POST", "/api/v1/items", json_body={"name": "Vase"}, headers=reader
        )

    assert created[0] == 201
    assert listed[0] == 200
    assert listed[1]["total"] == 1
    assert without[0] == 401
    assert without[1]["error"]["code"] == "unauthorized"
    assert revoked[0] == 401
    assert probe[0] == 200
    assert read[0] == 200
    assert written[0] == 403
    assert written[1]["error"]["code"] == "forbidden"


def browse(url: str) -> str:
    """The page's DOM once its scripts have run, in headless Chromium (Debian's
    package here; a GitHub runner's own Chromium or Chrome), which can reach the
    loopback address and nothing else."""
    names = ("chromium", "chromium-browser", "google-chrome")
    chromium = next(filter(None, map(shutil.which, names)), None)
    assert chromium, "Chromium is not installed: apt-get install chromium"
    return run(
        chromium,
        *("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"),
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        # And a request to an address, not a name, goes to a proxy that is not
        # there (the loopback address bypasses proxies).
        "--proxy-server=http://127.0.0.1:9",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
        cwd=Path.cwd(),
    )


@pytest.mark.variant
def test_offline_docs_render_in_a_browser_that_reaches_only_the_service(
    copie: Any,
) -> None:
    result = copie.copy(extra_answers={"offline_docs": True})
    assert result.exit_code == 0, result.exception

    with serving(result.project_dir) as http:
        swagger = browse(f"{http.base}/docs")
        redoc = browse(f"{http.base}/redoc")

    # Rendered from the schema by each page's scripts: neither page's HTML holds
    # an operation before they run.
    item = "/api/v1/items/{item_id}"
    assert 'class="opblock-summary-path"' in swagger
    assert item in swagger
    assert item in redoc
