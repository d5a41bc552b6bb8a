"""The agent runtime runs in the sandbox image, which holds Python's standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

AGENTS = Path(__file__).resolve().parents[2] / "agents"


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_agents_import_nothing_outside_the_standard_library() -> None:
    files = sorted(AGENTS.rglob("*.py"))
    assert files, "agents/ has no Python files"
    allowed = set(sys.stdlib_module_names) | {"agents", "__future__"}
    for path in files:
        outside = imported_roots(path) - allowed
        assert not outside, f"{path.relative_to(AGENTS.parent)} imports {sorted(outside)}"


def test_the_check_itself_catches_a_third_party_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import redis\nfrom gateway import settings\nimport json\n")
    assert imported_roots(sample) - set(sys.stdlib_module_names) == {"redis", "gateway"}
