"""Derived template context: the one place that knows what each answer implies.

The generated code is made of *concepts* (the settings, the DB session, the items
service, ...). Each concept is written once, as a partial in ``template/_partials``.
A layout is only a map from concept to module: the same partials, placed in different
files. From the answers this hook computes:

* ``mod``: concept -> module, for the chosen layout (partials import through it);
* ``modules``: module -> the partials it holds, for the concepts the answers need;
* ``packages``: the packages those modules need (the template's directory names test
  membership in ``modules`` and ``packages``, so a file exists only when it has code);
* the dependency lists of the generated ``pyproject.toml``, and a few flags.

Everything is a pure function of the answers (tested in ``tests/test_extensions.py``)
except the secrets (the JWT key, database and broker passwords, an API key), which are
fresh on every render and only ever written to the git-ignored ``.env``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, NamedTuple

from copier_template_extensions import ContextHook
from jinja2 import Environment, pass_context
from jinja2.runtime import Context

LAYOUTS = ("small", "medium", "large")

# Where each shared concept lives, per layout. Feature concepts are added below.
_SHARED_MODULES: dict[str, dict[str, str]] = {
    "small": {
        "main": "app.main",
        "metrics": "app.metrics",
        "metrics_pool": "app.metrics",
        "metrics_worker": "app.metrics",
        "tracing": "app.tracing",
        "tracing_db": "app.tracing",
        "sentry": "app.sentry",
        "lambda_handler": "app.lambda_handler",
        "api_docs": "app.docs",
        "cache": "app.cache",
        "ratelimit": "app.ratelimit",
        "ratelimit_counter": "app.ratelimit",
        "config": "app.config",
        "settings_dep": "app.config",
        "logging": "app.logging",
        "limits": "app.limits",
        "errors": "app.errors",
        "db_base": "app.db",
        "db_session": "app.db",
        "session_dep": "app.db",
        "pagination": "app.schemas",
        "security": "app.security",
        "scopes": "app.scopes",
        "auth_deps": "app.dependencies",
        "worker": "app.worker",
        "keys_deps": "app.dependencies",
        "cli": "app.cli",
        "jobs_deps": "app.dependencies",
        "jobs_events_deps": "app.dependencies",
        "health_routes": "app.main",
    },
    "medium": {
        "main": "app.main",
        "metrics": "app.core.metrics",
        "metrics_pool": "app.core.metrics",
        "metrics_worker": "app.core.metrics",
        "tracing": "app.core.tracing",
        "tracing_db": "app.core.tracing",
        "sentry": "app.core.sentry",
        "lambda_handler": "app.lambda_handler",
        "api_docs": "app.core.docs",
        "cache": "app.core.cache",
        "ratelimit": "app.core.ratelimit",
        "ratelimit_counter": "app.core.ratelimit",
        "config": "app.core.config",
        "settings_dep": "app.core.config",
        "logging": "app.core.logging",
        "limits": "app.core.limits",
        "errors": "app.core.errors",
        "db_base": "app.core.db",
        "db_session": "app.core.db",
        "session_dep": "app.core.db",
        "pagination": "app.core.pagination",
        "security": "app.core.security",
        "scopes": "app.core.scopes",
        "auth_deps": "app.auth.dependencies",
        "worker": "app.worker",
        "keys_deps": "app.auth.dependencies",
        "cli": "app.cli",
        "jobs_deps": "app.jobs.dependencies",
        "jobs_events_deps": "app.jobs.dependencies",
        "health_routes": "app.health.router",
    },
    "large": {
        "main": "app.main",
        "metrics": "app.core.metrics",
        "metrics_pool": "app.core.metrics",
        "metrics_worker": "app.core.metrics",
        "tracing": "app.core.tracing",
        "tracing_db": "app.core.tracing",
        "sentry": "app.core.sentry",
        "lambda_handler": "app.lambda_handler",
        "api_docs": "app.core.docs",
        "cache": "app.core.cache",
        "ratelimit": "app.core.ratelimit",
        "ratelimit_counter": "app.core.ratelimit",
        "config": "app.core.config",
        "settings_dep": "app.api.deps",
        "logging": "app.core.logging",
        "limits": "app.core.limits",
        "errors": "app.core.errors",
        "db_base": "app.db.base",
        "db_session": "app.db.session",
        "session_dep": "app.api.deps",
        "pagination": "app.schemas.pagination",
        "security": "app.core.security",
        "scopes": "app.core.scopes",
        "auth_deps": "app.api.deps",
        "worker": "app.worker",
        "keys_deps": "app.api.deps",
        "cli": "app.cli",
        "jobs_deps": "app.api.deps",
        "jobs_events_deps": "app.api.deps",
        "health_routes": "app.api.health",
        "api_router": "app.api.v1.router",
    },
}


class Feature(NamedTuple):
    """Where a feature's concepts live: its package in the medium layout, and its
    modules in the large layout's ``models``, ``schemas``, ``repositories`` and
    ``services`` packages."""

    package: str
    model: str
    schema: str
    repository: str
    service: str


# ``auth`` owns refresh tokens and the token endpoints.
FEATURES: dict[str, Feature] = {
    "users": Feature("users", "user", "user", "users", "users"),
    "auth": Feature("auth", "refresh_token", "token", "refresh_tokens", "auth"),
    "items": Feature("items", "item", "item", "items", "items"),
    "jobs": Feature("jobs", "job", "job", "jobs", "jobs"),
    # API keys are the auth package's business in the medium layout.
    "keys": Feature("auth", "api_key", "api_key", "api_keys", "api_keys"),
    # So are service accounts (OAuth2 client credentials).
    "clients": Feature(
        "auth",
        "service_account",
        "service_account",
        "service_accounts",
        "service_accounts",
    ),
}
_FEATURE_PARTS = ("models", "schemas", "repository", "service", "routes")


def module_map(layout: str) -> dict[str, str]:
    """Where every concept lives in ``layout`` (``small``, ``medium`` or ``large``)."""
    mod = dict(_SHARED_MODULES[layout])
    for name, feature in FEATURES.items():
        package, model, schema, repository, service = feature
        if layout == "small":
            places = (
                "app.models",
                "app.schemas",
                "app.services",
                "app.services",
                "app.main",
            )
        elif layout == "medium":
            places = (
                f"app.{package}.models",
                f"app.{package}.schemas",
                f"app.{package}.service",
                f"app.{package}.service",
                f"app.{package}.router",
            )
        else:
            places = (
                f"app.models.{model}",
                f"app.schemas.{schema}",
                f"app.repositories.{repository}",
                f"app.services.{service}",
                f"app.api.v1.endpoints.{name}",
            )
        for part, place in zip(_FEATURE_PARTS, places, strict=True):
            mod[f"{name}_{part}"] = place
    # A job's work lives beside the job service, and so do its measures, its spans
    # and its events (the job model is theirs to know, not the core's).
    for concept in ("jobs_work", "metrics_jobs", "tracing_jobs", "jobs_events"):
        mod[concept] = mod["jobs_service"]
    return mod


# Every concept in the order it appears when several share a module, with the answer
# flag that brings it in. The partial of concept ``a_b`` is ``_partials/a/b.py.jinja``
# (``_partials/a.py.jinja`` for a one-word concept).
CONCEPTS: tuple[tuple[str, str], ...] = (
    ("config", "always"),
    ("settings_dep", "always"),
    ("logging", "always"),
    ("limits", "always"),
    ("errors", "always"),
    ("db_base", "has_db"),
    ("db_session", "has_db"),
    ("session_dep", "has_db"),
    ("pagination", "has_db"),
    ("scopes", "has_auth"),
    ("security", "has_jwt"),
    ("users_models", "has_jwt"),
    ("auth_models", "has_jwt"),
    ("items_models", "has_db"),
    ("jobs_models", "has_jobs"),
    ("keys_models", "api_keys_in_db"),
    ("clients_models", "has_clients"),
    ("users_schemas", "has_jwt"),
    ("auth_schemas", "has_jwt"),
    ("items_schemas", "has_db"),
    ("jobs_schemas", "has_jobs"),
    ("clients_schemas", "has_clients"),
    ("users_repository", "has_jwt"),
    ("users_service", "has_jwt"),
    ("auth_repository", "has_jwt"),
    ("auth_service", "has_jwt"),
    ("clients_repository", "has_clients"),
    ("clients_service", "has_clients"),
    ("items_repository", "has_db"),
    ("items_service", "has_db"),
    ("jobs_repository", "has_jobs"),
    ("jobs_events", "has_jobs"),
    ("metrics_jobs", "metrics_on_jobs"),
    ("tracing_jobs", "tracing_on_jobs"),
    ("jobs_service", "has_jobs"),
    ("jobs_work", "has_jobs"),
    ("keys_repository", "api_keys_in_db"),
    ("keys_service", "api_keys_in_db"),
    ("auth_deps", "has_jwt"),
    ("keys_deps", "has_api_key"),
    ("jobs_deps", "jobs_in_store"),
    ("jobs_events_deps", "has_jobs"),
    ("main", "always"),
    ("health_routes", "always"),
    ("auth_routes", "has_jwt"),
    ("users_routes", "has_jwt"),
    ("items_routes", "has_db"),
    ("jobs_routes", "has_jobs"),
    ("api_router", "is_large"),
    ("worker", "has_queue"),
    ("cli", "has_cli"),
    ("metrics", "has_metrics"),
    ("metrics_pool", "metrics_on_db"),
    ("metrics_worker", "metrics_on_queue"),
    ("tracing", "has_tracing"),
    ("tracing_db", "tracing_on_db"),
    ("sentry", "has_sentry"),
    ("lambda_handler", "has_lambda"),
    ("api_docs", "has_offline_docs"),
    ("cache", "has_cache"),
    ("ratelimit", "has_rate_limit"),
    ("ratelimit_counter", "has_rate_limit"),
)


# Concepts written once per value of an answer, or of a value derived from the answers
# (the context key named first), and the file each value uses:
# ``_partials/items/models.sqlmodel.py.jinja`` for ``items_models`` with SQLModel,
# ``_partials/worker.celery.py.jinja`` for the Celery worker. A value that is not
# listed has no code for the concept. SQLModel code follows SQLModel's own idioms
# (table models that share fields with schemas, ``session.exec``).
_PER_LIBRARY = ("db_library", {"sqlalchemy": "sqlalchemy", "sqlmodel": "sqlmodel"})
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "users_models": _PER_LIBRARY,
    "users_schemas": _PER_LIBRARY,
    "users_repository": _PER_LIBRARY,
    "auth_models": _PER_LIBRARY,
    "auth_repository": _PER_LIBRARY,
    "items_models": _PER_LIBRARY,
    "items_schemas": _PER_LIBRARY,
    "items_repository": _PER_LIBRARY,
    # Jobs are keyed by where their status lives: a database library, else memory
    # (BackgroundTasks) or Redis (workers); both of the latter use a plain dataclass.
    "jobs_models": (
        "job_storage",
        {
            "sqlalchemy": "sqlalchemy",
            "sqlmodel": "sqlmodel",
            "memory": "memory",
            "redis": "memory",
        },
    ),
    "jobs_repository": (
        "job_storage",
        {
            "sqlalchemy": "database",
            "sqlmodel": "database",
            "memory": "memory",
            "redis": "redis",
        },
    ),
    "keys_models": _PER_LIBRARY,
    "clients_models": _PER_LIBRARY,
    "clients_repository": _PER_LIBRARY,
    "keys_repository": _PER_LIBRARY,
    "worker": ("background", {"celery": "celery", "taskiq": "taskiq"}),
    # Without a database, the job store's dependency: one store per process, or
    # the Redis store the lifespan opened.
    "jobs_deps": ("job_storage", {"memory": "memory", "redis": "redis"}),
    # A job's states, passed to who follows it: in the API process (BackgroundTasks
    # run jobs there), or from the workers over the broker: Redis pub/sub, or a
    # RabbitMQ topic exchange.
    "jobs_events": (
        "job_events",
        {"memory": "memory", "redis": "redis", "rabbitmq": "rabbitmq"},
    ),
    # Jobs are kept in the database, or in a store (memory, Redis).
    "jobs_service": (
        "job_storage",
        {
            "sqlalchemy": "database",
            "sqlmodel": "database",
            "memory": "store",
            "redis": "store",
        },
    ),
    # The cache of item reads: in the process's memory, or in Redis.
    "cache": ("cache", {"memory": "memory", "redis": "redis"}),
    # Rate limits counted in the process's memory, or in Redis.
    "ratelimit_counter": ("rate_limit", {"memory": "memory", "redis": "redis"}),
    # Jobs are dispatched by FastAPI's BackgroundTasks or through the broker.
    "jobs_routes": (
        "background",
        {"fastapi": "tasks", "celery": "queue", "taskiq": "queue"},
    ),
}


def partial_path(concept: str, variant: str | None = None) -> str:
    """The partial of ``concept``: ``_partials/a/b.py.jinja`` for concept ``a_b`` of
    a feature, ``_partials/a.py.jinja`` otherwise, with ``.variant`` before ``.py``
    for a concept written once per value (see ``VARIANTS``)."""
    head, _, tail = concept.partition("_")
    suffix = f".{variant}.py.jinja" if variant else ".py.jinja"
    if head in FEATURES and tail:
        return f"template/_partials/{head}/{tail}{suffix}"
    return f"template/_partials/{concept}{suffix}"


ENGINE_LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL"}


def summary(answers: Answers, flags: Mapping[str, bool]) -> str:
    """What the answers chose, in a few words (the generated README's first line)."""
    parts = [f"{answers.layout} layout"]
    if flags["has_db"]:
        library = "SQLModel" if answers.db_library == "sqlmodel" else "SQLAlchemy"
        parts.append(f"{library} on {ENGINE_LABELS[answers.db_engine]}")
    if flags["has_jwt"]:
        parts.append("JWT auth")
    elif flags["has_api_key"]:
        parts.append("API keys")
    if flags["has_jobs"]:
        parts.append("background jobs")
    return ", ".join(parts)


def feature_errors(flags: Mapping[str, bool]) -> dict[str, list[int]]:
    """The error statuses every route of each feature may answer with."""
    # A credential may be refused (401); a route that asks for a scope adds 403.
    guarded = [401] if flags["has_auth"] else []
    jobs_on_server = flags["has_db"] or flags["has_queue"]
    # Every API route is rate limited (the health routes are not).
    limited = [429] if flags["has_rate_limit"] else []
    return {
        "health": [],
        "auth": [503, *limited],
        "users": [401, 503, *limited],
        "items": [*guarded, 503, *limited],
        "jobs": [*guarded, *([503] if jobs_on_server else []), *limited],
    }


class Scope(NamedTuple):
    """A scope a credential may carry: its name, its constant in the generated scopes
    module, the alias the JWT routes name a user who has it by, the flag that brings
    it in, and what it allows (the OpenAPI schema shows it in /docs)."""

    name: str
    constant: str
    user: str
    flag: str
    description: str


# The scope vocabulary, `<feature>:<action>`: a feature's routes need its scopes.
SCOPES: tuple[Scope, ...] = (
    Scope("items:read", "ITEMS_READ", "ItemReader", "has_db", "Read your items"),
    Scope(
        "items:write",
        "ITEMS_WRITE",
        "ItemWriter",
        "has_db",
        "Create, change and delete your items",
    ),
    Scope(
        "jobs:read", "JOBS_READ", "JobReader", "has_jobs", "Read and follow your jobs"
    ),
    Scope("jobs:write", "JOBS_WRITE", "JobWriter", "has_jobs", "Start jobs"),
    Scope("users:admin", "USERS_ADMIN", "AdminUser", "has_jwt", "List every user"),
)


class ScopedRoute(NamedTuple):
    """A route that needs a scope, as the generated tests call it: its method, its
    path in the OpenAPI schema and as called (an unknown id), the JSON body sent,
    the scope's constant, and what a credential that has the scope gets."""

    method: str
    template: str
    path: str
    body: str
    scope: str
    admitted: int


_JOB = "00000000-0000-4000-8000-000000000000"
SCOPED_ROUTES: tuple[tuple[str, ScopedRoute], ...] = (
    ("has_db", ScopedRoute("GET", "/items", "/items", "None", "ITEMS_READ", 200)),
    (
        "has_db",
        ScopedRoute("GET", "/items/export", "/items/export", "None", "ITEMS_READ", 200),
    ),
    (
        "has_db",
        ScopedRoute(
            "GET", "/items/{item_id}", "/items/999999", "None", "ITEMS_READ", 404
        ),
    ),
    ("has_db", ScopedRoute("POST", "/items", "/items", "{}", "ITEMS_WRITE", 422)),
    (
        "has_db",
        ScopedRoute(
            "PATCH", "/items/{item_id}", "/items/999999", "{}", "ITEMS_WRITE", 404
        ),
    ),
    (
        "has_db",
        ScopedRoute(
            "DELETE", "/items/{item_id}", "/items/999999", "None", "ITEMS_WRITE", 404
        ),
    ),
    ("has_jobs", ScopedRoute("POST", "/jobs", "/jobs", "{}", "JOBS_WRITE", 422)),
    (
        "has_jobs",
        ScopedRoute("GET", "/jobs/{job_id}", f"/jobs/{_JOB}", "None", "JOBS_READ", 404),
    ),
    (
        "has_jobs",
        ScopedRoute(
            "GET",
            "/jobs/{job_id}/events",
            f"/jobs/{_JOB}/events",
            "None",
            "JOBS_READ",
            404,
        ),
    ),
    ("has_jwt", ScopedRoute("GET", "/users", "/users", "None", "USERS_ADMIN", 200)),
)


def credential_scopes(flags: Mapping[str, bool]) -> list[Scope]:
    """The scopes a credential may carry, for the features the answers bring in."""
    return [s for s in SCOPES if flags["has_auth"] and flags[s.flag]]


class Router(NamedTuple):
    """A router the app includes: how main.py imports it, its name there, and the
    arguments after it in ``include_router``."""

    imported: str
    name: str
    prefix: str


def routers(layout: str, features: list[str]) -> list[Router]:
    """The routers create_app() includes; the small layout has its routes on the app."""
    api = ', prefix="/api/v1"'
    if layout == "medium":
        return [
            Router(
                "from app.health.router import router as health_router",
                "health_router",
                "",
            ),
            *(
                Router(
                    f"from app.{feature}.router import router as {feature}_router",
                    f"{feature}_router",
                    api,
                )
                for feature in features
            ),
        ]
    if layout == "large":
        return [
            Router("from app.api import health", "health.router", ""),
            Router("from app.api.v1.router import api_router", "api_router", api),
        ]
    return []


# A route that reads a request body may also answer these: a malformed body, one
# over MAX_REQUEST_BODY_BYTES, and one the request model refuses.
BODY_ERRORS = (400, 413, 422)


def _responses(codes: Sequence[int], ok: str = "") -> list[str]:
    """The `responses` of a route: the errors it answers with and, when a route
    documents its own 200 (``ok``, a Python expression), that too."""
    parts = [f"error_responses({', '.join(map(str, codes))})"] if codes else []
    if ok:
        parts.append(f"{{200: {ok}}}")
    return [f"responses={' | '.join(parts)}"] if parts else []


@pass_context
def route_arguments(
    context: Context,
    feature: str,
    path: str,
    args: str = "",
    errors: Sequence[int] = (),
    body: bool = False,
    ok: str = "",
    scope: str = "",
) -> list[str]:
    """The arguments of a route's decorator. In the small layout, routes are declared
    on the app and carry what a router carries otherwise: the feature's prefix and
    tag and the errors all its routes answer with. With API keys, a route needs a
    key that carries its ``scope`` (the constant's name), checked by a dependency
    here; with JWT, the user parameter asks for it (user_parameter())."""
    codes = [*errors, *(BODY_ERRORS if body else ())]
    extra = [args] if args else []
    if context["layout"] == "small":
        path = ("" if feature == "health" else f"/api/v1/{feature}") + path
        extra = [f'tags=["{feature}"]', *extra]
        codes = [*context["feature_errors"][feature], *codes]
    if scope and context["has_auth"]:
        codes.append(403)  # a credential without the scope
    if scope and context["has_api_key"]:
        extra.append(f"dependencies=[Security(require_api_key, scopes=[{scope}])]")
    return [json.dumps(path), *extra, *_responses(sorted(set(codes)), ok)]


@pass_context
def user_parameter(context: Context, scope: str) -> str:
    """A JWT route's user parameter (a line of its signature), typed by the alias
    that asks for ``scope``; nothing without JWT."""
    if not context["has_jwt"]:
        return ""
    (alias,) = [
        s["user"] for s in context["credential_scopes"] if s["constant"] == scope
    ]
    return f"    user: {alias},\n"


@pass_context
def router_arguments(context: Context, feature: str) -> list[str]:
    """The arguments of a feature's APIRouter (the medium and large layouts)."""
    prefix = [] if feature == "health" else [f'prefix="/{feature}"']
    errors = context["feature_errors"][feature]
    return [*prefix, f'tags=["{feature}"]', *_responses(errors)]


@pass_context
def route_imports(context: Context, feature: str) -> str:
    """What a feature's route declarations import (the `pymodule` filter sorts it):
    what asks for its scopes (JWT's aliases of users, or the API key's dependency
    and the scopes' names), and the error responses."""
    mod = context["mod"]
    scopes = [
        s for s in context["credential_scopes"] if s["name"].startswith(f"{feature}:")
    ]
    lines = []
    if scopes and context["has_jwt"]:
        names = ", ".join(s["user"] for s in scopes)
        lines.append(f"from {mod['auth_deps']} import {names}")
    if scopes and context["has_api_key"]:
        names = ", ".join(s["constant"] for s in scopes)
        lines += [
            "from fastapi import Security",
            f"from {mod['keys_deps']} import require_api_key",
            f"from {mod['scopes']} import {names}",
        ]
    if feature != "health":
        lines.append(f"from {mod['errors']} import error_responses")
    return "\n".join(lines)


def service_ref(layout: str, feature: str) -> tuple[str, str]:
    """How a router imports a feature's service module, and the name it then uses."""
    if layout == "small":
        return "from app import services", "services"
    package, *_, service = FEATURES[feature]
    if layout == "medium":
        return f"from app.{package} import service", "service"
    return (
        f"from app.services import {service} as {service}_service",
        f"{service}_service",
    )


class Option(NamedTuple):
    """What an answer adds at the app's extension points, beside its own modules.

    Its partials live in ``template/_partials/<folder>/``, one per point it fills
    (``POINTS`` names the file of each point), and the shared partials iterate over
    the contributions (``points`` in the context) instead of testing flags.
    """

    folder: str
    flag: str
    points: tuple[str, ...]


# The extension points, and the partial an option writes for each. A Python point's
# partial has its imports at the top and its code in macros, because the code goes
# into a class or function body: the shared partial includes the file (for the
# imports, which the `pymodule` filter hoists) and imports it for the macros.
POINTS: dict[str, str] = {
    # Fields of Settings: `fields()`, and `checks()` for a validator (optional).
    "settings": "settings.py.jinja",
    # Steps of the lifespan: `startup()`, and `shutdown()` (run in reverse order).
    "lifespan": "lifespan.py.jinja",
    # Middleware inside the request-id middleware: `install()`, outermost first.
    "middleware": "middleware.py.jinja",
    # The error handler and the error body, each macro optional: `cases()`
    # (branches of handle_error) and `handled()` (the classes registered) for the
    # exceptions an option answers; `unhandled()` runs before an unhandled error's
    # 500 (`exc` is the error); `fields()` of every error body; `descriptions()`
    # of the statuses it adds to the OpenAPI schema (ERROR_DESCRIPTIONS).
    "errors": "errors.py.jinja",
    # The cache of item reads: `hit()` where a read finds a value, `miss()` where it
    # finds none (a line deeper, in the branch that returns None), `failed()` where
    # a call to its server fails.
    "cache": "cache.py.jinja",
    # Jobs, wherever they run: `decorators()` of the function that does a job's work
    # (given the job and the settings), `retried()` where an attempt failed and is
    # tried again, `queued()` once a job was handed over.
    "jobs": "jobs.py.jinja",
    # A Celery or Taskiq worker: `setup()` where its module has made the app or the
    # broker, `startup()` and `shutdown()` in each worker process; for Celery, whose
    # workers do not run the app's lifespan, `engine()` where it makes its `engine`.
    "worker": "worker.py.jinja",
    # What /ready checks: `parameters()`, `probe()` and `check()` (a check that can
    # be `degraded`, still ready, sets the flag `may_degrade`).
    "readiness": "readiness.py.jinja",
    # Lines of .env.example (the settings, documented) and of .env (the local values
    # a fresh copy needs): plain text.
    "env_example": "env.example.jinja",
    "env": "env.jinja",
    # compose.yaml: `services()` before the app, `setup()` (one-shot services the
    # app waits for), `processes()` after it; `environment()`, `mounts()` and
    # `depends()` and `waits()` (for setup) of the app's containers; `volumes()`;
    # `configs()` (files written in compose.yaml);
    # and compose.dev.yaml: `dev()` (ports published on 127.0.0.1 for development).
    "compose": "compose.yaml.jinja",
    # The generated CI workflow's test job: `services()` (service containers),
    # `env()` (its environment) and `steps()` (checks before the tests).
    "ci": "ci.yml.jinja",
    # README.md: `quickstart()` lines, `settings()` rows, `usage()` paragraphs,
    # `sections()` of its own, and `deploying()` notes; inside the metrics' and the
    # tracing's sections, `metric_rows()` and `traced()` of the options adding to
    # them. Features (the packages with routes) write their `api()` rows in a file
    # of the same name.
    "readme": "readme.md.jinja",
    # The generated tests/conftest.py: fixtures at the top level, and macros for
    # what goes into the shared fixtures (see tests/conftest.py.jinja).
    "conftest": "conftest.py.jinja",
    # The app itself, in create_app(): `arguments()` of FastAPI(), `setup()` after
    # the routers are included.
    "app": "app.py.jinja",
    # The Kubernetes manifests (k8s/): `resources()` of the base kustomization (the
    # option's own manifest files), `secrets()` lines of k8s/secrets.env.example,
    # settings production changes (`prod_settings()`, of overlays/prod), and of every
    # pod of the service: `env()`, `mounts()` and `volumes()`; the pod annotations of
    # the API's (`annotations()`) and of the workers' (`worker_annotations()`); in
    # the README's Kubernetes section, commands before applying a release
    # (`release()`) and `notes()`.
    "kubernetes": "kubernetes.yaml.jinja",
}

# What an option with a Redis of its own (the cache's, the rate limits') adds: its
# settings and /ready check, the server in compose, the generated CI and the
# Kubernetes Secret, the README and the suite's fixtures.
REDIS_SERVICE_POINTS = (
    "settings",
    "readiness",
    "env_example",
    "compose",
    "ci",
    "kubernetes",
    "readme",
    "conftest",
)

# In the order their code appears at every point.
OPTIONS: tuple[Option, ...] = (
    # Every service refuses request bodies over MAX_REQUEST_BODY_BYTES.
    Option("limits", "always", ("settings", "middleware", "env_example", "readme")),
    # A database server (PostgreSQL, MySQL): its password, which .env's DATABASE_URL
    # expands (so it comes first), and the server the app's containers wait for.
    Option("db/server", "on_server", ("env", "env_example", "compose", "readme")),
    # MySQL's root password (the tests create their databases as root), and its server.
    Option("db/mysql", "on_mysql", ("env", "env_example", "compose", "ci")),
    Option(
        "db",
        "has_db",
        (
            "settings",
            "lifespan",
            "errors",
            "readiness",
            "env_example",
            "env",
            "compose",
            "ci",
            "readme",
            "conftest",
            "kubernetes",
        ),
    ),
    # The connections to a server: the pool, and who may create the tests' databases.
    Option(
        "db/connections",
        "on_server",
        ("settings", "env_example", "readme", "kubernetes"),
    ),
    # Each engine's own service, in compose and in the generated CI; MySQL's root,
    # as the tests use it (the README).
    Option("db/postgresql", "on_postgresql", ("compose", "ci")),
    Option("db/mysql", "on_mysql", ("readme",)),
    # The SQLite file, in a volume.
    Option("db/sqlite", "on_sqlite", ("compose",)),
    Option("health", "has_checks", ("settings", "env_example", "readme")),
    Option("jobs", "has_jobs", ("settings", "env_example", "readme", "conftest")),
    # Jobs that run in the API process (BackgroundTasks).
    Option("jobs/tasks", "has_tasks", ("readme",)),
    # Their status in that process's memory, without a database: one server process.
    # One server process: what lives in its memory (the options below refuse more).
    Option("process", "one_process", ("settings",)),
    Option("jobs/memory", "jobs_in_memory", ("settings", "readme")),
    Option(
        "queue",
        "has_queue",
        (
            "settings",
            "readiness",
            "env_example",
            "env",
            "compose",
            "ci",
            "readme",
            "conftest",
            "kubernetes",
        ),
    ),
    Option("celery", "is_celery", ("settings", "env_example", "readme", "conftest")),
    Option("jobstore", "jobs_in_redis", ("settings", "lifespan", "env_example")),
    # The suite's job store without a database, whether the app's is Redis or memory.
    Option("jobstore", "jobs_in_store", ("conftest",)),
    Option("taskiq", "is_taskiq", ("lifespan", "readme", "conftest")),
    # Tasks in the suite use the test's database sessions.
    Option("taskiq/db", "taskiq_on_db", ("conftest",)),
    # A job's progress, followed live: the settings, and the feed the lifespan opens.
    Option(
        "jobs/events",
        "has_jobs",
        ("settings", "lifespan", "env_example", "readme", "conftest"),
    ),
    Option(
        "auth",
        "has_jwt",
        ("settings", "env_example", "env", "readme", "conftest", "kubernetes"),
    ),
    # API keys: what both kinds say in the README, and what keys kept in settings
    # (without a database) add to the settings.
    Option("keys", "has_api_key", ("readme", "conftest")),
    Option(
        "keys",
        "api_keys_in_settings",
        ("settings", "env_example", "env", "kubernetes"),
    ),
    Option("keys/db", "api_keys_in_db", ("readme",)),
    Option("clients", "has_clients", ("settings", "env_example", "readme")),
    Option("keys/listed", "api_keys_in_settings", ("readme",)),
    # Scopes, whatever the credential: the README's section on them.
    Option("scopes", "has_auth", ("readme",)),
    # Prometheus metrics: every request (the middleware is inside the body limit,
    # and sees its 413s), the database pool, and the jobs.
    Option(
        "metrics",
        "has_metrics",
        (
            "settings",
            "lifespan",
            "middleware",
            "env_example",
            "compose",
            "readme",
            "kubernetes",
        ),
    ),
    Option("metrics/db", "metrics_on_db", ("lifespan", "readme")),
    # Jobs counted where they are queued and where they run; a worker serves its
    # processes' figures on a port of its own.
    Option("metrics/jobs", "metrics_on_jobs", ("jobs", "readme")),
    Option(
        "metrics/worker",
        "metrics_on_queue",
        ("settings", "worker", "env_example", "readme", "kubernetes"),
    ),
    # OpenTelemetry: a span per request (its middleware inside the metrics'), SQL
    # statements and outgoing httpx calls, exported over OTLP.
    Option(
        "tracing",
        "has_tracing",
        (
            "settings",
            "lifespan",
            "middleware",
            "errors",
            "env_example",
            "compose",
            "readme",
            "conftest",
        ),
    ),
    Option("tracing/db", "tracing_on_db", ("lifespan", "readme")),
    # A span per job, in the trace of the request that queued it: carried through
    # the broker by Celery's instrumentation or Taskiq's middleware.
    Option("tracing/jobs", "tracing_on_jobs", ("jobs", "readme")),
    Option("tracing/celery", "tracing_on_celery", ("worker",)),
    Option("tracing/taskiq", "tracing_on_taskiq", ("worker",)),
    # Unhandled errors reported to Sentry, from the error handler.
    Option(
        "sentry",
        "has_sentry",
        ("settings", "lifespan", "errors", "env_example", "readme", "kubernetes"),
    ),
    # Kubernetes manifests: what the README says of them (the manifests are k8s/).
    Option("kubernetes", "has_kubernetes", ("readme",)),
    # AWS Lambda: the pool an execution environment needs (app.lambda_handler is the
    # entry point), and how to deploy it.
    Option("lambda", "has_lambda", ("settings", "readme")),
    # The API docs pages served with their own assets, under a strict CSP.
    Option("api_docs", "has_offline_docs", ("app", "readme")),
    # The cache of item reads (the items service reads through it): what both kinds
    # keep, then each kind's own.
    Option(
        "cache",
        "has_cache",
        ("settings", "lifespan", "env_example", "readme", "conftest"),
    ),
    Option(
        "cache/memory",
        "cache_in_memory",
        ("settings", "env_example", "readme", "conftest"),
    ),
    Option(
        "cache/redis",
        "cache_in_redis",
        REDIS_SERVICE_POINTS,
    ),
    # The cache's reads and failures, counted for Prometheus.
    Option("metrics/cache", "metrics_on_cache", ("cache", "readme")),
    # Rate limits (inside the metrics' and the tracing's middleware, so a 429 is
    # counted and traced): what both kinds count, then each kind's own.
    Option(
        "ratelimit",
        "has_rate_limit",
        (
            "settings",
            "lifespan",
            "middleware",
            "errors",
            "env_example",
            "readme",
            "conftest",
        ),
    ),
    Option(
        "ratelimit/memory",
        "ratelimit_in_memory",
        ("settings", "readme", "conftest"),
    ),
    Option(
        "ratelimit/redis",
        "ratelimit_in_redis",
        REDIS_SERVICE_POINTS,
    ),
)


def contributions(flags: Mapping[str, bool]) -> dict[str, list[str]]:
    """Each extension point's partials, for the options the answers bring in."""
    return {
        point: [
            f"template/_partials/{option.folder}/{file}"
            for option in OPTIONS
            if flags[option.flag] and point in option.points
        ]
        for point, file in POINTS.items()
    }


# The packages each flag brings into the generated pyproject.toml: an option that
# needs a package adds a line here (with a flag of its own, if none says it yet).
RUNTIME_DEPENDENCIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "always",
        (
            "fastapi[standard]>=0.165.0",
            "pydantic-settings>=2.16.0",
            # The event loop uvicorn runs on: 0.23 serves about a quarter fewer
            # requests per core than 0.22 (docs/performance.md).
            "uvloop>=0.22.1,<0.23; sys_platform != 'win32'",
        ),
    ),
    ("is_sqlalchemy", ("sqlalchemy[asyncio]>=2.1.0", "alembic>=1.20.0")),
    (
        "is_sqlmodel",
        ("sqlmodel>=0.0.50", "sqlalchemy[asyncio]>=2.1.0", "alembic>=1.20.0"),
    ),
    ("on_sqlite", ("aiosqlite>=0.22.0",)),
    ("on_postgresql", ("asyncpg>=0.31.0",)),
    # The rsa extra brings `cryptography`, which MySQL 8's default authentication needs.
    ("on_mysql", ("aiomysql[rsa]>=0.3.2",)),
    ("has_jwt", ("pyjwt>=2.15.0", "pwdlib[argon2]>=0.3.0")),
    ("celery_on_redis", ("celery[redis]>=5.7.0",)),
    # aio-pika: the job events' publisher and consumers, on the event loop.
    ("celery_on_rabbitmq", ("celery>=5.7.0", "aio-pika>=10.0.0")),
    ("is_taskiq", ("taskiq>=0.13.0", "taskiq-fastapi>=0.5.0")),
    ("taskiq_on_redis", ("taskiq-redis>=1.2.0",)),
    ("taskiq_on_rabbitmq", ("taskiq-aio-pika>=0.6.0", "aio-pika>=10.0.0")),
    # Imported directly: the job store without a database, and Taskiq's broker ping.
    ("uses_redis_client", ("redis>=8.0.0",)),
    ("has_metrics", ("prometheus-client>=0.26.0",)),
    (
        "has_tracing",
        (
            "opentelemetry-api>=1.45.0",
            "opentelemetry-sdk>=1.45.0",
            "opentelemetry-exporter-otlp-proto-http>=1.45.0",
            "opentelemetry-instrumentation-httpx>=0.66b2",
        ),
    ),
    ("tracing_on_celery", ("opentelemetry-instrumentation-celery>=0.66b2",)),
    ("tracing_on_taskiq", ("taskiq[opentelemetry]>=0.13.0",)),
    ("has_sentry", ("sentry-sdk>=2.75.0",)),
    ("has_lambda", ("mangum>=0.22.0",)),
    ("has_offline_docs", ("fastapi-offline>=1.7.7",)),
)
DEV_DEPENDENCIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "always",
        (
            "mypy>=2.4.0",
            "pre-commit>=4.0.0",
            "pytest>=9.0.0",
            "pytest-asyncio>=1.5.0",
            "pytest-cov>=7.1.0",
            "pytest-xdist>=3.8.0",
            "ruff>=0.17.0",
            "schemathesis>=4.32.0",
        ),
    ),
    ("is_celery", ("celery-types>=0.26.0",)),
)


