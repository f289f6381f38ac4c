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
