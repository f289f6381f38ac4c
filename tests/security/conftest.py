"""Bases for the hostile-input corpus: validated digits models (a passing and a failing gate)."""

from __future__ import annotations

from pathlib import Path

import pytest

FAST_VALIDATE = {"data": {"format": "digits", "split": "test", "limit": 120}, "rounds": 2, "latency_runs": 5,
                 "throughput_samples": 64, "measure_memory": False}


@pytest.fixture(scope="session")
def digits_int8(artifacts, digits_onnx) -> Path:
    from slimops.core import run_step

    out = artifacts / "security-int8"
    run_step("quantize", digits_onnx, out, {"mode": "dynamic"})
    return out


@pytest.fixture(scope="session")
def digits_validated(artifacts, digits_int8, digits_onnx) -> Path:
    """The INT8 digits model after a validate step whose gate passed."""
    from slimops.core import run_step

    out = artifacts / "security-validated"
    manifest = run_step("validate", digits_int8, out, {**FAST_VALIDATE, "gate": {"max_metric_drop": 50.0,
                                                                                  "min_speedup": None}},
                        {"baseline": digits_onnx})
    assert manifest["gate"]["passed"]
    return out


@pytest.fixture(scope="session")
def digits_failed(artifacts, digits_int8, digits_onnx) -> Path:
    """The INT8 digits model after a validate step whose gate failed (a size ratio no model meets)."""
    from slimops.core import run_step

    out = artifacts / "security-failed"
    outcome = run_step("validate", digits_int8, out, {**FAST_VALIDATE, "gate": {"max_size_ratio": 0.001,
                                                                                 "min_speedup": None}},
                       {"baseline": digits_onnx})
    assert outcome.status == "gate_failed"
    return out