def requirements(
    table: tuple[tuple[str, tuple[str, ...]], ...], flags: Mapping[str, bool]
) -> list[str]:
    """The requirements of ``table`` the flags bring in, once each, sorted."""
    chosen = {req for flag, reqs in table if flags[flag] for req in reqs}
    return sorted(chosen, key=str.lower)


def database_url(engine: str, name: str, host: str, password: str = "") -> str:
    """DATABASE_URL for an engine, in compose's names (user ``app``, database
    ``name``), with ``password`` after the user where one is given."""
    user = f"app:{password}" if password else "app"
    if engine == "postgresql":
        return f"postgresql+asyncpg://{user}@{host}:5432/{name}"
    if engine == "mysql":
        return f"mysql+aiomysql://{user}@{host}:3306/{name}?charset=utf8mb4"
    if host == "db":  # SQLite inside a container: the file is on a volume
        return "sqlite+aiosqlite:////data/app.db"
    return "sqlite+aiosqlite:///./app.db"


# What only compose's servers and .env's URLs use (python-dotenv expands
# ${DB_PASSWORD} in .env): in a cluster the URLs, which are secrets, carry the
# passwords whole.
COMPOSE_ONLY_SETTINGS = frozenset(
    {"DB_PASSWORD", "DB_ROOT_PASSWORD", "BROKER_PASSWORD"}
)
# A setting's line in an env file, commented out (`# SENTRY_DSN=...`) or not.
SETTING_LINE = re.compile(r"^(?:# ?)?([A-Z][A-Z0-9_]*)=")


