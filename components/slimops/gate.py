"""The gate: a policy from the recipe, checked against baseline and candidate measured in the same run."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimops.errors import GateFailed
from slimops.manifest import MANIFEST, hash_tree, strict_json


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_metric_drop: float | None = Field(1.0, ge=0, description="max drop of the task metric, in points (x100 scale); for perplexity (lower is better) its max increase")
    max_relative_metric_drop: float | None = Field(None, ge=0, le=1, description="max drop as a fraction of the baseline metric (perplexity: max relative increase)")
    min_speedup: float | None = Field(1.0, gt=0, description="min batch throughput ratio candidate/baseline; fails 'smaller but not faster'")
    max_size_ratio: float | None = Field(None, gt=0, description="max size on disk candidate/baseline")
    max_p95_latency_ms: float | None = Field(None, gt=0, description="max batch-1 p95 latency of the candidate")
    min_fidelity: float | None = Field(None, description="min mean cosine to the baseline embeddings, or top-1 agreement % (token-classification: per-word tag agreement %; question-answering: answer-span agreement %)")
    confidence: float | None = Field(None, ge=0.5, lt=1, description="metric drops pass only when the upper end of "
                                     "their paired-bootstrap interval at this level is within the limit (e.g. 0.95); "
                                     "also the level of the speedup interval (default 0.95)")
    max_timing_spread: float = Field(0.5, ge=0, description="speed rules are inconclusive when AB+BA timing pairs "
                                     "disagree more than this (interquartile range of per-pair speedups / their median)")


RULES = ("max_metric_drop", "max_relative_metric_drop", "min_speedup", "max_size_ratio", "max_p95_latency_ms",
         "min_fidelity")
SPEED_CONFIDENCE = 0.95  # the speedup interval's level when the policy sets no confidence


def check(policy: GatePolicy, m: dict) -> list[dict]:
    """One row per active rule: the limit, the value judged, and its status (pass, fail or inconclusive).

    - A metric drop is judged by its point value, or with ``confidence`` by the upper end of its interval.
    - The speedup passes when its whole interval is at or above the limit, fails when the whole interval is
      below, and is inconclusive when the interval straddles it.
    - Speed rules (speedup, p95 latency) are inconclusive when the machine was contended while timing or the
      AB+BA timing pairs disagreed more than ``max_timing_spread``: their numbers would follow the load, not the models.
    """
    timing = m.get("timing") or {}
    noisy = [*timing.get("contention", [])]
    if m.get("timing_spread") is not None and m["timing_spread"] > policy.max_timing_spread:
        noisy.append(f"AB+BA timing pairs disagree by {m['timing_spread']:.2f} (interquartile range / median), over "
                     f"max_timing_spread {policy.max_timing_spread:g}")
    drop_bound = 1 if policy.confidence else None
    rules = [
        ("metric_drop", policy.max_metric_drop, m["metric_drop"], "<=", drop_bound and m.get("metric_drop_ci")),
        ("relative_metric_drop", policy.max_relative_metric_drop, m["relative_metric_drop"], "<=",
         drop_bound and m.get("relative_metric_drop_ci")),
        ("speedup", policy.min_speedup, m["speedup"], ">=", m.get("speedup_ci")),
        ("size_ratio", policy.max_size_ratio, m["size_ratio"], "<=", None),
        ("p95_latency_ms", policy.max_p95_latency_ms, m["candidate_p95_ms"], "<=", None),
        ("fidelity", policy.min_fidelity, m.get("fidelity"), ">=", None),
    ]
    rows = []
    for name, limit, value, op, interval in rules:
        if limit is None:
            continue
        row = {"check": name, "limit": limit, "op": op, "value": value}
        ok = (lambda v: v is not None and (v <= limit if op == "<=" else v >= limit))
        if interval and name in ("metric_drop", "relative_metric_drop"):
            row["interval"] = interval  # the drop must be within the limit even at the interval's upper end
            status = "pass" if ok(interval[1]) else "fail"
        elif interval:
            row["interval"] = interval
            status = "pass" if ok(interval[0]) else "fail" if not ok(interval[1]) else "inconclusive"
        else:
            status = "pass" if ok(value) else "fail"
        if name in ("speedup", "p95_latency_ms") and noisy:
            status, row["noise"] = "inconclusive", noisy
        row.update(status=status, passed=status == "pass")
        rows.append(row)
    return rows


def verdict(rows: list[dict]) -> str:
    """fail if any rule surely fails (measuring again would not help), else inconclusive if any could not be
    decided, else pass."""
    statuses = {row.get("status", "pass" if row["passed"] else "fail") for row in rows}
    return "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"


def reasons(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        if row["passed"]:
            continue
        interval = row.get("interval")
        shown = f"{_fmt(row['value'])}" + (f" [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else "")
        if row.get("noise"):
            out.append(f"{row['check']} {shown} cannot be judged: " + "; ".join(row["noise"]))
        elif row.get("status") == "inconclusive":
            out.append(f"{row['check']} {shown}: the interval straddles the limit {_fmt(row['limit'])}")
        elif interval and row["check"].endswith("metric_drop"):
            out.append(f"{row['check']} {shown}: the interval's upper end is not {row['op']} {_fmt(row['limit'])}")
        else:
            out.append(f"{row['check']} {shown} is not {row['op']} {_fmt(row['limit'])}")
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


SIGNING_KEY_ENV = "SLIMOPS_GATE_KEY"
REPORT = "gate_report.json"


def sign(report: dict) -> dict:
    """``report`` with an HMAC-SHA256 signature when ``$SLIMOPS_GATE_KEY`` is set (else unchanged)."""
    key = os.environ.get(SIGNING_KEY_ENV)
    if not key:
        return report
    return {**report, "signature": {"alg": "hmac-sha256", "value": _mac(key, report)}}


def _mac(key: str, report: dict) -> str:
    body = {k: v for k, v in report.items() if k != "signature"}
    canonical = json.dumps(strict_json(body), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def require_passing_gate(model_dir) -> dict:
    """The gate report of a validated model directory, if its evidence holds together and the gate passed.

    promote, register and deploy call this before they touch a registry or an endpoint. The report is not
    taken at its word: GateFailed (exit 3, saying what differs) unless
    - the report passed, and its verdict, checks and reasons follow from its own policy and measurements;
    - it is byte for byte the report the validate step recorded (the sha256 in every manifest from this
      directory's back to validate's), and validate's manifest holds the same verdict, policy and metrics;
    - the files are the ones validated (sha256 of each);
    - with ``$SLIMOPS_GATE_KEY`` set, its HMAC signature is valid.
    """
    model_dir = Path(model_dir)
    report_path = model_dir / REPORT
    if not report_path.is_file():
        raise GateFailed(f"{model_dir} has no {REPORT}; only the output of a validate step whose gate "
                         "passed can be promoted or deployed")
    report = _load_report(report_path)
    if report.get("passed") is not True:
        if report.get("verdict") == "inconclusive":
            raise GateFailed(f"{model_dir}: the gate was inconclusive ({'; '.join(map(str, report.get('reasons') or []))[:300]}); "
                             "an undecided model is never promoted: validate it again on a quiet machine")
        raise GateFailed(f"{model_dir}: the gate failed ({'; '.join(map(str, report.get('reasons') or []))[:300] or 'no reason given'}); "
                         "a failed model is never promoted")
    _check_verdict(report, report_path)
    _check_recorded(model_dir, report_path, report)
    expected = report.get("candidate_files") or {}
    actual = hash_tree(model_dir, skip=(MANIFEST, REPORT))
    if expected != actual:
        names = sorted(n for n in set(expected) | set(actual) if expected.get(n) != actual.get(n))
        raise GateFailed(f"{model_dir}: files differ from the ones the gate passed ({', '.join(names[:5])[:200]}); "
                         "validate this exact artifact again")
    key = os.environ.get(SIGNING_KEY_ENV)
    if key:
        signature = report.get("signature") if isinstance(report.get("signature"), dict) else {}
        if not hmac.compare_digest(str(signature.get("value", "")), _mac(key, report)):
            raise GateFailed(f"{report_path}: the signature is missing or invalid for ${SIGNING_KEY_ENV}; "
                             "validate the model again with the same key")
    return report


def _load_report(path: Path) -> dict:
    if path.stat().st_size > 64 << 20:
        raise GateFailed(f"{path} is larger than 64 MiB; it is not a report validate wrote")
    try:
        report = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        raise GateFailed(f"{path} is not valid JSON; validate the model again") from None
    if not isinstance(report, dict):
        raise GateFailed(f"{path} is not a gate report; validate the model again")
    return report


def _check_verdict(report: dict, path: Path) -> None:
    """The verdict must follow from the report's own rules and measurements."""
    try:
        policy = GatePolicy.model_validate(report.get("policy"))
        rows = check(policy, report.get("metrics") or {})
    except (ValidationError, KeyError, TypeError):
        raise GateFailed(f"{path}: its policy or metrics are not what validate writes; validate the model again") from None
    if rows != report.get("checks"):
        raise GateFailed(f"{path}: its checks do not follow from its policy and metrics; the report was edited, "
                         "validate the model again")
    if verdict(rows) != "pass" or report.get("verdict") != "pass" or reasons(rows) != report.get("reasons"):
        raise GateFailed(f"{path}: 'passed' does not follow from its own checks ({'; '.join(reasons(rows))[:200]}); "
                         "the report was edited, validate the model again")


