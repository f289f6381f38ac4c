"""`slimops report` rewrites report.html / report.md through fresh temporary files: a link or FIFO planted
where the old fixed temporary name was can neither redirect the write nor hang it."""

from __future__ import annotations

import os

from conftest import run_cli, write_digits_recipe


def test_a_planted_link_or_fifo_is_never_written_through(tmp_path):
    recipe = write_digits_recipe(tmp_path / "recipe.yaml", epochs=1)
    run_dir = tmp_path / "run"
    assert run_cli("run", recipe, "--out", run_dir).returncode == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("user file\n")
    os.symlink(victim, run_dir / ".report.md.tmp")
    os.mkfifo(run_dir / ".report.html.tmp")
    done = run_cli("report", run_dir, timeout=60)
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "user file\n"
    assert (run_dir / "report.md").read_text().startswith("# slimops run")
    (run_dir / "run.json").unlink()
    os.symlink(victim, run_dir / "run.json")
    refused = run_cli("report", run_dir, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
