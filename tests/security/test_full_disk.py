"""A full disk while a step writes its output: exit 2, one line saying no space is left where, nothing left behind.

Tested for real on a tiny tmpfs (mounting needs root; skipped with the reason otherwise).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(reason=f"cannot mount a small tmpfs (`mount -t tmpfs` needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("step, base, extra", [
    ("export", "digits_trained", []),  # torch.onnx.export writes the graph (C++)
    ("quantize", "digits_onnx", []),  # onnx / ORT write the graph
    ("train", "digits_trained", ["--set", "data.format=digits", "--set", "data.limit=64", "--set", "epochs=1"]),
])
def test_full_disk_is_bad_input_with_nothing_left(step, base, extra, tiny_disk, request):
    model = request.getfixturevalue(base)
    out = tiny_disk / "out"
    done = run_cli("step", step, "--model", model, "--out", out, *extra, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    error = lines[-1]  # a training step prints its progress line first
    assert error.startswith("slimops: error: no space left on device"), done.stderr
    assert str(out) in error and "nothing was kept" in error
    assert all(not line.startswith("Traceback") for line in lines), done.stderr
    assert sorted(p.name for p in Path(tiny_disk).iterdir()) == [], "the full disk holds leftovers"
