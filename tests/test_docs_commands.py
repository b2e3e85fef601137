"""Every `python -m <module>` that README.md and docs/ tell a user to run names a module that imports and
runs as a script (a renamed or moved module fails here, not in a reader's shell)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"python -m ([A-Za-z_][\w.]*[A-Za-z_0-9])")


def named_modules() -> dict[str, list[str]]:
    """module -> the doc files (relative paths) that run it with `python -m`."""
    out: dict[str, list[str]] = {}
    for doc in DOCS:
        for name in COMMAND.findall(doc.read_text()):
            out.setdefault(name, []).append(doc.relative_to(ROOT).as_posix())
    return out


def test_the_docs_name_modules():
    assert "train.evaluate" in named_modules()  # the pattern finds the commands at all


@pytest.mark.parametrize("module", sorted(named_modules()))
def test_python_m_module_resolves(module: str):
    where = ", ".join(sorted(set(named_modules()[module])))
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"`python -m {module}` ({where}) does not import: {exc}")
    if hasattr(mod, "__path__"):  # a package runs its __main__
        assert importlib.util.find_spec(f"{module}.__main__"), f"{module} ({where}) has no __main__"
    else:
        source = Path(mod.__file__).read_text()
        assert re.search(r"""if __name__ == ["']__main__["']""", source), f"{module} ({where}) is no script"