def setting_names(text: str) -> list[str]:
    """The settings an env file names, commented out or not, in order."""
    return [m.group(1) for line in text.splitlines() if (m := SETTING_LINE.match(line))]


def cluster_settings(example: str, secrets: str, header: str) -> str:
    """The settings of ``.env.example`` that are not secrets, for a ConfigMap.

    ``secrets`` is the text of the Secret's example file, whose settings are left
    out, as are those only compose uses; ``header`` replaces .env.example's first
    paragraph. A setting keeps the comment above it, unless that comment opened a
    run of settings whose first one is left out (it would describe that one). Values
    stay as documented, except ENVIRONMENT, which is production in a cluster.
    """
    excluded = COMPOSE_ONLY_SETTINGS | set(setting_names(secrets))
    lines = example.splitlines()
    body = lines[lines.index("") + 1 :] if "" in lines else lines
    out: list[str] = [*header.splitlines(), ""]
    comments: list[str] = []
    for line in [*body, ""]:
        match = SETTING_LINE.match(line)
        if match:
            name = match.group(1)
            if comments and name not in excluded:
                out.extend(comments)
            comments = []
            if name not in excluded:
                out.append("ENVIRONMENT=production" if name == "ENVIRONMENT" else line)
        elif line.startswith("#"):
            comments.append(line)
        else:
            out.extend(comments)
            comments = []
            if out[-1] != "":
                out.append("")
    return "\n".join(out).strip() + "\n"


