"""Promises the repository makes about itself: the README's quick start and CI."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, tool_env


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README's quick start has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands_render_then_test() -> None:
    render_command, test_command = quick_start_commands()

    assert "copier copy" in render_command
    assert "--defaults" in render_command
    assert test_command.startswith("python3 -m uv run pytest")


def test_ci_runs_the_readme_test_command() -> None:
    _, test_command = quick_start_commands()
    script = (ROOT / ".ci" / "run").read_text().splitlines()

    assert test_command in script


def test_readme_render_command_renders_the_defaults_with_only_copier(
    tmp_path: Path,
) -> None:
    render_command, _ = quick_start_commands()
    # Everything after installing uv, into a scratch directory instead of ../, with
    # a fresh environment of its own: what a newcomer's first command installs.
    command = render_command.split(" && ", 1)[1].replace(
        "../my-service", shlex.quote(str(tmp_path / "my-service"))
    )
    environment = tmp_path / "venv"

    completed = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=tool_env() | {"UV_PROJECT_ENVIRONMENT": str(environment)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    answers = (tmp_path / "my-service" / ".copier-answers.yml").read_text()
    assert f"_src_path: {ROOT}" in answers  # absolute, so `copier update` works later
    assert (tmp_path / "my-service" / "app" / "main.py").exists()
    installed = {
        path.name.split("-", 1)[0].lower()
        for path in environment.glob("lib/python*/site-packages/*.dist-info")
    }
    assert {"copier", "copier_template_extensions"} <= installed
    # Rendering needs neither the test tools nor the docs toolchain.
    assert not {"pytest", "mkdocs", "mkdocs_material", "mypy", "zizmor"} & installed


def test_the_templates_own_code_is_lint_free() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    for command in (["check"], ["format", "--check"]):
        completed = subprocess.run(
            [ruff, *command, "--no-cache", "extensions", "tests"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr


# What Windows refuses in a file name, and the names it reserves.
WINDOWS_FORBIDDEN = set('<>:"|?*\\')
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {
    f"{name}{n}" for name in ("COM", "LPT") for n in range(1, 10)
}
# A checkout path of up to 100 characters still leaves every path under Windows's
# 260.
LONGEST_PATH = 160


def test_every_tracked_path_checks_out_on_windows() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    paths = [path for path in listed.split("\0") if path]

    for path in paths:
        assert len(path) <= LONGEST_PATH, f"{len(path)} characters: {path}"
        for part in path.split("/"):
            assert not WINDOWS_FORBIDDEN & set(part), path
            assert not part.endswith((" ", ".")), path
            assert part.split(".")[0].upper() not in WINDOWS_RESERVED, path
    # Windows file systems ignore case: two names may not differ by case only.
    assert len({path.lower() for path in paths}) == len(paths)


# Code that differs by an answer lives in options, variant files and macro files,
# not in branches of shared partials: no template file holds more than one
# conditional (an `if` or `elif` in a Jinja tag or expression) per 15 lines. The
# exceptions branch on something else: the line length of a call (call.jinja) and
# whether an option defines a macro (points.jinja).
LINES_PER_CONDITIONAL = 15
CONDITIONAL_HELPERS = {"_partials/routing/call.jinja", "_partials/points.jinja"}


def conditionals(text: str) -> int:
    tags = re.findall(r"\{%-?(.*?)-?%\}|\{\{(.*?)\}\}", text, re.DOTALL)
    return sum(len(re.findall(r"\b(?:el)?if\b", block + expr)) for block, expr in tags)


def test_conditionals_count_what_the_rule_means() -> None:
    text = '{% if a %}x{% elif b %}y{% endif %}{{ "c" if d else "" }}{% set e = 1 %}'
    assert conditionals(text) == 3
    assert conditionals("if x:\n    pass  # Python, not Jinja") == 0


def test_no_template_file_branches_more_than_once_per_15_lines() -> None:
    template = ROOT / "template"
    crowded = {}
    for path in template.rglob("*"):
        name = path.relative_to(template).as_posix()
        if not path.is_file() or name in CONDITIONAL_HELPERS:
            continue
        text = path.read_text(encoding="utf-8")
        count, lines = conditionals(text), text.count("\n") + 1
        if count > 1 and count * LINES_PER_CONDITIONAL > lines:
            crowded[name] = f"{count} in {lines} lines"
    assert not crowded, crowded
