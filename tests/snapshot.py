"""Render the sweep's answer sets into a folder, to compare two versions of the template.

    uv run python tests/snapshot.py render DIR [TEMPLATE]   # renders into DIR
    uv run python tests/snapshot.py diff OLD NEW             # what differs

`render` renders this work tree (committed or not), or the template at TEMPLATE.

A refactor of the template should leave every render as it was, except where it means
to change them: render before, render after, and diff. The secrets generated at copy
time are replaced by a fixed text, so two renders of the same answers compare equal.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import rendering_fast, template_copy  # noqa: E402
from tests.matrix import copier_data, sweep_set, variant_id  # noqa: E402

# What differs between two renders of the same answers: the secrets in .env (and
# the template's temporary path in the answers file).
_SECRETS = re.compile(r"^((?:SECRET_KEY|API_KEYS|[A-Z_]*PASSWORD)=).*$", re.MULTILINE)


def render_all(destination: Path, template: Path | None = None) -> int:
    from copier import run_copy

    with tempfile.TemporaryDirectory() as scratch, rendering_fast():
        settings = Path(scratch) / "copier-settings.yml"
        settings.write_text("{}\n")
        os.environ["COPIER_SETTINGS_PATH"] = str(settings)
        source = str(template or template_copy())
        answer_sets = sweep_set()
        for answers in answer_sets:
            project = destination / variant_id(answers)
            run_copy(
                source,
                project,
                data=copier_data(answers),
                defaults=True,
                unsafe=True,
                quiet=True,
            )
            env = project / ".env"
            env.write_text(_SECRETS.sub(r"\1<secret>", env.read_text()))
            answers_file = project / ".copier-answers.yml"
            answers_file.write_text(
                answers_file.read_text().replace(source, "<template>")
            )
    return len(answer_sets)


def files(snapshot: Path) -> dict[str, Path]:
    return {
        str(path.relative_to(snapshot)): path
        for path in sorted(snapshot.rglob("*"))
        if path.is_file()
    }


def diff(old: Path, new: Path) -> int:
    """Print what differs; the number of files that do."""
    before, after = files(old), files(new)
    changed = 0
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            print(f"only in {old}: {name}")
        elif name not in before:
            print(f"only in {new}: {name}")
        elif before[name].read_bytes() != after[name].read_bytes():
            sys.stdout.writelines(
                difflib.unified_diff(
                    before[name].read_text().splitlines(keepends=True),
                    after[name].read_text().splitlines(keepends=True),
                    f"old/{name}",
                    f"new/{name}",
                )
            )
        else:
            continue
        changed += 1
    print(f"{changed} of {len(before.keys() | after.keys())} files differ")
    return changed


def main(argv: list[str]) -> int:
    if argv[:1] == ["render"] and len(argv) in {2, 3}:
        count = render_all(Path(argv[1]), Path(argv[2]) if len(argv) == 3 else None)
        print(f"{count} renders in {argv[1]}")
        return 0
    if argv[:1] == ["diff"] and len(argv) == 3:
        return 1 if diff(Path(argv[1]), Path(argv[2])) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
