"""The engine's package boundary (docs/DESIGN.md): `daemon/rules/` imports nothing from the
rest of `daemon/`, and its vocabulary (`daemon.rules.types`) is defined in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import daemon.rules

RULES = Path(daemon.rules.__file__).parent
VOCABULARY = {"Condition", "KEY_METRICS", "Member", "MemberKind", "Metric", "Severity", "WORKSPACE"}


def _modules() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(), str(p)) for p in sorted(RULES.glob("*.py"))}


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            names.add(node.module)
    return names


def test_rules_import_nothing_from_the_rest_of_the_daemon() -> None:
    outside = {
        f"{name}: {module}"
        for name, tree in _modules().items()
        for module in _imported(tree)
        if module.split(".")[0] == "daemon" and not module.startswith("daemon.rules")
    }
    assert not outside


def test_the_vocabulary_is_defined_once_in_types() -> None:
    defined: dict[str, list[str]] = {}
    for name, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                targets = [node.name]
            elif isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target.id]
            else:
                continue
            for target in targets:
                if target in VOCABULARY:
                    defined.setdefault(target, []).append(name)
    assert defined == {name: ["types.py"] for name in VOCABULARY}
