"""The answer sets the template is tested with, derived from copier.yml itself.

Every question with ``choices`` or of ``type: bool`` is in the matrix. The six
*architecture* questions (``ARCHITECTURE``) pick the layout and the stack; every other
one is a *feature* question, which adds code at a few known points. From the
questionnaire (values, defaults, ``when`` and validators, rendered with Jinja as
Copier renders them) this module derives:

* ``architecture_set()``: every combination of the architecture questions that the
  questionnaire accepts, with every feature at its default;
* ``feature_set()``: every value of every feature question, each on the default
  architecture (or, where a validator refuses it there, on the nearest accepted one);
* ``triple_set()``: a 3-wise covering array over all questions: every triple of
  answers that can occur together occurs in at least one of its answer sets;
* ``sweep_set()``: the union of those three, which the sweep renders and lints;
* ``covering_set()``: a pairwise covering array over all questions, the defaults
  first: the variants, each installed and run through its own checks;
* ``refused_combinations()``: the architecture combinations a validator refuses, with
  the validator's sentence.

Questions hidden by ``when`` take their default and are not passed to Copier, so a
triple only counts where its questions are asked. The arrays are built greedily and
deterministically: the same copier.yml always gives the same sets.

Run ``python tests/matrix.py`` to print every set, ``--sweep`` or ``--variants`` for
one set's ids, ``--all`` for every valid architecture combination on every Python
version, ``--shards N`` for the CI matrix of the variants as JSON, or ``--plan N`` for
the same as a table with each shard's expected time (from the variants benchmark).
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, StrictUndefined, Template, meta

ROOT = Path(__file__).resolve().parent.parent
COPIER_YML = ROOT / "copier.yml"

# The questions that decide the layout and the stack; every other question with
# choices (or yes/no) is a feature question.
ARCHITECTURE = (
    "project_size",
    "db_library",
    "db_engine",
    "auth",
    "background_tasks",
    "broker",
)
# Shown in every variant id, whatever its value: the Python a variant installs.
ALWAYS_IN_ID = {"python_version": "py{}"}

Value = str | bool
Answers = dict[str, Value]
# One answer: a question's name and its value.
Answer = tuple[str, Value]


@dataclass(frozen=True)
class Question:
    name: str
    values: tuple[Value, ...]
    default: Value
    when: str | bool
    validator: str

    @property
    def is_architecture(self) -> bool:
        return self.name in ARCHITECTURE


_JINJA = Environment(
    undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False
)


@cache
def _compiled(template: str) -> Template:
    return _JINJA.from_string(template)


@cache
def _names_in(template: str) -> frozenset[str]:
    """The answers a `when` or a validator reads."""
    return frozenset(meta.find_undeclared_variables(_JINJA.parse(template)))


def _render(template: str, answers: Mapping[str, Any]) -> str:
    return _compiled(template).render(**answers).strip()


@cache
def questionnaire() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COPIER_YML.read_text())
    return {name: spec for name, spec in data.items() if not name.startswith("_")}


def _is_matrix_question(spec: object) -> bool:
    return isinstance(spec, dict) and ("choices" in spec or spec.get("type") == "bool")


@cache
def questions() -> tuple[Question, ...]:
    """Every question the matrix varies, in the questionnaire's order."""
    found = []
    for name, spec in questionnaire().items():
        if not _is_matrix_question(spec):
            continue
        if spec.get("multiselect"):
            raise NotImplementedError(
                f"{name}: multiselect questions are not in the test matrix yet; "
                "teach tests/matrix.py to vary them before adding one."
            )
        if spec.get("type") == "bool":
            values: tuple[Value, ...] = (True, False)
            default: Value = bool(spec.get("default", False))
        else:
            choices = spec["choices"]
            listed = choices.values() if isinstance(choices, dict) else choices
            values = tuple(str(value) for value in listed)
            default = str(spec["default"])
        found.append(
            Question(
                name=name,
                values=values,
                default=default,
                when=spec.get("when", True),
                validator=spec.get("validator", ""),
            )
        )
    unknown = set(ARCHITECTURE) - {question.name for question in found}
    if unknown:
        raise ValueError(f"ARCHITECTURE names questions copier.yml lacks: {unknown}")
    return tuple(found)


def architecture_questions() -> tuple[Question, ...]:
    return tuple(q for q in questions() if q.is_architecture)


def feature_questions() -> tuple[Question, ...]:
    return tuple(q for q in questions() if not q.is_architecture)


def _asked(question: Question, answers: Mapping[str, Value]) -> bool:
    if isinstance(question.when, bool):
        return question.when
    return _render(question.when, answers).lower() in {"true", "1", "yes"}


def _refusal(question: Question, answers: Mapping[str, Value]) -> str:
    if not question.validator:
        return ""
    return " ".join(_render(question.validator, answers).split())


