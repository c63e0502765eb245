"""Jinja filter that turns rendered partials into one tidy Python module.

The layouts place the same partials in different modules, so the imports a partial
needs change with the layout: in one layout a name lives in the same module, in
another it is imported from a sibling package. Partials therefore write their imports
naively, next to the code that needs them, and the ``pymodule`` filter:

* hoists every top-level import to the top of the module, after the docstring;
* drops imports of the module itself (what lives beside the code needs no import);
* merges, de-duplicates, groups and sorts them exactly as ruff's isort does with the
  settings the generated ``pyproject.toml`` uses, wrapping long lines the same way;
* normalises the blank lines between top-level statements as ``ruff format`` does.

Anything that is not valid Python fails the render with the module's name, so a
broken partial is caught when the template is rendered, not when the project runs.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field

from jinja2 import Environment, pass_context
from jinja2.ext import Extension
from jinja2.runtime import Context

LINE_LENGTH = 88
FIRST_PARTY = frozenset({"app", "tests", "migrations"})
_SECTIONS = ("future", "stdlib", "thirdparty", "firstparty")
_NATURAL_SPLIT = re.compile(r"(\d+)")
# PEP 695 syntax, which a renderer older than Python 3.12 cannot parse.
_TYPE_PARAMS = re.compile(
    r"^(\s*(?:async\s+def|def|class)\s+\w+)\[[^\]]*\]", re.MULTILINE
)
_TYPE_ALIAS = re.compile(r"^type\s+(\w+)", re.MULTILINE)


def _parse(source: str) -> ast.Module:
    """Parse ``source``, whatever the Python version of the renderer.

    Only statement boundaries and imports are read from the tree, and they do not
    change when PEP 695 type parameters are dropped from a line, so an older renderer
    parses a copy without them (ruff checks the real syntax of every render).
    """
    if sys.version_info < (3, 12):
        source = _TYPE_ALIAS.sub(r"\1", _TYPE_PARAMS.sub(r"\1", source))
    return ast.parse(source)


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders digits numerically and ignores case, as ruff does."""
    parts = _NATURAL_SPLIT.split(text.lower())
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in parts)


def _section(module: str) -> str:
    top = module.split(".", 1)[0]
    if top == "__future__":
        return "future"
    if top in FIRST_PARTY:
        return "firstparty"
    if top in sys.stdlib_module_names:
        return "stdlib"
    return "thirdparty"


