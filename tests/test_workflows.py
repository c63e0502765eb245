"""The template's own CI: valid workflows, pinned actions, and jobs that add up to
the suite `.ci/run` runs."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run
from tests.matrix import (
    SERVERS,
    covering_set,
    expected_seconds,
    servers_for,
    shard_matrix,
    variant_id,
)

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
TOOLS = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def workflow_steps() -> list[tuple[str, dict[str, Any]]]:
    steps = []
    for path in WORKFLOWS:
        workflow = yaml.safe_load(path.read_text())
        for name, job in workflow["jobs"].items():
            steps += [(f"{path.name}:{name}", step) for step in job.get("steps", [])]
    return steps


def test_there_are_workflows() -> None:
    assert WORKFLOWS


@pytest.mark.parametrize(
    "validator",
    [
        ["actionlint"],
        ["zizmor", "--offline", "--no-progress"],
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows"],
    ],
    ids=lambda validator: validator[0],
)
def test_workflows_pass_the_validators(validator: list[str]) -> None:
    run(TOOLS / validator[0], *validator[1:], *WORKFLOWS, cwd=ROOT)


def test_every_action_is_pinned_to_a_commit_with_its_tag_beside_it() -> None:
    uses = [step["uses"] for _, step in workflow_steps() if "uses" in step]
    assert uses
    assert all(PINNED.match(ref) for ref in uses), uses
    text = "\n".join(path.read_text() for path in WORKFLOWS)
    for ref in set(uses):
        assert re.search(rf"{re.escape(ref)} # v\d", text), f"{ref} names no tag"


def test_the_template_update_workflow_runs_the_copier_this_repository_pins() -> None:
    workflow = ROOT / "template" / ".github" / "workflows" / "template-update.yml"
    (job,) = yaml.safe_load(workflow.read_text())["jobs"].values()
    pinned = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"][
            "template"
        ]
    )
    assert {job["env"]["COPIER"], job["env"]["EXTENSIONS"]} <= pinned


def selected_test_files(command: str) -> list[str]:
    """The test files a `pytest` command line runs."""
    words = shlex.split(command)
    words = words[words.index("pytest") + 1 :]
    paths = [word for word in words if word.startswith("tests/")]
    ignored = {word.split("=", 1)[1] for word in words if word.startswith("--ignore=")}
    everything = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
    )
    return paths or [path for path in everything if path not in ignored]


def test_the_jobs_split_the_whole_suite_once() -> None:
    # Steps in another working directory run a rendered service's suite, not ours.
    commands = [
        " ".join(step["run"].split())
        for _, step in workflow_steps()
        if "pytest" in step.get("run", "") and "working-directory" not in step
    ]
    selected = [path for command in commands for path in selected_test_files(command)]
    everything = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "tests").glob("test_*.py")
    )

    assert sorted(selected) == everything
    # .ci/run runs the whole suite in one go, with README.md's command.
    assert "uv run pytest -n auto\n" in (ROOT / ".ci" / "run").read_text()


def test_the_shards_hold_each_variant_once_with_the_servers_it_needs() -> None:
    matrix = shard_matrix(4)["include"]
    by_id = {variant_id(answers): answers for answers in covering_set()}

    sharded = [name for entry in matrix for name in entry["variants"].split()]
    assert sorted(sharded) == sorted(by_id)
    # Balanced by expected time: no shard waits for another by more than its longest
    # variant.
    times = [entry["expected_seconds"] for entry in matrix]
    longest = max(expected_seconds(answers) for answers in covering_set())
    assert max(times) - min(times) <= longest + 1
    for entry in matrix:
        needed = set().union(
            *(servers_for(by_id[name]) for name in entry["variants"].split())
        )
        assert {server for server in SERVERS if entry[server]} == needed


def test_the_matrix_command_prints_the_shards() -> None:
    printed = run(sys.executable, "tests/matrix.py", "--shards", "4", cwd=ROOT)

    assert yaml.safe_load(printed) == shard_matrix(4)