def defaults() -> Answers:
    return {question.name: question.default for question in questions()}


# --- Searching the questionnaire ---------------------------------------------------
#
# An answer set is built in the questionnaire's order, as Copier asks: a question
# hidden by `when` takes its default, and a validator is checked as soon as every
# answer it reads is known. `required` holds answers the set must contain *asked*.


@cache
def _checkpoints() -> tuple[tuple[Question, ...], ...]:
    """For each position in the questionnaire, the validators that can be decided
    once the questions up to it are answered, and not before."""
    order = {question.name: index for index, question in enumerate(questions())}
    ready: list[list[Question]] = [[] for _ in questions()]
    for index, question in enumerate(questions()):
        if question.validator:
            reads = _names_in(question.validator) & order.keys()
            ready[max([index, *(order[name] for name in reads)])].append(question)
    return tuple(tuple(checks) for checks in ready)


@cache
def _reads_from() -> tuple[frozenset[str], ...]:
    """For each position, the answers that a `when` or validator from there on reads:
    all that matters of the answers before it for how the rest can be answered."""
    reads: set[str] = set()
    suffixes = []
    for index in reversed(range(len(questions()))):
        question = questions()[index]
        if isinstance(question.when, str):
            reads |= _names_in(question.when)
        for check in _checkpoints()[index]:
            reads |= _names_in(check.validator) | {check.name}
        suffixes.append(frozenset(reads))
    return tuple(reversed(suffixes))


def _complete(
    required: Mapping[str, Value], prefer: Mapping[str, Value] | None = None
) -> Answers | None:
    """The first accepted answer set (every question answered, hidden ones at their
    default) that asks ``required`` with those values; ``prefer`` (else the default)
    is tried first for every other question. None if there is none."""
    prefer = prefer or {}
    chosen = questions()
    dead_ends: set[tuple[int, tuple[Answer, ...]]] = set()

    def extend(index: int, answers: Answers) -> Answers | None:
        if index == len(chosen):
            return dict(answers)
        state = (
            index,
            tuple(
                (name, answers[name])
                for name in sorted(_reads_from()[index])
                if name in answers
            ),
        )
        if state in dead_ends:
            return None
        question = chosen[index]
        if not _asked(question, answers):
            if question.name in required:
                dead_ends.add(state)
                return None
            options: tuple[Value, ...] = (question.default,)
        elif question.name in required:
            options = (required[question.name],)
        else:
            first = prefer.get(question.name, question.default)
            options = (first, *(v for v in question.values if v != first))
        for value in options:
            answers[question.name] = value
            if not any(_refusal(check, answers) for check in _checkpoints()[index]):
                found = extend(index + 1, answers)
                if found is not None:
                    return found
            del answers[question.name]
        dead_ends.add(state)
        return None

    return extend(0, {})


@cache
def _feasible(required: frozenset[Answer]) -> bool:
    return _complete(dict(required)) is not None


def effective(answers: Mapping[str, Value]) -> Answers:
    """Every question's answer as Copier sees it: hidden questions at their default."""
    full = defaults() | dict(answers)
    seen: Answers = {}
    for question in questions():
        asked = _asked(question, seen)
        seen[question.name] = full[question.name] if asked else question.default
    return seen


def asked_answers(answers: Mapping[str, Value]) -> Answers:
    """The answers Copier asks for, in the questionnaire's order (hidden ones left
    out): what is passed to Copier as data, and what coverage counts."""
    seen = effective(answers)
    return {
        question.name: seen[question.name]
        for question in questions()
        if _asked(question, seen)
    }


def copier_data(answers: Mapping[str, Value]) -> Answers:
    """The answers to pass to copier: only the questions it will ask."""
    return asked_answers(answers)


def refusal(answers: Mapping[str, Value]) -> str:
    """The first validator sentence that refuses ``answers`` ("" if accepted)."""
    seen = effective(answers)
    return next(
        (message for question in questions() if (message := _refusal(question, seen))),
        "",
    )


# --- The sets -----------------------------------------------------------------------


def _unique(answer_sets: Iterable[Answers]) -> list[Answers]:
    seen: set[tuple[Answer, ...]] = set()
    kept = []
    for answers in answer_sets:
        key = tuple(sorted(asked_answers(answers).items(), key=str))
        if key not in seen:
            seen.add(key)
            kept.append(answers)
    return kept


