"""The answer sets of tests/matrix.py keep their promises, checked against a brute
force enumeration of the questionnaire rather than against the module's own search."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from tests import matrix
from tests.conftest import ROOT
from tests.matrix import Answer, Answers, Value


def enumerate_accepted(
    questions: tuple[matrix.Question, ...], fixed: Mapping[str, Value]
) -> Iterator[Answers]:
    """Every accepted answer set, the slow way: the whole product (hidden questions at
    their default), each checked against every validator at the end."""

    def extend(index: int, answers: Answers) -> Iterator[Answers]:
        if index == len(questions):
            if not matrix.refusal(answers):
                yield dict(answers)
            return
        question = questions[index]
        context = matrix.defaults() | answers
        if question.name in fixed:
            values: tuple[Value, ...] = (fixed[question.name],)
        elif matrix._asked(question, context):
            values = question.values
        else:
            values = (question.default,)
        for value in values:
            yield from extend(index + 1, answers | {question.name: value})

    yield from extend(0, {})


def asked_tuples(
    answers: Mapping[str, Value], strength: int
) -> set[tuple[Answer, ...]]:
    items = sorted(matrix.asked_answers(answers).items(), key=str)
    return set(itertools.combinations(items, strength))


def free_questions() -> list[matrix.Question]:
    """The questions no validator or `when` mentions, which have neither themselves
    (read from the questionnaire's text): each of their values goes with every
    accepted answer set, so the enumeration holds them at their default and adds
    their values to the tuples afterwards. Every question more multiplies the
    product; a free one no longer does."""
    spec = matrix.questionnaire()
    texts = {
        name: f"{entry.get('validator', '')} {entry.get('when', '')}".strip()
        for name, entry in spec.items()
        if isinstance(entry, dict)
    }
    return [
        question
        for question in matrix.questions()
        if not texts[question.name]
        and not any(
            re.search(rf"\b{question.name}\b", text)
            for name, text in texts.items()
            if name != question.name
        )
    ]


@pytest.fixture(scope="module")
def accepted() -> list[Answers]:
    """Every accepted answer set with the free questions at their default."""
    fixed = {question.name: question.default for question in free_questions()}
    return list(enumerate_accepted(matrix.questions(), fixed))


def possible_tuples(accepted: list[Answers], strength: int) -> set[tuple[Answer, ...]]:
    """Every ``strength``-tuple of answers some accepted answer set holds: tuples of
    the enumerated answers, each completed with any values of free questions."""
    free = free_questions()
    names = {question.name for question in free}
    projections = {
        tuple(
            sorted(
                (
                    item
                    for item in matrix.asked_answers(a).items()
                    if item[0] not in names
                ),
                key=str,
            )
        )
        for a in accepted
    }
    bound: list[set[tuple[Answer, ...]]] = [set() for _ in range(strength + 1)]
    for items in projections:
        for size in range(strength + 1):
            bound[size].update(itertools.combinations(items, size))
    possible = set()
    for size in range(strength + 1):
        for group in itertools.combinations(free, strength - size):
            for values in itertools.product(*(question.values for question in group)):
                extra = tuple((q.name, v) for q, v in zip(group, values, strict=True))
                for combination in bound[size]:
                    possible.add(tuple(sorted(combination + extra, key=str)))
    return possible


@pytest.mark.parametrize(
    ("strength", "answer_sets"),
    [(3, matrix.triple_set), (2, matrix.covering_set)],
    ids=["3-wise", "pairwise"],
)
def test_every_tuple_that_can_occur_is_covered(
    accepted: list[Answers], strength: int, answer_sets: Any
) -> None:
    possible = possible_tuples(accepted, strength)
    covered = set().union(*(asked_tuples(a, strength) for a in answer_sets()))

    assert possible - covered == set()
    assert covered <= possible


def test_every_answer_set_is_accepted_and_as_copier_sees_it() -> None:
    for answers in [*matrix.sweep_set(), *matrix.covering_set()]:
        assert matrix.refusal(answers) == "", answers
        assert matrix.effective(answers) == answers, answers


def test_the_architecture_set_is_every_accepted_architecture() -> None:
    features = {q.name: q.default for q in matrix.feature_questions()}
    expected = {
        tuple(sorted(matrix.asked_answers(a).items(), key=str))
        for a in enumerate_accepted(matrix.questions(), features)
    }
    found = [
        tuple(sorted(matrix.asked_answers(a).items(), key=str))
        for a in matrix.architecture_set()
    ]

    assert len(found) == len(set(found))
    assert set(found) == expected


def test_every_feature_value_is_in_the_feature_set() -> None:
    for question in matrix.feature_questions():
        values = {answers[question.name] for answers in matrix.feature_set()}
        assert set(question.values) - {question.default} <= values, question.name


def test_the_sweep_holds_the_three_sets_once_each() -> None:
    def key(answers: Answers) -> tuple[Answer, ...]:
        return tuple(sorted(matrix.asked_answers(answers).items(), key=str))

    sweep = [key(answers) for answers in matrix.sweep_set()]
    every = [
        *matrix.architecture_set(),
        *matrix.feature_set(),
        *matrix.triple_set(),
    ]

    assert len(sweep) == len(set(sweep))
    assert set(sweep) == {key(answers) for answers in every}


def test_the_sets_are_the_same_in_every_process() -> None:
    printed = {
        seed: subprocess.run(
            [sys.executable, "tests/matrix.py"],
            cwd=ROOT,
            env=os.environ | {"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }

    assert printed["1"] == printed["2"]
    for title in ("# architecture", "# features", "# 3-wise", "# variants"):
        assert title in printed["1"]


@contextmanager
def questionnaire(spec: dict[str, Any]) -> Iterator[None]:
    """The matrix of another questionnaire than copier.yml's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matrix, "ARCHITECTURE", ("size",))
        patch.setattr(matrix, "questionnaire", lambda: spec)
        matrix.clear_caches()
        try:
            yield
        finally:
            patch.undo()
            matrix.clear_caches()


def test_a_yes_no_question_is_varied_like_any_other() -> None:
    spec = {
        "size": {"type": "str", "choices": ["small", "large"], "default": "small"},
        "metrics": {"type": "bool", "default": False},
        "exporter": {
            "type": "str",
            "choices": ["push", "pull"],
            "default": "pull",
            "when": "{{ metrics }}",
            "validator": "{% if exporter == 'push' and size == 'small' %}no{% endif %}",
        },
    }
    with questionnaire(spec):
        names = [q.name for q in matrix.feature_questions()]
        features = matrix.feature_set()
        triples = matrix.triple_set()
        ids = {matrix.variant_id(answers) for answers in matrix.sweep_set()}

    assert names == ["metrics", "exporter"]
    assert {"metrics": True} | {"exporter": "pull"} in [
        {k: a[k] for k in ("metrics", "exporter")} for a in features
    ]
    # push is refused on small: it occurs, on large only.
    pushed = [a for a in triples if a["metrics"] and a["exporter"] == "push"]
    assert pushed
    assert all(a["size"] == "large" for a in pushed)
    assert ids >= {"small", "small-metrics", "large-metrics-exporter-push"}


def test_a_multiselect_question_is_refused_until_the_matrix_can_vary_it() -> None:
    spec = {
        "size": {"type": "str", "choices": ["small", "large"], "default": "small"},
        "extras": {"type": "str", "choices": ["a", "b"], "multiselect": True},
    }
    with questionnaire(spec), pytest.raises(NotImplementedError, match="extras"):
        matrix.questions()
