"""The layering of the package: technique libraries never reach the step layer, and the two import circles that
were broken stay broken.

A step (slimops.steps.*) reads its config, calls a library and writes the result; the libraries
(quantization, pruning, factorization, distillation, deploy) work on paths, model descriptions and plain
values, so they can be used, and tested, without the step machinery.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

PACKAGE = REPO / "components" / "slimops"
LIBRARIES = ("quantization", "pruning", "factorization", "distillation", "deploy")
STEP_LAYER = "slimops.steps"


def module_name(path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def subpackage(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
LIBRARY_MODULES = sorted(name for name in MODULES if subpackage(name) in LIBRARIES)


def imports_of(name: str) -> set[str]:
    """The slimops modules ``name`` imports anywhere in its file, inside functions too (a lazy import still runs)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    modules = set()
    for target in found:
        while target and target not in MODULES:  # `from mod import function` -> mod
            target = target.rpartition(".")[0]
        if target and target != name:
            modules.add(target)
    return modules


def reachable_from(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for target in imports_of(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_library_is_found():
    assert {subpackage(name) for name in LIBRARY_MODULES} == set(LIBRARIES)
    assert len(LIBRARY_MODULES) > len(LIBRARIES)  # the packages' modules, not only their __init__


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_importing_a_library_module_does_not_load_the_steps(module):
    code = f"import importlib, sys\nimportlib.import_module({module!r})\nprint({STEP_LAYER!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False", f"importing {module} loads {STEP_LAYER}"


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_no_library_module_reaches_the_steps_even_lazily(module):
    # Function-level imports included: a library that imported slimops.core (which imports the steps) inside a
    # function would pass the subprocess test above and still depend on the step layer.
    reached = sorted(name for name in reachable_from(module) if name == STEP_LAYER or name.startswith(STEP_LAYER + "."))
    assert not reached, f"{module} reaches {reached[0]}"


@pytest.mark.parametrize("importer, imported", [
    ("slimops.runner", "slimops.report"),
    ("slimops.handlers.runtime", "slimops.handlers.openvino_model"),
])
def test_no_import_circle(importer, imported):
    assert imported in imports_of(importer)  # the dependency that is meant to be there
    assert importer not in reachable_from(imported), f"{imported} leads back to {importer}"