def _architecture_products(
    fixed: Mapping[str, Value],
) -> Iterator[tuple[Answers, str]]:
    """Every distinct answer set over the architecture questions (``fixed`` holds the
    rest), with its refusal ("" if accepted)."""
    arch = architecture_questions()
    seen: set[tuple[Answer, ...]] = set()
    for values in itertools.product(*(q.values for q in arch)):
        answers = dict(fixed) | {q.name: v for q, v in zip(arch, values, strict=True)}
        data = asked_answers(answers)
        # A hidden question holds its default: skip the copies with another value.
        if any(answers[q.name] != data.get(q.name, q.default) for q in arch):
            continue
        key = tuple(sorted(data.items(), key=str))
        if key in seen:
            continue
        seen.add(key)
        yield defaults() | data, refusal(answers)


@cache
def _architecture_set() -> tuple[Answers, ...]:
    features = {q.name: q.default for q in feature_questions()}
    return tuple(a for a, refused in _architecture_products(features) if not refused)


def architecture_set() -> list[Answers]:
    """Every accepted architecture, every feature at its default."""
    return [dict(answers) for answers in _architecture_set()]


def refused_combinations() -> list[tuple[Answers, str]]:
    """Architecture combinations a validator refuses (features at their defaults)."""
    features = {q.name: q.default for q in feature_questions()}
    return [
        (answers, refused)
        for answers, refused in _architecture_products(features)
        if refused
    ]


def valid_combinations() -> list[Answers]:
    """Every accepted architecture on every Python version (the docs' count)."""
    pythons = next(q for q in questions() if q.name == "python_version").values
    return [
        answers | {"python_version": python}
        for python in pythons
        for answers in architecture_set()
    ]


@cache
def _feature_set() -> tuple[Answers, ...]:
    chosen = []
    for question in feature_questions():
        for value in question.values:
            if value == question.default:
                continue
            found = _complete({question.name: value})
            if found is None:
                raise ValueError(f"{question.name}={value!r} is refused everywhere")
            chosen.append(found)
    return tuple(chosen)


def feature_set() -> list[Answers]:
    """Each feature value on the default architecture, or the nearest that takes it."""
    return [dict(answers) for answers in _feature_set()]


def _tuples(answers: Mapping[str, Value], strength: int) -> set[tuple[Answer, ...]]:
    items = sorted(asked_answers(answers).items(), key=str)
    return set(itertools.combinations(items, strength))


@cache
def _universe(strength: int) -> frozenset[tuple[Answer, ...]]:
    """Every ``strength``-tuple of answers that occurs in some accepted answer set."""
    found = set()
    for group in itertools.combinations(questions(), strength):
        for values in itertools.product(*(q.values for q in group)):
            answers = tuple(
                sorted(
                    ((q.name, v) for q, v in zip(group, values, strict=True)), key=str
                )
            )
            if _feasible(frozenset(answers)):
                found.add(answers)
    return frozenset(found)


@cache
def _covering_array(strength: int) -> tuple[Answers, ...]:
    """A covering array of ``strength``, led by the defaults.

    Each new answer set starts from the first uncovered tuple (in sorted order), then
    answers the other questions one by one, each with the value that covers the most
    uncovered tuples among the answers chosen so far and can still be completed into
    an accepted answer set.
    """
    rows = [defaults()]
    uncovered = set(_universe(strength)) - _tuples(rows[0], strength)
    while uncovered:
        target = min(uncovered, key=str)
        required: Answers = dict(target)
        for question in questions():
            if question.name in required:
                continue
            best: tuple[int, int] | None = None
            pick: Value | None = None
            for rank, value in enumerate(
                sorted(question.values, key=lambda v: v != question.default)
            ):
                trial = required | {question.name: value}
                if not _feasible(frozenset(trial.items())):
                    continue
                gain = len(_tuples_within(trial, strength) & uncovered)
                if best is None or (gain, -rank) > best:
                    best, pick = (gain, -rank), value
            if pick is not None:
                required[question.name] = pick
        row = _complete(required)
        assert row is not None, f"no answer set completes {required}"
        rows.append(row)
        covered = _tuples(row, strength)
        assert target in covered, f"{target} not covered by {row}"
        uncovered -= covered
    return tuple(rows)


def _tuples_within(
    answers: Mapping[str, Value], strength: int
) -> set[tuple[Answer, ...]]:
    """The tuples among ``answers`` (which need not be a whole answer set)."""
    items = sorted(answers.items(), key=str)
    return set(itertools.combinations(items, strength))


def triple_set() -> list[Answers]:
    """A 3-wise covering array over all questions."""
    return [dict(answers) for answers in _covering_array(3)]


def covering_set() -> list[Answers]:
    """A pairwise covering array over all questions, the defaults first."""
    return [dict(answers) for answers in _covering_array(2)]


def sweep_set() -> list[Answers]:
    """What the sweep renders: the architecture, feature and 3-wise sets, once each."""
    return _unique([*architecture_set(), *feature_set(), *triple_set()])


