"""Two code habits, checked on the package's source (no model, no import of it): no module much over 500
lines, and no private name (``_x``) imported from another package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # reads the source only

PACKAGE = Path(__file__).resolve().parents[2] / "facechain"

# About 500 lines: a module may run a little over rather than be cut in the middle of one idea.
MAX_LINES = 550
# Modules over MAX_LINES today, each with what splitting it waits for. Nothing else may grow past it.
OVER_MAX_LINES: dict[str, str] = {}
# Private names imported across packages today, each with why it is still there (none).
PRIVATE_IMPORTS: dict[tuple[str, str], str] = {}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def _unit(module: str) -> str:
    """The unit private names may be shared in: a sub package (``facechain.models``), else the module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else module


def _module_name(rel: str) -> str:
    parts = ["facechain", *rel.removesuffix(".py").split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(rel: str, source: str) -> set[str]:
    """``module.name`` of every private name the module ``rel`` imports (or reads off an imported facechain
    module) from outside its own unit."""
    module = _module_name(rel)
    package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
    tree = ast.parse(source)
    found, modules = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not base.startswith("facechain"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if (PACKAGE.parent / full.replace(".", "/")).is_dir() or (PACKAGE.parent / f"{full.replace('.', '/')}.py").is_file():
                    modules[alias.asname or alias.name] = full  # a module imported by name
                elif alias.name.startswith("_") and not alias.name.startswith("__") and _unit(base) != _unit(module):
                    found.add(full)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("facechain.") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and _unit(modules[node.value.id]) != _unit(module)):
            found.add(f"{modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_is_much_over_500_lines():
    over = {rel: n for rel, path in _modules() if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    unexplained = {rel: n for rel, n in over.items() if rel not in OVER_MAX_LINES}
    assert not unexplained, f"modules over {MAX_LINES} lines (split them along their seams): {unexplained}"
    assert not set(OVER_MAX_LINES) - set(over), f"OVER_MAX_LINES lists modules now short enough: {set(OVER_MAX_LINES) - set(over)}"


def test_no_private_name_is_imported_across_packages():
    found = {(rel, name) for rel, path in _modules() for name in private_imports(rel, path.read_text(encoding="utf-8"))}
    unexplained = sorted(found - set(PRIVATE_IMPORTS))
    assert not unexplained, ("private names imported from another package (make the helper public where it is "
                             f"shared, or keep it in one place): {unexplained}")
    assert not set(PRIVATE_IMPORTS) - found, f"PRIVATE_IMPORTS lists imports that are gone: {set(PRIVATE_IMPORTS) - found}"


def test_the_private_import_check_sees_each_form():
    """The check itself: a private name from another unit is seen, by name or off a module; one shared inside a
    sub package, or a public name, is not."""
    src = ("from facechain.io import _umask, write_json\n"
           "from facechain import io as fio\n"
           "fio._json_default(1)\n"
           "from facechain.models.weights import _needs_weights\n"
           "from .hub import _hub_offline\n")
    assert private_imports("lora/files.py", src) == {"facechain.io._umask", "facechain.io._json_default",
                                                     "facechain.models.weights._needs_weights"}
    assert private_imports("models/pipeline.py", src) == {"facechain.io._umask", "facechain.io._json_default"}
