"""The hostile-input corpus: generated cases, each an attack or a malformed input and what slimops must do.

Nothing here is a stored blob: every case builds its inputs in a fresh directory from the real session
models (tests/conftest.py) and describes one ``slimops`` command. ``test_corpus.py`` runs each command as a
user would (a fresh interpreter) and asserts, for every case:
- the exit code (2 bad input, 3 refused evidence);
- exactly one line on stderr, ``slimops: error: ...`` (or ``slimops: ...`` for exit 3), at most 1000 characters;
- nothing written: OUT absent (or byte-identical when it existed before), no temporary siblings;
- no canary file created (the file a successful attack would write);
- every input tree unchanged (names, file contents, link targets).

Cases live in ``cases_*.py`` modules, one per class of problem; each module has ``cases() -> list[Case]``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slimops.manifest import sha256_file


@dataclass
class Bases:
    """Real models and data a case may start from. Each is built once per session (lazily)."""

    get: Callable[[str], Path]  # "digits_trained", "digits_onnx", "digits_validated", "digits_failed", "minilm_path"


@dataclass
class Invocation:
    argv: list[str]  # arguments after `slimops`
    out: Path | None = None  # must not exist afterwards unless it existed before (then it must be unchanged)
    watch: list[Path] = field(default_factory=list)  # input trees that must be unchanged
    canary: Path | None = None  # must not exist afterwards
    exit_code: int = 2
    stderr_has: str | None = None  # a word the one line must contain (what was wrong)
    cwd: Path | None = None
    timeout: float = 120
    env: dict = field(default_factory=dict)
    cleanup: Callable[[], object] | None = None  # run after the command (e.g. end a process the case started)


@dataclass
class Case:
    id: str  # "<class>/<name>"
    build: Callable[[Path, Bases], Invocation]

    @property
    def klass(self) -> str:
        return self.id.split("/", 1)[0]


def snapshot(root: Path) -> dict:
    """Names, file hashes, modes and link targets under ``root`` (links are not followed)."""
    root = Path(root)
    if not os.path.lexists(root):
        return {"<missing>": True}
    if root.is_symlink():
        return {"<link>": os.readlink(root)}
    if root.is_file():
        return {"<file>": sha256_file(root)}
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            elif path.is_file():
                state[rel] = ("file", sha256_file(path))
            elif path.is_dir():
                state[rel] = ("dir",)
            else:
                state[rel] = ("other", path.lstat().st_mode)
    return state


def copy_model(src: Path, dst: Path) -> Path:
    """A private, writable copy of a base model (real copies: cases edit them)."""
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def all_cases() -> list[Case]:
    import importlib
    import pkgutil

    cases: list[Case] = []
    here = [str(Path(__file__).parent)]
    for module in sorted(m.name for m in pkgutil.iter_modules(here) if m.name.startswith("cases_")):
        cases += importlib.import_module(f"{__package__}.{module}").cases()
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {duplicates}"
    return cases
