"""NaN never becomes a gate verdict: a metric that is not a number is bad input (exit 2), not a pass or a fail.

(An ordinary test, not a corpus case: validate prints its progress lines before the model outputs are known.)
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_bad_input, link_tree, run_cli

from slimops.data import Dataset
from slimops.errors import BadInput
from slimops.evaluate import fidelity, task_metrics

FAST = ["--set", "data.format=digits", "--set", "data.split=test", "--set", "data.limit=40",
        "--set", "measure_memory=false", "--set", "latency_runs=5", "--set", "rounds=1", "--set", "gate.min_speedup=null"]


def test_validate_refuses_a_candidate_with_nan_outputs(digits_onnx, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = tmp_path / "nan-model"
    link_tree(digits_onnx, model)
    proto = onnx.load(str(model / "model.onnx"))
    bias = proto.graph.initializer[-1]
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, np.nan, np.float32), bias.name))
    (model / "model.onnx").unlink()  # a hard link to the session artifact: replace, never write through
    (model / "model.onnx").write_bytes(proto.SerializeToString())
    out = tmp_path / "out"
    done = run_cli("step", "validate", "--model", model, "--baseline", digits_onnx, "--out", out, *FAST)
    error = done.stderr.strip().splitlines()[-1]  # after validate's progress lines
    assert_bad_input(done.returncode, error, out)
    assert "NaN" in error and "gate" not in error.split(";")[0]
    assert not (out / "gate_report.json").exists()


def _sts(scores, pairs=None) -> Dataset:
    pairs = pairs or [(2 * i, 2 * i + 1) for i in range(len(scores))]
    return Dataset(inputs=[f"s{i}" for i in range(2 * len(scores))], pairs=pairs,
                   scores=np.asarray(scores, dtype=np.float64))


def test_spearman_of_identical_similarities_is_refused():
    outputs = np.ones((8, 4), dtype=np.float32)  # every pair has cosine 1: no ranking
    with pytest.raises(BadInput, match="same similarity"):
        task_metrics(outputs, _sts([1.0, 2.0, 3.0, 4.0]))


def test_spearman_of_constant_gold_scores_is_refused():
    outputs = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    with pytest.raises(BadInput, match="do not vary"):
        task_metrics(outputs, _sts([2.0, 2.0, 2.0, 2.0]))


def test_metrics_on_nan_outputs_are_refused():
    outputs = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    outputs[3, 1] = np.nan
    with pytest.raises(BadInput, match="NaN"):
        task_metrics(outputs, _sts([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(BadInput, match="NaN"):
        fidelity(outputs, outputs, "sentence-embedding")


def test_finite_metrics_pass():
    outputs = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    assert np.isfinite(task_metrics(outputs, _sts([1.0, 2.0, 3.0, 4.0]))["spearman"])