@dataclass(frozen=True)
class Answers:
    """The answers the derived context depends on. Copier also runs the hook while
    questions are still being asked: an answer not given yet takes its default."""

    layout: str = "medium"
    db_library: str = "sqlalchemy"
    db_engine: str = "sqlite"
    auth: str = "jwt"
    background: str = "fastapi"
    python: str = "3.12"
    slug: str = "my-service"
    broker: str = "redis"
    metrics: bool = False
    tracing: bool = False
    sentry: bool = False
    kubernetes: bool = False
    aws_lambda: bool = False
    offline_docs: bool = False
    cache: str = "none"
    rate_limit: str = "none"
    client_credentials: bool = False

    @classmethod
    def read(cls, context: Mapping[str, Any]) -> Answers:
        """The answers in ``context`` (a yes/no answer as a bool, others as text)."""
        names = {
            "layout": "project_size",
            "background": "background_tasks",
            "python": "python_version",
            "slug": "project_slug",
        }
        found: dict[str, Any] = {}
        for field in fields(cls):
            key = names.get(field.name, field.name)
            if key not in context:
                continue
            value = context[key]
            if isinstance(field.default, bool):
                found[field.name] = str(value).lower() in {"true", "yes", "1"}
            else:
                found[field.name] = str(value)
        return cls(**found)