def _check_recorded(model_dir: Path, path: Path, report: dict) -> None:
    """The report is the one validate wrote: each manifest down the lineage to validate's records its sha256."""
    from slimops.manifest import read_manifest, sha256_file

    sha = sha256_file(path)
    try:
        manifest = read_manifest(model_dir)
    except Exception:
        manifest = None
    while manifest is not None:
        recorded = (manifest.get("outputs") or {}).get(REPORT)
        if recorded != sha:
            raise GateFailed(f"{path} (sha256 {sha[:12]}) is not the report the {manifest.get('step', '?')} step "
                             f"recorded ({str(recorded)[:12]}); the report was edited, validate the model again")
        if manifest.get("gate") is not None:
            gate = manifest["gate"]
            config_gate = (manifest.get("config") or {}).get("gate")
            if (gate.get("passed") is not True or gate.get("reasons") != report.get("reasons")
                    or config_gate != report.get("policy") or manifest.get("metrics") != report.get("metrics")):
                raise GateFailed(f"{path}: the {manifest.get('step')} manifest records another verdict, policy or "
                                 "metrics; validate the model again")
            return
        manifest = manifest.get("parent") if isinstance(manifest.get("parent"), dict) else None
    raise GateFailed(f"{model_dir}: no manifest records the validate step that wrote {REPORT}; only the output "
                     "of a validate step (or of register/promote after it) can be promoted")