def variant_id(answers: Mapping[str, Value]) -> str:
    """A readable id, e.g. ``medium-sqlalchemy-sqlite-jwt-fastapi-py3.12``: the
    architecture answers that are asked, then the features (those of
    ``ALWAYS_IN_ID`` always, the others where they differ from the default)."""
    data = asked_answers(answers)
    parts = [str(data[q.name]) for q in architecture_questions() if q.name in data]
    for question in feature_questions():
        if question.name not in data:
            continue
        value = data[question.name]
        if question.name in ALWAYS_IN_ID:
            parts.append(ALWAYS_IN_ID[question.name].format(value))
        elif value != question.default:
            if isinstance(value, bool):
                parts.append(question.name if value else f"no-{question.name}")
            else:
                parts.append(f"{question.name}-{value}")
    return "-".join(parts)


SERVERS = ("postgresql", "mysql", "redis", "rabbitmq")


def servers_for(answers: Mapping[str, Value]) -> set[str]:
    """The servers on which a variant's own tests run (see tests/conftest.py)."""
    data = asked_answers(answers)
    needed = set()
    if data.get("db_library", "none") != "none":
        needed.add(str(data["db_engine"]))
    if "broker" in data:
        needed.add(str(data["broker"]))
    return needed & set(SERVERS)


VARIANT_TIMES = ROOT / "bench" / "results" / "variants.json"


@cache
def _measured_seconds() -> dict[str, float]:
    """Each variant's wall time in the last full variants benchmark."""
    if not VARIANT_TIMES.exists():
        return {}
    figures = json.loads(VARIANT_TIMES.read_text()).get("figures", {})
    return {str(k): float(v) for k, v in figures.get("seconds_per_variant", {}).items()}


def expected_seconds(answers: Mapping[str, Value]) -> float:
    """How long a variant takes: measured, or for one not measured yet the median of
    those with the same servers (or of all)."""
    measured = _measured_seconds()
    name = variant_id(answers)
    if name in measured:
        return measured[name]
    alike = [
        seconds
        for other in covering_set()
        if (seconds := measured.get(variant_id(other))) is not None
        and servers_for(other) == servers_for(answers)
    ]
    known = alike or list(measured.values())
    return statistics.median(known) if known else 30.0


def shards(count: int) -> list[list[Answers]]:
    """The covering set in ``count`` shards that take about as long each: the longest
    variant first, each into the shard that is done soonest."""
    planned: list[list[Answers]] = [[] for _ in range(count)]
    totals = [0.0] * count
    for answers in sorted(
        covering_set(), key=lambda a: (-expected_seconds(a), variant_id(a))
    ):
        soonest = totals.index(min(totals))
        planned[soonest].append(answers)
        totals[soonest] += expected_seconds(answers)
    return [sorted(shard, key=variant_id) for shard in planned if shard]


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
            "expected_seconds": round(sum(map(expected_seconds, variants))),
        }
        entry.update({server: server in needed for server in SERVERS})
        include.append(entry)
    return {"include": include}


def clear_caches() -> None:
    """Forget everything derived from the questionnaire (tests swap it)."""
    for function in globals().values():
        if hasattr(function, "cache_clear"):
            function.cache_clear()


def _print_set(title: str, answer_sets: list[Answers]) -> None:
    print(f"# {title} ({len(answer_sets)})")
    for answers in answer_sets:
        print(variant_id(answers))
    print()


def main(argv: list[str]) -> None:
    if "--shards" in argv:
        count = int(argv[argv.index("--shards") + 1])
        print(json.dumps(shard_matrix(count), separators=(",", ":")))
    elif "--plan" in argv:
        count = int(argv[argv.index("--plan") + 1])
        for entry in shard_matrix(count)["include"]:
            servers = ", ".join(s for s in SERVERS if entry[s]) or "none"
            print(
                f"shard {entry['shard']}: about {entry['expected_seconds']} s, "
                f"servers: {servers}"
            )
            for name in entry["variants"].split():
                print(f"  {name}")
    elif "--sweep" in argv:
        print("\n".join(variant_id(answers) for answers in sweep_set()))
    elif "--variants" in argv:
        print("\n".join(variant_id(answers) for answers in covering_set()))
    elif "--all" in argv:
        print("\n".join(variant_id(answers) for answers in valid_combinations()))
    else:
        names = ", ".join(q.name for q in architecture_questions())
        features = ", ".join(q.name for q in feature_questions())
        _print_set(f"architecture: every accepted set of {names}", architecture_set())
        _print_set(f"features: each value of {features}", feature_set())
        _print_set("3-wise covering array over all questions", triple_set())
        _print_set("sweep: the three sets above, once each", sweep_set())
        _print_set(
            "variants: pairwise covering array over all questions", covering_set()
        )


if __name__ == "__main__":
    main(sys.argv[1:])
