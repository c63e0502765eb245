"""A served variant, on its real database, keeps its promises under trouble: a client
generated from its schema parses its real errors, a database outage is a 503 and the
service recovers by itself, and concurrent requests cannot both win a race."""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    SERVER_URLS,
    render,
    run,
    server_sql,
    server_url,
    sync,
    tool_env,
    uv,
)

TOOLS = Path(sys.executable).parent
PASSWORD = "a long reliable passphrase"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    method: str,
    url: str,
    *,
    json_body: object = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTP request; errors are answers too."""
    data, sent = None, dict(headers or {})
    if json_body is not None:
        data, sent["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            status, answered = response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, answered = error.read(), error.code, dict(error.headers)
    lowered = {name.lower(): value for name, value in answered.items()}
    return Answer(status, lowered, json.loads(raw) if raw else None)


class Proxy:
    """A TCP proxy on a loopback port to a server, which can be cut and restored:
    an outage of the server, as the service sees it, without stopping the server
    (other tests use it)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._open = False

    @contextmanager
    def running(self) -> Iterator[None]:
        """Stopped at the end, whatever happened."""
        try:
            yield
        finally:
            self.cut()

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
        self._listener = listener
        self._open = True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                if not self._open:  # cut while this connection was being made
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pipe, args=(source, target), daemon=True
                ).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with suppress(OSError):
            target.shutdown(socket.SHUT_RDWR)
        # Closed by whichever direction ends: the other then stops too.
        source.close()
        target.close()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        assert self._listener is not None
        with self._lock:
            self._open = False
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for open_socket in self._sockets:
                with suppress(OSError):
                    open_socket.shutdown(socket.SHUT_RDWR)
                open_socket.close()
            self._sockets.clear()


@dataclass
class Service:
    project: Path
    env: dict[str, str]
    engine: str


@contextmanager
def installed(project: Path, engine: str) -> Iterator[Service]:
    """A render installed, with a migrated database of its own on ``engine``."""
    sync(project)
    name = f"reliability_{secrets.token_hex(4)}"
    server_sql(engine, f"CREATE DATABASE {name}")
    env = tool_env() | {
        "DATABASE_URL": server_url(engine, name),
        "ENVIRONMENT": "production",
        "SECRET_KEY": secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
    }
    try:
        run(
            uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project, env=env
        )
        yield Service(project, env, engine)
    finally:
        server_sql(engine, f"DROP DATABASE {name}")


