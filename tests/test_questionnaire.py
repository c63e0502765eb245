"""The questionnaire: what it accepts, what it refuses and how, and the secret."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, render, tool_env
from tests.matrix import copier_data, defaults, refused_combinations, variant_id

API_KEY_WITH_NOTHING_TO_PROTECT = (
    "auth=api_key protects the items and jobs routes, but with db_library=none and "
    "background_tasks=none there are none: choose a database or background jobs, "
    "or auth=none."
)
RABBITMQ_WITHOUT_DB = (
    "broker=rabbitmq carries jobs but keeps no results, and with db_library=none "
    "there is no database to keep the jobs' status either: choose broker=redis, or a "
    "db_library."
)
JWT_WITHOUT_DB = (
    "auth=jwt keeps users in the database, but db_library=none has none: "
    "choose db_library=sqlalchemy or sqlmodel, or auth=none."
)
KUBERNETES_ON_SQLITE = (
    "kubernetes=true runs the API in several pods, which cannot share one SQLite "
    "file: choose db_engine=postgresql or mysql, or kubernetes=false."
)
KUBERNETES_JOBS_IN_MEMORY = (
    "kubernetes=true runs the API in several pods, and background_tasks=fastapi "
    "without a database keeps each job's status in the memory of the pod that ran "
    "it: choose a db_library, background_tasks=celery or taskiq, or kubernetes=false."
)

LAMBDA_WITHOUT_SERVER = (
    "aws_lambda=true serves from short-lived execution environments that share "
    "nothing, so the data needs a database server: choose db_engine=postgresql or "
    "mysql, or aws_lambda=false."
)
LAMBDA_WITH_BACKGROUND_TASKS = (
    "aws_lambda=true answers an event only once the app is done with it, so a "
    "BackgroundTasks job would hold up its request: choose background_tasks=celery, "
    "taskiq or none, or aws_lambda=false."
)


def test_defaults_render_the_documented_answers(copie: Any) -> None:
    result = copie.copy()

    assert result.exit_code == 0, result.exception
    answers = yaml.safe_load((result.project_dir / ".copier-answers.yml").read_text())
    # Only what was asked is recorded: `broker` waits for a worker tool.
    asked = copier_data(defaults())
    assert {key: answers[key] for key in asked} == asked
    assert "broker" not in answers
    assert answers["project_name"] == "My Service"
    assert answers["project_slug"] == "my-service"


def test_slug_is_derived_from_the_name(copie: Any) -> None:
    result = copie.copy(extra_answers={"project_name": "Order Service (EU) v2"})

    assert result.exit_code == 0, result.exception
    assert result.answers["project_slug"] == "order-service-eu-v2"
    assert (
        'name = "order-service-eu-v2"'
        in (result.project_dir / "pyproject.toml").read_text()
    )


BAD_TEXT_ANSWERS = [
    ({"project_name": "  "}, "The project name cannot be empty."),
    ({"project_slug": "My_Service"}, '"My_Service" is not a kebab-case name'),
    ({"project_slug": "9lives"}, '"9lives" is not a kebab-case name'),
    ({"author_email": "nobody"}, '"nobody" is not an email address'),
]
CACHE_WITHOUT_DB = (
    "cache=redis caches item reads, but db_library=none has no items: choose a "
    "db_library, or cache=none."
)
CACHE_IN_MEMORY_ON_PODS = (
    "cache=memory keeps a cache in each process, so after a write the other pods or "
    "Lambda environments would go on serving the old item: choose cache=redis, or "
    "cache=none."
)
RATE_LIMIT_IN_MEMORY_ON_PODS = (
    "rate_limit=memory counts in each process, so every pod or Lambda environment "
    "would let a client through the whole limit again: choose rate_limit=redis, or "
    "rate_limit=none."
)
ON_POSTGRESQL = {"db_engine": "postgresql"}
NO_JOBS = {"background_tasks": "none"}
# Feature answers that the architecture they are asked with cannot run.
REFUSED_FEATURES = [
    ({"cache": "redis", "db_library": "none", "auth": "none"}, CACHE_WITHOUT_DB),
    (
        {"cache": "memory", "kubernetes": True} | ON_POSTGRESQL,
        CACHE_IN_MEMORY_ON_PODS,
    ),
    (
        {"rate_limit": "memory", "kubernetes": True} | ON_POSTGRESQL,
        RATE_LIMIT_IN_MEMORY_ON_PODS,
    ),
    (
        {"rate_limit": "memory", "aws_lambda": True} | ON_POSTGRESQL | NO_JOBS,
        RATE_LIMIT_IN_MEMORY_ON_PODS,
    ),
    ({"kubernetes": True}, KUBERNETES_ON_SQLITE),
    (
        {"kubernetes": True, "db_library": "none", "auth": "none"},
        KUBERNETES_JOBS_IN_MEMORY,
    ),
    ({"aws_lambda": True}, LAMBDA_WITHOUT_SERVER),
    (
        {"aws_lambda": True, "db_library": "none", "auth": "none"},
        LAMBDA_WITHOUT_SERVER,
    ),
    ({"aws_lambda": True, "db_engine": "postgresql"}, LAMBDA_WITH_BACKGROUND_TASKS),
]
REFUSALS = refused_combinations() + REFUSED_FEATURES + BAD_TEXT_ANSWERS


@pytest.mark.parametrize(
    ("answers", "message"),
    REFUSALS,
    ids=[
        variant_id(a)
        if "project_size" in a
        else ",".join(f"{k}={v}" for k, v in a.items())
        for a, _ in REFUSALS
    ],
)
def test_each_refused_answer_fails_with_its_sentence(
    copie: Any, answers: dict[str, str], message: str
) -> None:
    result = copie.copy(extra_answers=answers)

    assert result.exit_code != 0
    assert message in " ".join(str(result.exception).split())


def test_refusals_say_what_conflicts_and_the_fix() -> None:
    # Pins the wording users see, independently of copier.yml's own text.
    sentences = {message for _, message in refused_combinations()}
    assert sentences == {
        JWT_WITHOUT_DB,
        API_KEY_WITH_NOTHING_TO_PROTECT,
        RABBITMQ_WITHOUT_DB,
    }


def test_a_value_the_template_does_not_offer_is_refused(copie: Any) -> None:
    result = copie.copy(extra_answers={"auth": "oauth1"})

    assert result.exit_code != 0


def test_refusal_through_the_cli_with_data_writes_nothing(tmp_path: Path) -> None:
    destination = tmp_path / "service"
    completed = subprocess.run(
        [
            Path(sys.executable).parent / "copier",
            "copy",
            "--trust",
            "--defaults",
            "--vcs-ref=HEAD",
            "--data=auth=jwt",
            "--data=db_library=none",
            ROOT,
            destination,
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
    )

    assert completed.returncode != 0
    assert JWT_WITHOUT_DB in " ".join((completed.stdout + completed.stderr).split())
    assert not destination.exists() or not any(destination.iterdir())


# The secrets each answer set gets, and the fewest random bytes in each.
SECRETS = [
    ({}, {"SECRET_KEY": 32}),
    (
        {"db_engine": "postgresql", "background_tasks": "taskiq", "broker": "rabbitmq"},
        {"SECRET_KEY": 32, "DB_PASSWORD": 24, "BROKER_PASSWORD": 24},
    ),
    (
        {"db_engine": "mysql", "background_tasks": "celery", "broker": "redis"},
        {
            "SECRET_KEY": 32,
            "DB_PASSWORD": 24,
            "DB_ROOT_PASSWORD": 24,
            "BROKER_PASSWORD": 24,
        },
    ),
]


@pytest.mark.parametrize(
    ("answers", "expected"), SECRETS, ids=["defaults", "postgresql", "mysql"]
)
def test_secrets_are_only_in_the_git_ignored_env_file(
    tmp_path: Path, answers: dict[str, str], expected: dict[str, int]
) -> None:
    project = render(tmp_path / "service", answers)

    env = dict(
        line.split("=", 1)
        for line in (project / ".env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    secrets = {
        name: value
        for name, value in env.items()
        if name == "SECRET_KEY" or name.endswith("PASSWORD")
    }
    assert set(secrets) == set(expected)
    assert ".env" in (project / ".gitignore").read_text().splitlines()
    example = (project / ".env.example").read_text()
    tracked = [
        path for path in project.rglob("*") if path.is_file() and path.name != ".env"
    ]
    for name, secret in secrets.items():
        # Hex for the passwords, URL-safe base64 for the key: each fits in a URL.
        assert re.fullmatch(r"[A-Za-z0-9_-]+", secret), name
        bits = 4 if name.endswith("PASSWORD") else 6
        assert len(secret) * bits >= expected[name] * 8, name
        assert f"{name}=change-me" in example, name
        assert not [p for p in tracked if secret in p.read_text(errors="ignore")], name


def test_every_render_gets_its_own_secret(tmp_path: Path) -> None:
    first = render(tmp_path / "one", {})
    second = render(tmp_path / "two", {})

    assert (first / ".env").read_text() != (second / ".env").read_text()


def test_a_settings_api_key_is_generated_into_env_only(tmp_path: Path) -> None:
    project = render(tmp_path / "service", {"auth": "api_key", "db_library": "none"})

    key = (project / ".env").read_text().split('API_KEYS=["', 1)[1].split('"')[0]
    assert len(key) >= 43
    tracked = [p for p in project.rglob("*") if p.is_file() and p.name != ".env"]
    assert not [p for p in tracked if key in p.read_text(errors="ignore")]


def test_no_secret_without_jwt(tmp_path: Path) -> None:
    project = render(tmp_path / "service", {"auth": "none"})

    assert "SECRET_KEY" not in (project / ".env").read_text()
    assert "SECRET_KEY" not in (project / ".env.example").read_text()
