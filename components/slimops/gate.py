"""The gate: a policy from the recipe, checked against baseline and candidate measured in the same run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_metric_drop: float | None = Field(1.0, ge=0, description="max drop of the task metric, in points (x100 scale)")
    max_relative_metric_drop: float | None = Field(None, ge=0, le=1, description="max drop as a fraction of the baseline metric")
    min_speedup: float | None = Field(1.0, gt=0, description="min batch throughput ratio candidate/baseline; fails 'smaller but not faster'")
    max_size_ratio: float | None = Field(None, gt=0, description="max size on disk candidate/baseline")
    max_p95_latency_ms: float | None = Field(None, gt=0, description="max batch-1 p95 latency of the candidate")
    min_fidelity: float | None = Field(None, description="min mean cosine to the baseline embeddings, or top-1 agreement %")


def check(policy: GatePolicy, m: dict) -> list[dict]:
    """One row per active rule: what was checked, the limit, the measured value, pass/fail."""
    rules = [
        ("metric_drop", policy.max_metric_drop, m["metric_drop"], "<="),
        ("relative_metric_drop", policy.max_relative_metric_drop, m["relative_metric_drop"], "<="),
        ("speedup", policy.min_speedup, m["speedup"], ">="),
        ("size_ratio", policy.max_size_ratio, m["size_ratio"], "<="),
        ("p95_latency_ms", policy.max_p95_latency_ms, m["candidate_p95_ms"], "<="),
        ("fidelity", policy.min_fidelity, m.get("fidelity"), ">="),
    ]
    rows = []
    for name, limit, value, op in rules:
        if limit is None:
            continue
        passed = value is not None and (value <= limit if op == "<=" else value >= limit)
        rows.append({"check": name, "limit": limit, "op": op, "value": value, "passed": passed})
    return rows


def reasons(rows: list[dict]) -> list[str]:
    return [f"{r['check']} {_fmt(r['value'])} is not {r['op']} {_fmt(r['limit'])}" for r in rows if not r["passed"]]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def require_passing_gate(model_dir) -> dict:
    """The gate report of a validated model directory, if it passed and still describes these exact files.

    promote and deploy call this before they touch a registry or an endpoint: a model without a report, with a
    failed report, or whose files changed after validation (hashes differ) raises GateFailed (exit 3).
    """
    import json
    from pathlib import Path

    from slimops.errors import GateFailed
    from slimops.manifest import MANIFEST, hash_tree

    model_dir = Path(model_dir)
    report_path = model_dir / "gate_report.json"
    if not report_path.is_file():
        raise GateFailed(f"{model_dir} has no gate_report.json; only the output of a validate step whose gate "
                         "passed can be promoted or deployed")
    report = json.loads(report_path.read_text())
    if not report.get("passed"):
        raise GateFailed(f"{model_dir}: the gate failed ({'; '.join(report.get('reasons', [])) or 'no reason given'}); "
                         "a failed model is never promoted", report_path=report_path)
    expected = report.get("candidate_files") or {}
    actual = hash_tree(model_dir, skip=(MANIFEST, "gate_report.json"))
    if expected != actual:
        changed = sorted(set(expected.items()) ^ set(actual.items()))
        names = sorted({name for name, _ in changed})
        raise GateFailed(f"{model_dir}: files differ from the ones the gate passed ({', '.join(names[:5])}); "
                         "validate this exact artifact again", report_path=report_path)
    return report
