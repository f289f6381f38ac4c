"""Run every case of the hostile-input corpus (corpus.py, cases_*.py) as a user would, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .corpus import Bases, all_cases, snapshot

CASES = all_cases()


def test_corpus_is_large_enough():
    by_class: dict[str, int] = {}
    for case in CASES:
        by_class[case.klass] = by_class.get(case.klass, 0) + 1
    print(by_class)
    assert len(CASES) >= 80, by_class


@pytest.fixture(scope="session")
def bases(request) -> Bases:
    return Bases(get=request.getfixturevalue)


def _siblings(out: Path) -> list[Path]:
    out = Path(out).absolute()
    if not out.parent.exists():
        return []
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, bases, tmp_path):
    work = tmp_path / "case"
    work.mkdir()
    inv = case.build(work, bases)
    watched = {str(p): snapshot(p) for p in inv.watch}
    out_before = snapshot(inv.out) if inv.out is not None else None
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", **inv.env)
    try:
        proc = subprocess.run([sys.executable, "-m", "slimops", *map(str, inv.argv)], cwd=inv.cwd or work, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=inv.timeout)
    finally:
        if inv.cleanup is not None:
            inv.cleanup()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    context = f"argv={inv.argv}\nexit={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == inv.exit_code, context
    assert len(lines) == 1, context
    prefix = "slimops: error:" if inv.exit_code == 2 else "slimops:"
    assert lines[0].startswith(prefix), context
    assert len(lines[0]) <= 1000, f"line of {len(lines[0])} characters"
    if inv.stderr_has:
        assert inv.stderr_has.lower() in lines[0].lower(), context
    if inv.out is not None:
        assert snapshot(inv.out) == out_before, f"{inv.out} was written or changed\n{context}"
        assert _siblings(inv.out) == [], f"left behind: {_siblings(inv.out)}"
    if inv.canary is not None:
        assert not inv.canary.exists(), f"canary {inv.canary} was created: the attack ran\n{context}"
    for path, before in watched.items():
        assert snapshot(Path(path)) == before, f"input {path} changed\n{context}"