@pytest.fixture(scope="module", params=sorted(SERVER_URLS))
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The default answers on a database server, installed, with a migrated database
    of their own."""
    engine: str = request.param
    project = render(
        tmp_path_factory.mktemp(engine) / "service",
        {"db_engine": engine, "background_tasks": "none"},
    )
    with installed(project, engine) as service:
        yield service


def image_command(project: Path, port: int) -> list[str]:
    """The command the render's image runs (its Dockerfile's CMD), on ``port`` of
    the loopback."""
    dockerfile = (project / "Dockerfile").read_text()
    found = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert found, "the Dockerfile has no CMD in exec form"
    command: list[str] = json.loads(found[1])
    host, listen = command.index("--host") + 1, command.index("--port") + 1
    command[host], command[listen] = "127.0.0.1", str(port)
    return command


@contextmanager
def serving(
    project: Path, env: dict[str, str], *, image: bool = False
) -> Iterator[tuple[str, list[str], subprocess.Popen[str]]]:
    """uvicorn on a free loopback port, or the image's own command (``image``); the
    base URL, what it logged once it stopped, and the process."""
    port = free_port()
    served = ["uvicorn", "app.main:app", "--port", str(port), "--no-access-log"]
    if image:
        served = image_command(project, port)
    server = subprocess.Popen(
        [uv(), "run", "--no-sync", *served],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    logged: list[str] = []
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "the service stopped before it served"
            with suppress(OSError):
                if call("GET", f"{base}/health").status == 200:
                    break
            assert time.monotonic() < deadline, "the service did not serve in 60 s"
            time.sleep(0.1)
        yield base, logged, server
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
        logged.append(errors)


def register_and_sign_in(base: str, email: str) -> dict[str, Any]:
    registered = call(
        "POST",
        f"{base}/api/v1/auth/register",
        json_body={"email": email, "password": PASSWORD},
    )
    assert registered.status == 201, registered.body
    signed_in = call(
        "POST",
        f"{base}/api/v1/auth/token",
        form={"username": email, "password": PASSWORD},
    )
    assert signed_in.status == 200, signed_in.body
    tokens: dict[str, Any] = signed_in.body
    return tokens


def test_database_outage_returns_503_then_the_service_recovers(
    service: Service,
) -> None:
    upstream = urllib.parse.urlsplit(server_url(service.engine)).port
    assert upstream is not None
    proxy = Proxy(upstream)
    proxy.start()
    through_proxy = service.env["DATABASE_URL"].replace(
        f"127.0.0.1:{upstream}", f"127.0.0.1:{proxy.port}"
    )
    env = service.env | {"DATABASE_URL": through_proxy}
    with serving(service.project, env) as (base, logged, _), proxy.running():
        tokens = register_and_sign_in(base, "outage@example.com")
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert call("GET", f"{base}/api/v1/users/me", headers=me).status == 200

        proxy.cut()
        # Items, not /users/me: a user is cached for seconds, items are not.
        items = f"{base}/api/v1/items"
        down = [call("GET", items, headers=me) for _ in range(3)]
        # An export answers before it streams: a 503, not a cut-off 200.
        down.append(call("GET", f"{items}/export", headers=me))
        live = call("GET", f"{base}/health")
        ready = call("GET", f"{base}/ready")

        proxy.start()
        deadline = time.monotonic() + 20
        while (back := call("GET", items, headers=me)).status != 200:
            assert time.monotonic() < deadline, (
                f"no recovery: {back.status} {back.body}"
            )
            time.sleep(0.2)
        exported = call("GET", f"{items}/export", headers=me)

    assert exported.status == 200
    for answer in down:
        assert answer.status == 503, answer.body
        assert answer.headers["retry-after"] == "5"
        assert answer.body["error"]["code"] == "service_unavailable"
    assert live.status == 200
    assert ready.status == 503
    assert ready.body["checks"]["database"] == "unavailable"
    # One log line per failed request, never a traceback.
    assert "Traceback" not in logged[0]
    assert "The database is not available" in logged[0]


# Items enough that their export (15 MB) outgrows the socket buffers: the server is
# still sending when it is told to stop.
EXPORTED_ROWS = 100_000
SEED_ITEMS = {
    "postgresql": "SELECT 'Item ' || n AS name, now() AS created_at "
    "FROM generate_series(1, {rows}) AS n",
    "mysql": "SELECT CONCAT('Item ', seq) AS name, NOW(6) AS created_at "
    "FROM seq_1_to_{rows}",
}


def seed_items(service: Service, email: str) -> None:
    """EXPORTED_ROWS items of the user signed up with ``email``, in one statement."""
    database = urllib.parse.urlsplit(service.env["DATABASE_URL"]).path.lstrip("/")
    rows = SEED_ITEMS[service.engine].format(rows=EXPORTED_ROWS)
    server_sql(
        service.engine,
        "INSERT INTO items (name, created_at, updated_at, owner_id) "
        "SELECT items.name, items.created_at, items.created_at, users.id "
        f"FROM ({rows}) AS items, users "
        f"WHERE users.email = '{email}'",
        database,
    )


def test_stop_signal_lets_an_export_in_flight_finish(service: Service) -> None:
    email = "shutdown@example.com"
    with serving(service.project, service.env) as (base, logged, server):
        tokens = register_and_sign_in(base, email)
        seed_items(service, email)
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        request = urllib.request.Request(f"{base}/api/v1/items/export", headers=me)
        with urllib.request.urlopen(request, timeout=30) as answer:
            first = answer.read(4096)
            server.send_signal(signal.SIGTERM)
            # The server stops accepting; the rest of this response is still its to
            # send, and is read only now.
            time.sleep(1)
            refused = call_refused(f"{base}/health")
            rest = answer.read()
            status = answer.status
        code = server.wait(timeout=30)

    assert status == 200
    assert (first + rest).count(b"\n") == EXPORTED_ROWS
    assert refused
    # Stopped cleanly (the lifespan closed the pool), then by the signal it was sent:
    # uvicorn re-raises it once it has shut down.
    assert "Application shutdown complete" in logged[0], logged
    assert "Traceback" not in logged[0]
    assert code == 128 + signal.SIGTERM


def test_exports_their_clients_abandon_give_their_connections_back(
    service: Service,
) -> None:
    email = "abandon@example.com"
    # Two connections, and a second's wait for one: a connection an abandoned export
    # kept would make the reads after it 503s.
    env = service.env | {
        "DATABASE_POOL_SIZE": "2",
        "DATABASE_POOL_TIMEOUT_SECONDS": "1",
    }
    with serving(service.project, env) as (base, logged, _):
        tokens = register_and_sign_in(base, email)
        seed_items(service, email)
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        request = urllib.request.Request(f"{base}/api/v1/items/export", headers=me)
        for _ in range(4):
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.read(4096)
            # Closed with most of the export unsent.
        time.sleep(1)
        reads = [
            call("GET", f"{base}/api/v1/items?size=1", headers=me) for _ in range(4)
        ]

    assert [answer.status for answer in reads] == [200] * 4, reads
    assert all(answer.body["total"] == EXPORTED_ROWS for answer in reads)
    assert "Traceback" not in logged[0]


def call_refused(url: str) -> bool:
    """Whether a new connection to the server is refused."""
    try:
        call("GET", url)
    except OSError:
        return True
    return False


def concurrently(*requests: Any) -> list[Answer]:
    """Send the requests at the same moment, from threads."""
    start = threading.Barrier(len(requests))

    def send(request: Any) -> Answer:
        start.wait()
        answer: Answer = request()
        return answer

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_concurrent_refreshes_of_one_token_let_one_win_and_revoke_the_family(
    service: Service,
) -> None:
    with serving(service.project, service.env) as (base, _, _):
        tokens = register_and_sign_in(base, f"race-{secrets.token_hex(4)}@example.com")
        spent = {"refresh_token": tokens["refresh_token"]}

        def refresh() -> Answer:
            return call("POST", f"{base}/api/v1/auth/refresh", json_body=spent)

        answers = concurrently(refresh, refresh)
        winners = [answer for answer in answers if answer.status == 200]
        losers = [answer for answer in answers if answer.status != 200]
        assert len(winners) == 1, [(a.status, a.body) for a in answers]
        assert losers[0].status == 401
        # The race was a replay: the winner's new token is revoked with its family.
        new_token = {"refresh_token": winners[0].body["refresh_token"]}
        after = call("POST", f"{base}/api/v1/auth/refresh", json_body=new_token)

    assert after.status == 401


def test_concurrent_registrations_of_one_email_give_one_201_and_one_409(
    service: Service,
) -> None:
    account = {
        "email": f"twice-{secrets.token_hex(4)}@example.com",
        "password": PASSWORD,
    }
    with serving(service.project, service.env) as (base, _, _):

        def register() -> Answer:
            return call("POST", f"{base}/api/v1/auth/register", json_body=account)

        answers = concurrently(register, register)

    assert sorted(answer.status for answer in answers) == [201, 409]
    conflict = next(answer for answer in answers if answer.status == 409)
    assert conflict.body["error"]["code"] == "conflict"


def test_client_generated_from_the_schema_parses_real_errors(
    tmp_path: Path,
) -> None:
    """The schema documents each error as it is sent: a client generated from it
    with openapi-python-client parses a real 422, 401 and 404."""
    project = render(tmp_path / "service", {"background_tasks": "none"})
    sync(project)
    env = tool_env() | {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/app.db"}
    run(uv(), "run", "--no-sync", "alembic", "upgrade", "head", cwd=project, env=env)
    with serving(project, env) as (base, _, _):
        schema = call("GET", f"{base}/openapi.json").body
        (tmp_path / "openapi.json").write_text(json.dumps(schema))
        generator_env = tool_env() | {"PATH": f"{TOOLS}:{tool_env()['PATH']}"}
        run(
            TOOLS / "openapi-python-client",
            "generate",
            "--path=openapi.json",
            "--output-path=generated_client",
            "--meta=none",
            cwd=tmp_path,
            env=generator_env,
        )
        sys.path.insert(0, str(tmp_path))
        try:
            client = importlib.import_module("generated_client")
            models = importlib.import_module("generated_client.models")
            create_item = importlib.import_module(
                "generated_client.api.items.items_create_item"
            )
            read_item = importlib.import_module(
                "generated_client.api.items.items_read_item"
            )
            read_me = importlib.import_module(
                "generated_client.api.users.users_read_current_user"
            )
            tokens = register_and_sign_in(base, "client@example.com")
            with (
                client.Client(base_url=base) as anonymous,
                client.AuthenticatedClient(
                    base_url=base, token=tokens["access_token"]
                ) as signed_in,
            ):
                invalid = create_item.sync_detailed(
                    client=signed_in, body=models.ItemCreate(name="")
                )
                unauthorized = read_me.sync_detailed(client=anonymous)
                missing = read_item.sync_detailed(client=signed_in, item_id=2_000_000)
        finally:
            sys.path.remove(str(tmp_path))
            for name in list(sys.modules):
                if name.startswith("generated_client"):
                    del sys.modules[name]

    for answer, status, code in (
        (invalid, 422, "validation_error"),
        (unauthorized, 401, "unauthorized"),
        (missing, 404, "not_found"),
    ):
        assert answer.status_code == status
        assert isinstance(answer.parsed, models.ErrorResponse), answer.parsed
        assert answer.parsed.error.code == code
    assert invalid.parsed.error.details[0].loc == ["body", "name"]


def server_processes(leader: int) -> list[int]:
    """The processes a multiprocess server under ``leader`` serves from: its
    descendants started by multiprocessing (uvicorn's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, waiting = [], [leader]
    while waiting:
        for child in children.get(waiting.pop(), []):
            waiting.append(child)
            with suppress(OSError):
                if (
                    b"--multiprocessing-fork"
                    in Path(f"/proc/{child}/cmdline").read_bytes()
                ):
                    found.append(child)
    return found


def test_image_command_serves_from_web_concurrency_processes_and_stops_them_all(
    service: Service,
) -> None:
    env = service.env | {"WEB_CONCURRENCY": "2"}
    with serving(service.project, env, image=True) as (base, logged, server):
        tokens = register_and_sign_in(base, "processes@example.com")
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        workers = server_processes(server.pid)
        answers = concurrently(
            *[lambda: call("GET", f"{base}/api/v1/users/me", headers=me)] * 8
        )
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)

    assert len(workers) == 2
    assert [answer.status for answer in answers] == [200] * 8
    # Each process ran the app's lifespan to its end (and closed its pool), and none
    # is left.
    assert logged[0].count("Application shutdown complete") == 2, logged
    assert "Traceback" not in logged[0]
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert code == 0


