"""`slimops report RUN_DIR` reads files anyone who can write the run directory may have edited."""

from __future__ import annotations

from pathlib import Path

from .corpus import Case, Invocation


def _run_json(text: str):
    def build(work: Path, bases) -> Invocation:
        run = work / "run"
        run.mkdir()
        (run / "run.json").write_text(text)
        return Invocation(["report", run], watch=[run], stderr_has="run.json")
    return build


def cases() -> list[Case]:
    return [
        Case("report/run-json-not-json", _run_json("{not json")),
        Case("report/run-json-a-list", _run_json("[1, 2]")),
        Case("report/run-json-steps-not-a-list", _run_json('{"recipe": "r", "name": "n", "finished": "t", '
                                                            '"seconds": 1, "source": "s", "steps": 5, "exit_code": 0}')),
        Case("report/run-json-deeply-nested", _run_json("[" * 100_000 + "]" * 100_000)),
        *registry_cases(),
    ]


def _registry_file(text: str, command: str):
    def build(work: Path, bases) -> Invocation:
        registry = work / "registry"
        registry.mkdir()
        (registry / "registry.json").write_text(text)
        argv = {"rollback": ["rollback", "--registry", registry, "--model", "digits"],
                "promote": ["promote", "--registry", registry, "--model", "digits", "--version", "1"]}[command]
        return Invocation(argv, watch=[registry], stderr_has="registry.json")
    return build


def registry_cases() -> list[Case]:
    return [
        Case("report/registry-json-not-json-rollback", _registry_file("{bad", "rollback")),
        Case("report/registry-json-uri-not-a-string-promote", _registry_file('{"tracking_uri": 5}', "promote")),
        Case("report/registry-json-a-list-rollback", _registry_file("[]", "rollback")),
    ]
