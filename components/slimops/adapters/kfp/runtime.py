"""What a slimops Python component runs inside its KFP task. No ``kfp`` import, no compression logic.

The component bodies (``python_steps.py``) hand KFP's artifact objects to these functions, which call the same
core as every other runner (``slimops.plan.run_call``, ``slimops.runner.materialize_source``) and copy the
step's numeric metrics onto the ``Metrics`` artifact so the KFP UI shows them.
"""

from __future__ import annotations

import json
from pathlib import Path

from slimops.errors import BadInput, GateFailed, GateInconclusive


def _options(text: str, what: str) -> dict:
    # Options travel as a JSON string, not a dict parameter: KFP passes dicts through protobuf Struct, which
    # turns every int into a float (epochs 10 -> 10.0, factory kwargs channels 32 -> 32.0).
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise BadInput(f"{what} is not valid JSON ({err.msg}); pass json.dumps(...) of a mapping") from None
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a JSON object of option: value, got {type(value).__name__}")
    return value


def log_metrics(metrics, manifest: dict) -> None:
    """Numeric scalars of the step's manifest metrics (lists, strings and booleans stay in the manifest)."""
    for name, value in sorted((manifest.get("metrics") or {}).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, value)


def run_step_task(step: str, model, output_model, metrics, config: str, recipe_dir: str, threads: int,
                  baseline=None, passed_path: str | None = None, on_gate_fail: str = "exit", report=None) -> None:
    """One recipe step on KFP artifacts. A failed gate writes ``passed`` = false, then fails the task unless
    ``on_gate_fail`` is ``continue`` (the pipeline's gate, which branches on ``passed`` instead). An inconclusive
    gate always fails the task (GateInconclusive), whatever ``on_gate_fail`` says. ``report`` (an HTML artifact)
    gets the gate's report.html, passed or failed."""
    from slimops.plan import StepCall, run_call

    call = StepCall(id=step, step=step, input="model", baseline=None if baseline is None else "baseline",
                    config=_options(config, f"{step} config"), after_gate=False)
    outcome = run_call(call, model.path, output_model.path, None if baseline is None else baseline.path,
                       recipe_dir=recipe_dir or ".", threads=threads or None)
    if outcome.status == "refused":
        raise GateFailed(outcome.reasons[0])
    if outcome.status == "inconclusive":
        # Not a verdict: the task fails (before writing `passed`, so neither branch runs) and KFP's retry policy
        # runs the gate again after its backoff.
        raise GateInconclusive(f"gate inconclusive ({step}): " + "; ".join(outcome.reasons), outcome.report)
    log_metrics(metrics, outcome.manifest)
    if report is not None:
        from slimops.adapters.kfp.gate_report import write_html_report

        write_html_report(output_model.path, report.path)
    output_model.metadata["slimops_step"] = step
    if outcome.passed is not None:
        output_model.metadata["gate_passed"] = outcome.passed
    if passed_path is not None:
        Path(passed_path).parent.mkdir(parents=True, exist_ok=True)
        Path(passed_path).write_text("true" if outcome.passed else "false")
    if outcome.status == "gate_failed" and on_gate_fail != "continue":
        raise GateFailed(f"gate failed ({step}): " + "; ".join(outcome.reasons))


def materialize(spec: str, output_model, recipe_dir: str) -> None:
    """The recipe's model section (a package, a path, or a seeded factory) as a model directory."""
    from slimops.runner import materialize_source

    materialize_source(_options(spec, "model spec"), Path(output_model.path), base=Path(recipe_dir or "."))
    output_model.metadata["slimops_step"] = "source"