@pytest.fixture(scope="module")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The default answers with item reads cached and rate limits counted in Redis,
    and metrics, on PostgreSQL."""
    project = render(
        tmp_path_factory.mktemp("redis") / "service",
        {
            "db_engine": "postgresql",
            "background_tasks": "none",
            "cache": "redis",
            "rate_limit": "redis",
            "metrics": "true",
        },
    )
    with installed(project, "postgresql") as service:
        yield service


def redis_keys(pattern: str) -> list[str]:
    """The keys of the local Redis that match ``pattern``."""
    listed = subprocess.run(
        ["redis-cli", "--raw", "KEYS", pattern],
        check=True,
        capture_output=True,
        text=True,
    )
    return listed.stdout.split()


def rename_item(service: Service, item_id: int, name: str) -> None:
    """Change an item in the database behind the service's back."""
    database = urllib.parse.urlsplit(service.env["DATABASE_URL"]).path.lstrip("/")
    server_sql(
        service.engine,
        f"UPDATE items SET name = '{name}' WHERE id = {item_id}",
        database,
    )


def scraped(base: str, name: str) -> dict[str, float]:
    """The samples of one metric on the service's /metrics page, by their labels."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        page = response.read().decode()
    found = re.findall(rf"^{name}(\{{.*?\}})? (\S+)$", page, re.MULTILINE)
    return {labels: float(value) for labels, value in found}


def test_cache_shared_by_two_processes_is_never_stale_and_outlives_redis(
    redis_service: Service, tmp_path: Path
) -> None:
    redis = Proxy(6379)
    redis.start()
    prefix = f"reliability-{secrets.token_hex(4)}:"
    env = redis_service.env | {
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "CACHE_URL": f"redis://127.0.0.1:{redis.port}/0",
        "CACHE_PREFIX": prefix,
        "CACHE_RETRY_SECONDS": "1",
        # The rate limits out of the way, on the Redis that stays up.
        "RATE_LIMIT_URL": "redis://127.0.0.1:6379/4",
        "RATE_LIMIT_PREFIX": prefix + "limits:",
    }
    with (
        redis.running(),
        serving(redis_service.project, env, image=True) as (
            base,
            logged,
            _,
        ),
    ):
        tokens = register_and_sign_in(base, "cache@example.com")
        me = {"Authorization": f"Bearer {tokens['access_token']}"}
        created = call(
            "POST", f"{base}/api/v1/items", json_body={"name": "first"}, headers=me
        )
        item_id = created.body["id"]
        url = f"{base}/api/v1/items/{item_id}"

        def names() -> set[str]:
            reads = concurrently(*[lambda: call("GET", url, headers=me)] * 16)
            assert [read.status for read in reads] == [200] * 16, reads
            return {read.body["name"] for read in reads}

        first = call("GET", url, headers=me).body["name"]
        kept = redis_keys(prefix + "*")
        rename_item(redis_service, item_id, "changed behind the cache")
        # Either process answers from the copy in Redis, not from the row.
        cached = names()
        changed = call("PATCH", url, json_body={"name": "second"}, headers=me)
        after_write = names()
        redis.cut()
        rename_item(redis_service, item_id, "read during the outage")
        during_outage = names()
        ready = call("GET", f"{base}/ready")
        redis.start()
        time.sleep(1.5)  # past CACHE_RETRY_SECONDS: both processes ask Redis again
        # The copy Redis kept through the outage, not the row renamed meanwhile.
        after_outage = names()
        reads = scraped(base, "cache_reads_total")
        failures = scraped(base, "cache_failures_total")

    assert first == "first"
    assert len(kept) == 1
    assert kept[0].startswith(prefix + "item:")
    assert cached == {"first"}
    assert changed.status == 200
    assert after_write == {"second"}
    assert during_outage == {"read during the outage"}
    assert ready.status == 200
    assert ready.body["checks"] == {
        "database": "ok",
        "cache": "degraded",
        "rate_limits": "ok",
    }
    assert "The cache is not available" in logged[0]
    assert after_outage == {"second"}
    assert "The cache answers again" in logged[0]
    # Summed over both processes: every read Redis answered counted, a hit or a
    # miss (the first read, at least one after the write); none during the outage.
    hits, misses = reads['{result="hit"}'], reads['{result="miss"}']
    assert hits + misses == 1 + 16 * 3
    assert hits >= 16 * 2
    assert failures[""] >= 1
    assert "Traceback" not in logged[0]


def test_rate_limit_holds_exactly_across_two_processes_and_outlives_redis(
    redis_service: Service,
) -> None:
    redis = Proxy(6379)
    redis.start()
    env = redis_service.env | {
        "WEB_CONCURRENCY": "2",
        "RATE_LIMIT": "10/minute",
        "RATE_LIMIT_AUTH": "3/minute",
        "RATE_LIMIT_URL": f"redis://127.0.0.1:{redis.port}/0",
        "RATE_LIMIT_PREFIX": f"reliability-{secrets.token_hex(4)}:",
        "RATE_LIMIT_RETRY_SECONDS": "1",
    }
    items = "/api/v1/items"
    with (
        redis.running(),
        serving(redis_service.project, env, image=True) as (base, logged, _),
    ):

        def from_address(address: str) -> Answer:
            # uvicorn believes X-Forwarded-For from the loopback (FORWARDED_ALLOW_IPS).
            return call("GET", base + items, headers={"X-Forwarded-For": address})

        # 30 requests at once from one address, spread over both processes.
        burst = concurrently(*[lambda: from_address("203.0.113.1")] * 30)
        other_address = from_address("203.0.113.2")
        guess = {"username": "nobody@example.com", "password": "not-the-password"}
        sign_ins = [
            call("POST", f"{base}/api/v1/auth/token", form=guess).status
            for _ in range(5)
        ]
        redis.cut()
        during_outage = [from_address("203.0.113.3").status for _ in range(12)]
        ready = call("GET", f"{base}/ready")
        redis.start()
        time.sleep(1.5)  # past RATE_LIMIT_RETRY_SECONDS: both processes ask Redis
        # The first address's window, kept in Redis through the outage: still spent,
        # whichever process answers (neither counted it in its own memory).
        back = [from_address("203.0.113.1").status for _ in range(4)]
        ready_again = call("GET", f"{base}/ready")

    statuses = sorted(answer.status for answer in burst)
    assert statuses == [401] * 10 + [429] * 20
    refused = next(answer for answer in burst if answer.status == 429)
    assert refused.body["error"]["code"] == "too_many_requests"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert other_address.headers["ratelimit-remaining"] == "9"
    assert sign_ins == [401, 401, 401, 429, 429]
    # Each process counts on its own while Redis is out: still answered, still
    # limited (10 per process).
    assert 401 in during_outage
    assert set(during_outage) <= {401, 429}
    assert ready.status == 200
    assert ready.body["checks"]["rate_limits"] == "degraded"
    assert "counting rate limits in this process" in logged[0]
    assert back == [429] * 4
    assert ready_again.body["checks"]["rate_limits"] == "ok"
    assert "rate limits are shared again" in logged[0]
    assert "Traceback" not in logged[0]
