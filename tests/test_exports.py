"""Each module's ``__all__`` is what it means to export (as httpx checks its own): it
exists, names only what the module defines (a package may re-export its submodules'
names), and every public name the module defines is in it. A name meant for the module
alone starts with ``_``."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import relay

#: Bound in most modules for their own use; by convention never exported.
CONVENTIONAL = frozenset({"log"})

#: Modules not yet right, each with what is wrong (a missing ``__all__`` is listed as
#: the name ``__all__``). Every entry must still be wrong: fix the module, then delete
#: its entry here.
KNOWN: dict[str, frozenset[str]] = {}


def module_names() -> list[str]:
    names = ["relay"]
    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if info.name != "relay.__main__":  # a script: importing it runs Sluice
            names.append(info.name)
    return sorted(names)


def bindings(body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """Names a module's top level defines, and names it imports (also under if/try)."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                imported.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With):
            blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            for block in blocks:
                more_defined, more_imported = bindings(block)
                defined |= more_defined
                imported |= more_imported
    return defined, imported


def problems(module: ModuleType) -> set[str]:
    """``__all__`` if it is missing, else each name it gets wrong: listed but not the
    module's own, or public but not listed."""
    source = Path(module.__file__ or "").read_text()
    defined, imported = bindings(ast.parse(source).body)
    exports = getattr(module, "__all__", None)
    if exports is None:
        return {"__all__"}
    assert len(set(exports)) == len(exports), f"{module.__name__}.__all__ repeats a name"
    is_package = hasattr(module, "__path__")
    own = defined | imported if is_package else defined
    wrong = {name for name in exports if name not in own or not hasattr(module, name)}
    public = {name for name in defined if not name.startswith("_")} - CONVENTIONAL
    return wrong | (public - set(exports))


@pytest.mark.parametrize("name", module_names())
def test_all_is_what_the_module_exports(name: str) -> None:
    found = problems(importlib.import_module(name))
    assert found == KNOWN.get(name, frozenset()), (
        f"{name}: {sorted(found)} (define __all__, export what other modules may use, "
        "and start the rest with _)"
    )


def test_known_entries_are_modules() -> None:
    assert set(KNOWN) <= set(module_names())


def test_the_check_sees_a_wrong_all(tmp_path: Path) -> None:
    """A module that lists a name it lacks, and defines a public one it does not list."""
    path = tmp_path / "wrong_all.py"
    path.write_text(
        'from os import path\n__all__ = ["gone", "path"]\nLIMIT = 3\n'
        "def shown(): ...\ndef _hidden(): ...\nlog = None\n"
    )
    module = ModuleType("wrong_all")
    module.__file__ = str(path)
    exec(compile(path.read_text(), str(path), "exec"), vars(module))
    assert problems(module) == {"gone", "path", "LIMIT", "shown"}