def _member_key(name: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """ruff's ``order-by-type``: CONSTANTS, then Classes, then everything else."""
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, _natural_key(name)


@dataclass
class _ImportBlock:
    """Every import of one module, gathered from all the partials."""

    plain: set[tuple[str, str | None]] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    aliased: set[tuple[str, str]] = field(default_factory=set)
    comments: dict[str, str] = field(default_factory=dict)


def _format_from(module: str, names: list[str]) -> str:
    line = f"from {module} import {', '.join(names)}"
    if len(line) <= LINE_LENGTH:
        return line
    body = "".join(f"    {name},\n" for name in names)
    return f"from {module} import (\n{body})"


class _Imports:
    def __init__(self, module: str) -> None:
        self.module = module
        self.blocks: dict[str, _ImportBlock] = {}

    def add(self, node: ast.Import | ast.ImportFrom, comment: str | None) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                block = self.blocks.setdefault(alias.name, _ImportBlock())
                block.plain.add((alias.name, alias.asname))
                if comment:
                    block.comments[f"import {alias.name}"] = comment
            return
        if node.level:
            raise ValueError(f"{self.module}: relative imports are not supported")
        source = node.module or ""
        if source == self.module:
            return
        block = self.blocks.setdefault(source, _ImportBlock())
        for alias in node.names:
            if alias.asname:
                block.aliased.add((alias.name, alias.asname))
            else:
                block.members.add(alias.name)
        if comment:
            block.comments[f"from {source}"] = comment

    def render(self) -> str:
        sections: dict[str, tuple[list[str], list[str]]] = {
            name: ([], []) for name in _SECTIONS
        }
        for module in sorted(self.blocks, key=_natural_key):
            block = self.blocks[module]
            straight, froms = sections[_section(module)]
            for name, asname in sorted(block.plain, key=lambda p: _natural_key(p[0])):
                line = f"import {name}" + (f" as {asname}" if asname else "")
                comment = block.comments.get(f"import {name}")
                straight.append(f"{line}  {comment}" if comment else line)
            # One module's statements (the merged one, then one per alias) are
            # ordered by their first name, as ruff orders them.
            statements = []
            if block.members:
                members = sorted(block.members, key=_member_key)
                line = _format_from(module, members)
                comment = block.comments.get(f"from {module}")
                text = f"{line}  {comment}" if comment else line
                statements.append((_member_key(members[0]), text))
            for name, asname in block.aliased:
                text = f"from {module} import {name} as {asname}"
                statements.append((_member_key(name), text))
            froms.extend(text for _, text in sorted(statements))
        groups = ["\n".join(straight + froms) for straight, froms in sections.values()]
        return "\n\n".join(group for group in groups if group)


# `name: type = "a string"`: the one shape whose length depends on the answers.
_STRING_ASSIGNMENT = re.compile(
    r'^(?P<indent>\s*)(?P<target>[^"=]+?) = (?P<value>"(?:[^"\\]|\\.)*")$'
)


def _wrap_long_assignment(line: str) -> list[str]:
    """Wrap an over-long string assignment in parentheses, as ruff format does when
    that makes it fit (an answer such as the project name can make it long)."""
    match = _STRING_ASSIGNMENT.match(line)
    if len(line) <= LINE_LENGTH or not match:
        return [line]
    indent, value = match["indent"], match["value"]
    if len(indent) + 4 + len(value) > LINE_LENGTH:
        return [line]
    return [f"{indent}{match['target']} = (", f"{indent}    {value}", f"{indent})"]


def _is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _is_environ_setting(node: ast.stmt) -> bool:
    """`os.environ[...] = ...` or `os.environ.setdefault(...)`: ruff lets these stand
    between imports, and the imports below are meant to see them (a test suite
    choosing a setting before the app loads)."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return isinstance(target, ast.Subscript) and _is_os_environ(target.value)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        function = node.value.func
        return isinstance(function, ast.Attribute) and _is_os_environ(function.value)
    return False


def _is_definition(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _tidy_statement(lines: list[str]) -> list[str]:
    """Keep a statement's own text, with at most one blank line in a row inside it."""
    kept: list[str] = []
    for line in lines:
        if not line and kept and not kept[-1]:
            continue
        kept.append(line)
    while kept and not kept[-1]:
        kept.pop()
    return kept


def format_module(text: str, module: str) -> str:
    """Return ``text`` as a tidy module named ``module`` (see the module docstring)."""
    lines = [line.rstrip() for line in text.splitlines()]
    source = "\n".join(lines) + "\n"
    try:
        tree = _parse(source)
    except SyntaxError as error:
        numbered = "\n".join(f"{n:4} {line}" for n, line in enumerate(lines, 1))
        raise ValueError(
            f"{module} does not render as Python: {error}\n{numbered}"
        ) from error

    imports = _Imports(module)
    # Imports below an environment setting form a block of their own, after it.
    later_imports = _Imports(module)
    barrier: list[str] = []
    docstring: list[str] = []
    chunks: list[tuple[ast.stmt, list[str], int]] = []
    previous_end = 0
    for index, node in enumerate(tree.body):
        start, end = _first_line(node), node.end_lineno or node.lineno
        gap = lines[previous_end : start - 1]
        previous_end = end
        if isinstance(node, ast.Import | ast.ImportFrom):
            own = lines[start - 1 : end]
            comment = own[-1].split("#", 1)[1].strip() if "#" in own[-1] else None
            block = later_imports if barrier else imports
            block.add(node, f"# {comment}" if comment else None)
            continue
        statement = _tidy_statement(lines[start - 1 : end])
        if _is_environ_setting(node) and not chunks:
            barrier += [line for line in gap if line.strip()] + statement
            continue
        if (
            index == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docstring = statement
            continue
        comments = [line for line in gap if line.strip()]
        blanks_before = 0
        for line in gap:
            if line.strip():
                break
            blanks_before += 1
        chunks.append((node, comments + statement, blanks_before))

    out: list[str] = list(docstring)
    for block in (imports.render(), "\n".join(barrier), later_imports.render()):
        if block:
            if out:
                out.append("")
            out.extend(block.splitlines())
    previous: ast.stmt | None = None
    for node, chunk, blanks_before in chunks:
        if out:
            if _is_definition(node) or (
                previous is not None and _is_definition(previous)
            ):
                blanks = 2
            elif previous is None:
                blanks = 1
            else:
                blanks = min(blanks_before, 2)
            out.extend([""] * blanks)
        out.extend(chunk)
        previous = node
    wrapped = [part for line in out for part in _wrap_long_assignment(line)]
    return "\n".join(wrapped).rstrip("\n") + "\n"


def quoted(value: object) -> str:
    """A double-quoted string literal valid in Python, TOML and YAML alike."""
    return json.dumps(str(value), ensure_ascii=False)


def python_string(value: object) -> str:
    """A Python string literal, quoted as ruff format quotes it: double quotes, unless
    the text holds more double than single quotes (None stays None)."""
    if value is None:
        return "None"
    text = str(value)
    literal = json.dumps(text, ensure_ascii=False)
    if text.count('"') > text.count("'"):
        inner = literal[1:-1].replace('\\"', '"').replace("'", "\\'")
        return f"'{inner}'"
    return literal


@pass_context
def package(context: Context, name: str) -> str:
    """The directory of package ``name`` (``app.items`` -> ``items``) if the answers
    need it, else "": a path part that renders empty is not written."""
    return name.rsplit(".", 1)[-1] if name in context["packages"] else ""


@pass_context
def module(context: Context, name: str) -> str:
    """The file of module ``name`` (``app.items.router`` -> ``router.py``) if the
    answers need it, else ""."""
    return name.rsplit(".", 1)[-1] + ".py" if name in context["modules"] else ""


class PythonModuleExtension(Extension):
    """Registers ``pymodule`` (``{% filter pymodule("app.main") %}``), ``pystr`` for
    Python string literals, ``quoted`` for TOML and YAML ones, and ``package`` and
    ``module``, which name the wrapper files under ``template/app`` (a file name
    without double quotes, so the template checks out on Windows)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        environment.filters["pymodule"] = format_module
        environment.filters["quoted"] = quoted
        environment.filters["pystr"] = python_string
        environment.globals["package"] = package
        environment.globals["module"] = module