@lru_cache(maxsize=256)
def _derive(answers: Answers) -> dict[str, Any]:
    layout, db_library, db_engine = (
        answers.layout,
        answers.db_library,
        answers.db_engine,
    )
    auth, background, python = answers.auth, answers.background, answers.python
    slug, broker = answers.slug, answers.broker
    has_db = db_library != "none"
    flags = {
        "always": True,
        "has_db": has_db,
        "has_jwt": auth == "jwt",
        "has_api_key": auth == "api_key",
        "has_auth": auth != "none",
        # Service accounts sign in with the OAuth2 client credentials grant.
        "has_clients": auth == "jwt" and answers.client_credentials,
        # API keys live in a table with a database, in settings (API_KEYS) without.
        "api_keys_in_db": auth == "api_key" and has_db,
        "api_keys_in_settings": auth == "api_key" and not has_db,
        # Credentials kept in the database, whose rows name their scopes: refresh
        # tokens (JWT) or API keys.
        "scopes_in_db": auth == "jwt" or (auth == "api_key" and has_db),
        # `python -m app.cli`: creating the first admin, or managing API keys.
        "has_cli": auth == "jwt" or (auth == "api_key" and has_db),
        "has_jobs": background != "none",
        # Celery and Taskiq run jobs in worker processes, fed through a broker.
        "has_queue": background in {"celery", "taskiq"},
        "has_tasks": background == "fastapi",
        "is_celery": background == "celery",
        "is_taskiq": background == "taskiq",
        "taskiq_on_db": background == "taskiq" and has_db,
        # Where job status lives: the database; else this process (BackgroundTasks)
        # or Redis (workers need a store every process can read).
        "jobs_in_db": background != "none" and has_db,
        "jobs_in_memory": background == "fastapi" and not has_db,
        "jobs_in_redis": background in {"celery", "taskiq"} and not has_db,
        "jobs_in_store": background != "none" and not has_db,
        # A job's progress, followed live: passed on in the API process, or over
        # the broker (Redis pub/sub, a RabbitMQ topic exchange).
        "job_events_in_redis": background in {"celery", "taskiq"} and broker == "redis",
        "job_events_in_rabbitmq": background in {"celery", "taskiq"}
        and broker == "rabbitmq",
        "is_sqlalchemy": db_library == "sqlalchemy",
        "is_sqlmodel": db_library == "sqlmodel",
        "on_sqlite": has_db and db_engine == "sqlite",
        "on_postgresql": has_db and db_engine == "postgresql",
        "on_mysql": has_db and db_engine == "mysql",
        "on_server": has_db and db_engine in {"postgresql", "mysql"},
        "celery_on_redis": background == "celery" and broker == "redis",
        "celery_on_rabbitmq": background == "celery" and broker == "rabbitmq",
        "taskiq_on_redis": background == "taskiq" and broker == "redis",
        "taskiq_on_rabbitmq": background == "taskiq" and broker == "rabbitmq",
        "uses_redis_client": (background in {"celery", "taskiq"} and broker == "redis")
        or (answers.cache == "redis" and has_db)
        or answers.rate_limit == "redis",
        # /ready has dependencies to check: the database, the broker, the Redis of
        # the cache or the rate limits.
        "has_checks": has_db
        or background in {"celery", "taskiq"}
        or answers.rate_limit == "redis",
        # /ready has a check that can fail without making the service unready: the
        # cache's or the rate limits' Redis (the service works on without it).
        "may_degrade": (answers.cache == "redis" and has_db)
        or answers.rate_limit == "redis",
        # Settings that pin the server to one process (WEB_CONCURRENCY=1): job
        # status, the cache or the rate limits in the process's memory.
        "one_process": (background == "fastapi" and not has_db)
        or (answers.cache == "memory" and has_db)
        or answers.rate_limit == "memory",
        "is_large": layout == "large",
        "has_metrics": answers.metrics,
        "metrics_on_db": answers.metrics and has_db,
        "metrics_on_jobs": answers.metrics and background != "none",
        "metrics_on_queue": answers.metrics and background in {"celery", "taskiq"},
        "has_tracing": answers.tracing,
        "tracing_on_db": answers.tracing and has_db,
        "tracing_on_jobs": answers.tracing and background != "none",
        "tracing_on_celery": answers.tracing and background == "celery",
        "tracing_on_taskiq": answers.tracing and background == "taskiq",
        "has_sentry": answers.sentry,
        "has_kubernetes": answers.kubernetes,
        "has_lambda": answers.aws_lambda,
        "has_offline_docs": answers.offline_docs,
        # Item reads cached (a database is required): in memory, or in Redis.
        "has_cache": answers.cache != "none" and has_db,
        "metrics_on_cache": answers.metrics and answers.cache != "none" and has_db,
        "cache_in_memory": answers.cache == "memory" and has_db,
        "cache_in_redis": answers.cache == "redis" and has_db,
        # Requests limited per client: counted in memory, or in Redis; the strict
        # limit on signing in and registering, with JWT auth.
        "has_rate_limit": answers.rate_limit != "none",
        "ratelimit_in_memory": answers.rate_limit == "memory",
        "ratelimit_in_redis": answers.rate_limit == "redis",
        "ratelimit_on_jwt": answers.rate_limit != "none" and auth == "jwt",
        # The Kubernetes pods cannot start without their Secret: it holds a setting
        # with no working default (the others in it, a token or a DSN, are optional).
        "secrets_required": has_db
        or background in {"celery", "taskiq"}
        or auth != "none",
    }
    mod = module_map(layout)
    job_storage = db_library if has_db else "redis" if flags["has_queue"] else "memory"
    values = {
        "db_library": db_library,
        "job_storage": job_storage,
        "job_events": "memory" if background == "fastapi" else broker,
        "background": background,
        "cache": answers.cache,
        "rate_limit": answers.rate_limit,
    }
    modules: dict[str, list[str]] = {}
    for concept, flag in CONCEPTS:
        if not flags[flag]:
            continue
        key, files = VARIANTS.get(concept, ("", {}))
        # A combination the validators refuse (jwt without a database) has no code
        # for some concepts; the hook still runs for it, before the refusal shows.
        if key and values[key] not in files:
            continue
        partial = partial_path(concept, files[values[key]] if key else None)
        modules.setdefault(mod[concept], []).append(partial)
    packages = {
        ".".join(module.split(".")[:depth])
        for module in modules
        for depth in range(2, module.count(".") + 1)
    }

    features = [
        feature
        for feature, flag in (
            ("auth", "has_jwt"),
            ("users", "has_jwt"),
            ("items", "has_db"),
            ("jobs", "has_jobs"),
        )
        if flags[flag]
    ]
    model_modules = sorted(
        {
            mod[concept]
            for concept, flag in CONCEPTS
            if concept.endswith("_models") and flags[flag] and has_db
        }
    )
    engine = db_engine if has_db else "none"
    db_name = slug.replace("-", "_")
    return {
        **flags,
        "layout": layout,
        "engine": engine,
        "server_engine": engine in {"postgresql", "mysql"},
        "engine_label": ENGINE_LABELS.get(engine, ""),
        "broker_label": {"redis": "Redis", "rabbitmq": "RabbitMQ"}.get(
            broker if flags["has_queue"] else "", ""
        ),
        "worker_label": {"celery": "Celery", "taskiq": "Taskiq"}.get(background, ""),
        # Rows owned by a user (JWT), or by nobody: what the services add for owners.
        "owner": "template/_partials/owner/"
        + ("user" if flags["has_jwt"] else "none")
        + ".jinja",
        # Where the cache keeps item reads, in the README's words.
        "cache_label": {
            "memory": "in the server process's memory",
            "redis": "Redis, shared by every process",
        }.get(answers.cache if has_db else "none", ""),
        # What a cached item read served against an uncached one, in the template's
        # serve benchmark (bench/results/serve.json, the costs rows).
        "cache_cost": {"memory": "2.2 times", "redis": "1.6 times"}.get(
            answers.cache if has_db else "none", ""
        ),
        # How a job's changes reach its followers, in the README's words.
        "job_events_label": {
            "memory": "from the API process that runs the job (`BackgroundTasks`); a "
            "follower connected to another server process sees it at its next refresh",
            "redis": "over Redis pub/sub, on a channel per job on the broker's Redis, "
            "from the worker that runs the job to every API process",
            "rabbitmq": "through RabbitMQ, on the topic exchange `<JOB_QUEUE>.events` "
            "routed by the job's id, from the worker that runs the job to every API "
            "process",
        }.get(values["job_events"] if flags["has_jobs"] else "", ""),
        # A credential header in the README's examples, for the auth answered.
        "auth_example": {
            "jwt": " -H 'Authorization: Bearer <token>'",
            "api_key": " -H 'X-API-Key: <key>'",
        }.get(auth, ""),
        # Where the rate limits are counted, who a client is, and the strict limit
        # on signing in, in the README's words.
        "ratelimit_label": {
            "memory": "in the server process's memory",
            "redis": "in Redis, so the limit holds across every process and pod",
        }.get(answers.rate_limit, ""),
        "ratelimit_client": {
            "jwt": "its bearer token (hashed) if it sends one, else its address",
            "api_key": "its API key (hashed) if it sends one, else its address",
        }.get(auth, "its address"),
        # The rate limits' tests of each kind (tests/test_rate_limit.py).
        # The states of /ready's checks: degraded, where a dependency can fail
        # while the service stays ready (a Redis it works without).
        "check_states": ", ".join(
            f'"{state}"'
            for state in ["ok", "unavailable"]
            + (["degraded"] if flags["may_degrade"] else [])
        ),
        "ratelimit_tests": f"template/_partials/ratelimit/{answers.rate_limit}/"
        "tests.py.jinja",
        # The scheme of the WWW-Authenticate challenges, and the routes no scope
        # guards, in the README's words.
        "auth_scheme": "Bearer" if auth == "jwt" else "APIKey",
        "unscoped_label": (
            "the probes, the docs, signing in and `/users/me`"
            if auth == "jwt"
            else "the probes and the docs"
        ),
        # The header a credential comes in, and what precedes it there.
        "credential_header": "Authorization" if auth == "jwt" else "X-API-Key",
        "credential_prefix": "Bearer " if auth == "jwt" else "",
        "ratelimit_auth_sentence": (
            "Signing in, refreshing and registering are limited per address by "
            "`RATE_LIMIT_AUTH` instead, against password guessing. "
            if auth == "jwt"
            else ""
        ),
        # Item reads through the cache, or straight from the database (the items
        # service and routes).
        "items_cache": "template/_partials/items/cache."
        + ("kept" if flags["has_cache"] else "none")
        + ".jinja",
        # Taskiq's broker on the transport chosen (worker.taskiq.py.jinja).
        "taskiq_broker": f"template/_partials/taskiq/broker.{broker}.jinja",
        # What compose.dev.yaml publishes on 127.0.0.1 for development.
        "dev_services": [
            *(["db"] if flags["on_server"] else []),
            *(["broker"] if flags["has_queue"] else []),
            *(["cache"] if flags["cache_in_redis"] else []),
            *(["ratelimit"] if flags["ratelimit_in_redis"] else []),
        ],
        # What mypy checks (the generated pyproject.toml's [tool.mypy] files).
        "typed_packages": ["app", "tests", *(["migrations"] if has_db else [])],
        "db_name": db_name,
        "broker": broker if flags["has_queue"] else "none",
        # The broker in compose's names (RabbitMQ's guest may not connect remotely):
        # the settings' default, without a password; what .env says, with the
        # BROKER_PASSWORD .env also holds (python-dotenv expands it); and what the
        # containers get, which compose expands, refusing to start without it.
        "broker_url": (
            "redis://127.0.0.1:6379/0"
            if broker == "redis"
            else "amqp://app@127.0.0.1:5672//"
        ),
        # The secret URLs of the Kubernetes manifests' example (k8s/secrets.env.example):
        # the database and the broker by compose's service names.
        "cluster_database_url": database_url(engine, db_name, "db", "change-me"),
        "cluster_broker_url": (
            "redis://:change-me@broker:6379/0"
            if broker == "redis"
            else "amqp://app:change-me@broker:5672//"
        ),
        "env_broker_url": (
            "redis://:${BROKER_PASSWORD}@127.0.0.1:6379/0"
            if broker == "redis"
            else "amqp://app:${BROKER_PASSWORD}@127.0.0.1:5672//"
        ),
        "compose_broker_url": (
            "redis://:${BROKER_PASSWORD:?set it in .env (see .env.example)}"
            "@broker:6379/0"
            if broker == "redis"
            else "amqp://app:${BROKER_PASSWORD:?set it in .env (see .env.example)}"
            "@broker:5672//"
        ),
        "worker_command": (
            ["celery", "-A", "app.worker", "worker", "--loglevel=INFO"]
            if background == "celery"
            else ["python", "-m", "app.worker"]
        ),
        # The scopes migration: the table it adds them to, and what it follows: the
        # keys' table, or the items' (the users' refresh tokens come before), never a
        # jobs' migration, which may come later; with jobs, 0008 joins the branches.
        "scopes_table": "api_keys" if flags["has_api_key"] else "refresh_tokens",
        "scopes_down_revision": "0004" if flags["api_keys_in_db"] else "0002",
        "jobs_head": "0006" if flags["api_keys_in_db"] else "0005",
        # How the token endpoint signs in: the password grant alone, or the client
        # credentials grant too (macros of the same names).
        "grants": "template/_partials/grants/"
        + ("clients" if flags["has_clients"] else "password")
        + "/",
        # The items migration follows the users' (JWT) or starts the history.
        "items_down_revision": "0001" if flags["has_jwt"] else None,
        # How migrations spell the column type of UTCDateTime, and what it imports.
        "timestamp_import": (
            "from sqlalchemy.dialects import mysql\n" if engine == "mysql" else ""
        ),
        "timestamp_type": (
            "mysql.DATETIME(fsp=6)"
            if engine == "mysql"
            else "sa.DateTime(timezone=True)"
        ),
        # What the service connects to in development (the settings' default, without
        # a password, and .env's, with its DB_PASSWORD), and from inside compose.
        "database_url": database_url(engine, db_name, "127.0.0.1"),
        "env_database_url": database_url(
            engine, db_name, "127.0.0.1", "${DB_PASSWORD}"
        ),
        "compose_database_url": database_url(
            engine, db_name, "db", "${DB_PASSWORD:?set it in .env (see .env.example)}"
        ),
        # The idioms of the database library (or of plain Pydantic without one), as
        # macros for the shared partials: template/_partials/library/.
        "library": "template/_partials/library/"
        + ("sqlmodel" if db_library == "sqlmodel" else "sqlalchemy")
        + ".jinja",
        # SQLModel's own base for request and response models, where it is used.
        "schema_base": "SQLModel" if db_library == "sqlmodel" else "BaseModel",
        "async_session_import": (
            "from sqlmodel.ext.asyncio.session import AsyncSession"
            if db_library == "sqlmodel"
            else "from sqlalchemy.ext.asyncio import AsyncSession"
        ),
        "features": features,
        "points": contributions(flags),
        "point_files": POINTS,
        "summary": summary(answers, flags),
        "routers": routers(layout, features),
        # The scopes a credential may carry (the generated scopes module's), and
        # the routes that need one (the generated tests/test_scopes.py calls each).
        "credential_scopes": [
            {
                **scope._asdict(),
                "routes": [
                    f"`{route.method} /api/v1{route.template}`"
                    for flag, route in SCOPED_ROUTES
                    if flags[flag] and route.scope == scope.constant
                ],
            }
            for scope in credential_scopes(flags)
        ],
        "scoped_routes": [
            route._asdict()
            for flag, route in SCOPED_ROUTES
            if flags["has_auth"] and flags[flag]
        ],
        # The routes that take a credential but need no scope (the generated
        # tests/test_scopes.py checks there are no others), as a Python literal.
        "unscoped_routes": (
            '[("GET", "/users/me"), ("POST", "/auth/token")]'
            if flags["has_clients"]
            else '[("GET", "/users/me")]'
            if auth == "jwt"
            else "[]"
        ),
        # What tests/test_scopes.py does for each kind of credential.
        "scopes_tests": "template/_partials/scopes/tests."
        + ("jwt" if auth == "jwt" else "db" if has_db else "listed")
        + ".jinja",
        # The errors every route of a feature may answer with (each route adds its
        # own): 401 where credentials are needed, 503 where a server is.
        "feature_errors": feature_errors(flags),
        # How routes are declared: on the app (small), or on a router per feature.
        "routing": "template/_partials/routing/"
        + ("app.jinja" if layout == "small" else "routers.jinja"),
        "mod": mod,
        "modules": modules,
        "packages": sorted(packages),
        "model_modules": model_modules,
        "service_import": {f: service_ref(layout, f)[0] for f in FEATURES},
        "service_name": {f: service_ref(layout, f)[1] for f in FEATURES},
        "runtime_dependencies": requirements(RUNTIME_DEPENDENCIES, flags),
        "dev_dependencies": requirements(DEV_DEPENDENCIES, flags),
        "py_target": "py" + python.replace(".", ""),
    }


def derive(answers: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the templates need beyond the raw answers (a copy: callers may
    change it)."""
    return dict(_derive(Answers.read(answers)))


class ContextUpdater(ContextHook):
    """Adds the derived values, and fresh secrets for `.env`, to every render context,
    and the functions that lay out route declarations."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.globals.update(
            route_arguments=route_arguments,
            router_arguments=router_arguments,
            route_imports=route_imports,
            user_parameter=user_parameter,
            cluster_settings=cluster_settings,
        )

    def hook(self, context: dict[str, Any]) -> None:
        context.update(derive(context))
        context["generated_secret_key"] = secrets.token_urlsafe(48)
        context["generated_api_key"] = secrets.token_urlsafe(32)
        # The passwords of compose's database (its user, and MySQL's root) and
        # broker, for .env too. Hex: safe in a URL, a shell and a command line (a
        # URL-safe token may start with `--`, which redis-server reads as an option).
        for name in ("db", "db_root", "broker"):
            context[f"generated_{name}_password"] = secrets.token_hex(24)
