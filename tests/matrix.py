"""The answer sets the template is tested with, derived from copier.yml itself.

* ``valid_combinations()``: every combination of the choice questions that the
  questionnaire accepts (questions hidden by ``when`` take their default; combinations a
  validator refuses are left out). The sweep renders and lints each of them.
* ``refused_combinations()``: those a validator refuses, with the validator's message.
* ``covering_set()``: a small set of valid combinations in which every pair of answers
  that can occur together occurs at least once, the default answers first. Each
  variant is installed and runs its own test suite.

Run ``python tests/matrix.py`` to print the covering set's ids, one per line,
``python tests/matrix.py --all`` for every valid combination, or
``python tests/matrix.py --shards N`` for the CI matrix: the covering set split into N
shards, each with the servers its variants need, as JSON.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, StrictUndefined, Template

ROOT = Path(__file__).resolve().parent.parent
COPIER_YML = ROOT / "copier.yml"

Answers = dict[str, str]


@dataclass(frozen=True)
class ChoiceQuestion:
    name: str
    values: tuple[str, ...]
    default: str
    when: str | bool
    validator: str


_JINJA = Environment(
    undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False
)


@cache
def _compiled(template: str) -> Template:
    return _JINJA.from_string(template)


def _render(template: str, answers: Mapping[str, Any]) -> str:
    return _compiled(template).render(**answers).strip()


@cache
def questionnaire() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COPIER_YML.read_text())
    return {name: spec for name, spec in data.items() if not name.startswith("_")}


@cache
def choice_questions() -> tuple[ChoiceQuestion, ...]:
    questions = []
    for name, spec in questionnaire().items():
        if not isinstance(spec, dict) or "choices" not in spec:
            continue
        choices = spec["choices"]
        values = tuple(choices.values() if isinstance(choices, dict) else choices)
        questions.append(
            ChoiceQuestion(
                name=name,
                values=tuple(str(value) for value in values),
                default=str(spec["default"]),
                when=spec.get("when", True),
                validator=spec.get("validator", ""),
            )
        )
    return tuple(questions)


def _asked(question: ChoiceQuestion, answers: Mapping[str, str]) -> bool:
    if isinstance(question.when, bool):
        return question.when
    return _render(question.when, answers).lower() in {"true", "1", "yes"}


@cache
def _all_combinations() -> tuple[tuple[Answers, str], ...]:
    return tuple(_combinations())


def _combinations() -> Iterator[tuple[Answers, str]]:
    """Every distinct answer set, with the first refusal message ("" if accepted)."""
    questions = choice_questions()
    seen: set[tuple[tuple[str, str], ...]] = set()
    for values in itertools.product(*(q.values for q in questions)):
        answers: Answers = {}
        for question, value in zip(questions, values, strict=True):
            asked = _asked(question, answers)
            answers[question.name] = value if asked else question.default
            if not asked and value != question.default:
                break
        else:
            key = tuple(answers.items())
            if key in seen:
                continue
            seen.add(key)
            refusal = next(
                (
                    message
                    for question in questions
                    if question.validator
                    and (message := _render(question.validator, answers))
                ),
                "",
            )
            yield answers, " ".join(refusal.split())


def valid_combinations() -> list[Answers]:
    return [dict(answers) for answers, refusal in _all_combinations() if not refusal]


def refused_combinations() -> list[tuple[Answers, str]]:
    return [
        (dict(answers), refusal) for answers, refusal in _all_combinations() if refusal
    ]


def defaults() -> Answers:
    answers: Answers = {}
    for question in choice_questions():
        answers[question.name] = question.default
    return answers


def copier_data(answers: Mapping[str, str]) -> Answers:
    """The answers to pass to copier: only the questions it will ask."""
    data: Answers = {}
    for question in choice_questions():
        if _asked(question, data | dict(answers)):
            data[question.name] = answers[question.name]
    return data


def _pairs(answers: Mapping[str, str]) -> set[tuple[tuple[str, str], tuple[str, str]]]:
    items = sorted(copier_data(answers).items())
    return set(itertools.combinations(items, 2))


def covering_set() -> list[Answers]:
    """Greedy pairwise cover: deterministic, and always led by the defaults."""
    return [dict(answers) for answers in _covering_set()]


@cache
def _covering_set() -> tuple[Answers, ...]:
    candidates = [(answers, _pairs(answers)) for answers in valid_combinations()]
    uncovered = set().union(*(pairs for _, pairs in candidates))
    chosen = [defaults()]
    uncovered -= _pairs(chosen[0])
    while uncovered:
        best, pairs = max(
            candidates, key=lambda candidate: len(candidate[1] & uncovered)
        )
        chosen.append(best)
        uncovered -= pairs
    return tuple(chosen)


def variant_id(answers: Mapping[str, str]) -> str:
    """A readable id, e.g. ``medium-sqlalchemy-sqlite-jwt-fastapi-py3.12``."""
    data = copier_data(answers)
    parts = [data[q.name] for q in choice_questions() if q.name in data]
    python = parts.pop(0) if "python_version" in data else ""
    return "-".join(parts) + (f"-py{python}" if python else "")


SERVERS = ("postgresql", "mysql", "redis", "rabbitmq")


def servers_for(answers: Mapping[str, str]) -> set[str]:
    """The servers on which a variant's own tests run (see tests/conftest.py)."""
    data = copier_data(answers)
    needed = set()
    if data.get("db_library", "none") != "none":
        needed.add(data["db_engine"])
    if "broker" in data:
        needed.add(data["broker"])
    return needed & set(SERVERS)


def shards(count: int) -> list[list[Answers]]:
    """The covering set in ``count`` shards of near-equal size. Variants that need the
    same servers are kept together, so a shard starts few service containers."""
    ordered = sorted(
        covering_set(),
        key=lambda answers: (
            [server in servers_for(answers) for server in SERVERS],
            variant_id(answers),
        ),
    )
    size = math.ceil(len(ordered) / count)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def shard(spec: str) -> list[Answers]:
    """The variants of shard ``"i/n"`` (1-based), as the CI matrix names it."""
    index, count = (int(part) for part in spec.split("/"))
    planned = shards(count)
    if not 1 <= index <= len(planned):
        raise ValueError(f"shard {spec}: there are {len(planned)} shards")
    return planned[index - 1]


def shard_matrix(count: int) -> dict[str, list[dict[str, Any]]]:
    """The GitHub Actions matrix: one entry per shard, with a flag per server."""
    planned = shards(count)
    include = []
    for index, variants in enumerate(planned, start=1):
        needed = set().union(*(servers_for(answers) for answers in variants))
        entry: dict[str, Any] = {
            "shard": f"{index}/{len(planned)}",
            "variants": " ".join(variant_id(answers) for answers in variants),
        }
        entry.update({server: server in needed for server in SERVERS})
        include.append(entry)
    return {"include": include}


if __name__ == "__main__":
    if "--shards" in sys.argv:
        count = int(sys.argv[sys.argv.index("--shards") + 1])
        print(json.dumps(shard_matrix(count), separators=(",", ":")))
    else:
        chosen = valid_combinations() if "--all" in sys.argv else covering_set()
        for answers in chosen:
            print(variant_id(answers))
