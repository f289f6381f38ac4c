"""Class 4: gate evidence cannot be forged or go stale. register, promote and deploy re-derive the verdict from
the report's own rules and measurements and match it against the validate manifest and the files (exit 3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .corpus import Case, Invocation, copy_model, edit_json

KSERVE = '{"type": "kserve", "storage_uri": "s3://models/digits"}'


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _argv(step: str, model: Path, work: Path) -> list:
    argv = ["step", step, "--model", model, "--out", work / "out"]
    if step in ("register", "promote"):
        argv += ["--set", "name=digits", "--set", f"registry_dir={work / 'registry'}"]
    if step == "deploy":
        argv += ["--set", "name=digits-endpoint", "--set", f"target={KSERVE}"]
    return argv


def _forge(base: str, tamper, step: str = "register", env: dict | None = None, stderr_has: str | None = None):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get(base), work / "model")
        tamper(model)
        return Invocation(_argv(step, model, work), out=work / "out", watch=[model], exit_code=3,
                          canary=work / "registry" / "mlflow.db", env=env or {}, stderr_has=stderr_has)
    return build


def passed_true(model: Path) -> None:
    """The naive forgery: flip the verdict."""
    edit_json(model / "gate_report.json", lambda r: r.update(passed=True))


def passed_true_no_reasons(model: Path) -> None:
    edit_json(model / "gate_report.json", lambda r: r.update(passed=True, reasons=[]))


def checks_rewritten(model: Path) -> None:
    """Every check marked passed, the verdict and reasons to match."""
    def change(report):
        for row in report["checks"]:
            row["passed"] = True
        report.update(passed=True, reasons=[])
    edit_json(model / "gate_report.json", change)


def policy_loosened(model: Path) -> None:
    """The rule that failed is loosened in the report, so the report is self-consistent."""
    def change(report):
        report["policy"]["max_size_ratio"] = 10.0
        for row in report["checks"]:
            if row["check"] == "size_ratio":
                row.update(limit=10.0, passed=True)
        report.update(passed=True, reasons=[])
    edit_json(model / "gate_report.json", change)


def metrics_faked(model: Path) -> None:
    """The measurement is faked, the report self-consistent."""
    def change(report):
        report["metrics"]["size_ratio"] = 0.0001
        for row in report["checks"]:
            if row["check"] == "size_ratio":
                row.update(value=0.0001, passed=True)
        report.update(passed=True, reasons=[])
    edit_json(model / "gate_report.json", change)


def everything_forged(model: Path) -> None:
    """A careful forger: every rule loosened and every sign of a noisy timing removed, the checks recomputed with
    slimops' own gate code (a self-consistent passing report), and the validate manifest rewritten to match it
    (verdict, policy, metrics and the report's sha256). Only a signature (``$SLIMOPS_GATE_KEY``) can catch this."""
    from slimops.gate import GatePolicy, check, reasons, verdict

    def forge(report):
        report["policy"].update(max_metric_drop=1000.0, max_size_ratio=10.0, min_speedup=None, max_timing_spread=1e9)
        report["metrics"]["timing"]["contention"] = []
        rows = check(GatePolicy.model_validate(report["policy"]), report["metrics"])
        assert verdict(rows) == "pass", rows
        report.update(checks=rows, passed=True, verdict="pass", reasons=reasons(rows))
    edit_json(model / "gate_report.json", forge)
    report = json.loads((model / "gate_report.json").read_text())

    def change(manifest):
        manifest["gate"] = {"passed": True, "reasons": [], "verdict": "pass"}
        manifest["config"]["gate"] = report["policy"]
        manifest["metrics"] = report["metrics"]
        manifest["outputs"]["gate_report.json"] = _sha(model / "gate_report.json")
    edit_json(model / "manifest.json", change)


def model_bytes_changed(model: Path) -> None:
    path = model / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))


def file_added(model: Path) -> None:
    (model / "extra.onnx").write_bytes((model / "model.onnx").read_bytes())


def report_removed(model: Path) -> None:
    (model / "gate_report.json").unlink()


def report_not_json(model: Path) -> None:
    (model / "gate_report.json").write_text("{passed: true")


def report_is_a_list(model: Path) -> None:
    (model / "gate_report.json").write_text("[true]")


def manifest_removed(model: Path) -> None:
    (model / "manifest.json").unlink()


def manifest_records_other_report(model: Path) -> None:
    edit_json(model / "manifest.json", lambda m: m["outputs"].update({"gate_report.json": "0" * 64}))


def _copied_report(work: Path, bases) -> Invocation:
    model = copy_model(bases.get("digits_onnx"), work / "model")
    (model / "gate_report.json").write_bytes((bases.get("digits_validated") / "gate_report.json").read_bytes())
    return Invocation(_argv("register", model, work), out=work / "out", watch=[model], exit_code=3,
                      canary=work / "registry" / "mlflow.db")


def cases() -> list[Case]:
    key = {"SLIMOPS_GATE_KEY": "corpus-signing-key"}
    return [
        Case("evidence/failed-report-passed-true-register", _forge("digits_failed", passed_true)),
        Case("evidence/failed-report-passed-true-promote", _forge("digits_failed", passed_true, step="promote")),
        Case("evidence/failed-report-passed-true-deploy", _forge("digits_failed", passed_true, step="deploy")),
        Case("evidence/failed-report-no-reasons", _forge("digits_failed", passed_true_no_reasons)),
        Case("evidence/failed-report-checks-rewritten", _forge("digits_failed", checks_rewritten)),
        Case("evidence/failed-report-policy-loosened", _forge("digits_failed", policy_loosened)),
        Case("evidence/failed-report-metrics-faked", _forge("digits_failed", metrics_faked, step="promote")),
        Case("evidence/everything-forged-unsigned-with-key", _forge("digits_failed", everything_forged, env=key,
                                                                   stderr_has="signature")),
        Case("evidence/passed-model-bytes-changed", _forge("digits_validated", model_bytes_changed)),
        Case("evidence/passed-model-bytes-changed-deploy", _forge("digits_validated", model_bytes_changed,
                                                                  step="deploy")),
        Case("evidence/passed-file-added", _forge("digits_validated", file_added, step="promote")),
        Case("evidence/report-removed", _forge("digits_validated", report_removed)),
        Case("evidence/report-not-json", _forge("digits_validated", report_not_json)),
        Case("evidence/report-is-a-list", _forge("digits_validated", report_is_a_list, step="deploy")),
        Case("evidence/manifest-removed", _forge("digits_validated", manifest_removed)),
        Case("evidence/manifest-records-another-report", _forge("digits_validated", manifest_records_other_report)),
        Case("evidence/report-copied-onto-unvalidated-model", _copied_report),
    ]
