"""Which model factories may be imported: an allowlist the user controls, never a model directory.

A PyTorch model directory names its builder (``architecture.json``: ``"factory": "package.module:callable"``),
and so do manifests, recipes (``model.factory``) and distill's ``student.factory``. Importing whatever such a
string names would let a model directory run any code (``os:system``). A factory is imported only when it is
- slimops's own zoo (``slimops.zoo.*``);
- published by an installed package under the entry-point group ``slimops.factories``;
- or allowed by the user: ``allow_factories:`` in the recipe, ``--allow-factory`` on the command line, or
  ``$SLIMOPS_ALLOW_FACTORIES`` (comma-separated). An entry is a module (``mypkg.models`` allows every callable
  in it and in its submodules) or one ``module:callable``.
Anything else is refused with exit 2 before any import happens.
"""

from __future__ import annotations

import importlib
import os
import re
from functools import lru_cache

from slimops.errors import BadInput

ENTRY_POINT_GROUP = "slimops.factories"
ENV = "SLIMOPS_ALLOW_FACTORIES"
BUILTIN = ("slimops.zoo",)
# One callable by name: no attribute chains (``slimops.zoo.digits:torch.load`` would reach what a module imported).
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_ENTRY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$")
_allowed: set[str] = set()


def allow(entries) -> None:
    """Add user-controlled entries (modules or ``module:callable``) to this process's allowlist."""
    for entry in entries or ():
        entry = str(entry).strip()
        if not _ENTRY.match(entry):
            raise BadInput(f"allowed factory {_short(entry)} is not 'package.module' or 'package.module:callable'; "
                           "fix allow_factories / --allow-factory")
        _allowed.add(entry)


def allowed_entries() -> list[str]:
    env = [e.strip() for e in os.environ.get(ENV, "").split(",") if e.strip()]
    return sorted({*BUILTIN, *_allowed, *env, *_entry_points()})


def check(spec, where: str) -> str:
    """The allowlist entry that admits ``spec``; BadInput naming how to allow it when none does."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise BadInput(f"{where}: factory {_short(spec)} is not 'package.module:callable'; fix the factory name")
    module = spec.partition(":")[0]
    for entry in allowed_entries():
        if spec == entry or module == entry or module.startswith(entry + "."):
            return entry
    raise BadInput(f"{where}: factory {_short(spec)} is not on the allowlist (slimops.zoo, entry points "
                   f"'{ENTRY_POINT_GROUP}', allow_factories); if you trust it, add "
                   f"'allow_factories: [{module}]' to the recipe or pass --allow-factory {module}")


def load(spec, where: str):
    """The callable ``spec`` names, imported only after ``check``."""
    entry = check(spec, where)
    module_name, _, attr = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise BadInput(f"{where}: cannot import factory {spec!r} ({_short(str(err))}); install the package "
                       "that defines it") from None
    # A module entry admits what that module defines, not a name it imported (``torch``, ``nn``, ``os``); an
    # exact ``module:callable`` entry admits that one object, wherever it is defined.
    defined_in = getattr(target, "__module__", None) or ""
    if not callable(target) or (":" not in entry and not (defined_in == entry or defined_in.startswith(entry + "."))):
        raise BadInput(f"{where}: {spec!r} is not a class or function defined in {entry}; name the model factory itself")
    return target


@lru_cache(maxsize=1)
def _entry_points() -> tuple[str, ...]:
    from importlib.metadata import entry_points

    return tuple(ep.value.strip() for ep in entry_points(group=ENTRY_POINT_GROUP) if _ENTRY.match(ep.value.strip()))


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
