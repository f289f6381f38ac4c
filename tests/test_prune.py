"""prune: unstructured magnitude pruning of a PyTorch module (digits) and a Hugging Face encoder (MiniLM).

What is checked is what is written: the zeros are counted in the output file, the output loads and
predicts, its task metric is measured, and the Hugging Face output exports to ONNX with parity.
"""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import accuracy_of, assert_bad_input, assert_outputs_match, run_cli, spearman_of
from slimops.core import run_step
from slimops.handlers import describe, load

# Measured on the session's DigitsCNN (channels=8, hidden=64, 6 epochs): 96.7% on the test split before
# and after 50% global pruning (drop 0.0 points); 50% per layer drops 5.1 points (the 72-weight first conv
# and the 640-weight last layer lose as much as the big one). Margin for other CPUs / torch builds: 2 points.
MAX_DIGITS_DROP_GLOBAL = 0.0 + 2.0
# MiniLM, 200 STS-B dev pairs, Spearman x100: 93.62 before, 93.38 after 30% global pruning (drop 0.25).
MAX_MINILM_DROP = 0.25 + 0.75


def prunable(state: dict) -> list[str]:
    """Linear / conv weights outside embeddings: what the step may touch (independent of its code)."""
    return [name for name, t in state.items()
            if name.endswith(".weight") and t.ndim in (2, 4) and "embed" not in name.lower()]


def zero_fraction(tensors) -> float:
    tensors = list(tensors)
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def files_of(model_dir) -> set[str]:
    return {str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def digits_pruned(tmp_path_factory, digits_trained):
    out = tmp_path_factory.mktemp("prune") / "digits-pruned"
    run_step("prune", digits_trained, out, {"sparsity": 0.5})
    return out


# ----------------------------------------------------------------------------- digits (PyTorch module)


def test_global_prune_digits(digits_trained, digits_pruned, digits_test):
    manifest = assert_outputs_match(digits_pruned)
    # Same format, same files, same description; the manifest chains to the trained model.
    assert files_of(digits_pruned) == files_of(digits_trained) == {"architecture.json", "model.safetensors"}
    assert describe(digits_pruned) == describe(digits_trained)
    assert manifest["model"]["format"] == "torch"
    parent = json.loads((digits_trained / "manifest.json").read_text())
    assert manifest["parent"]["step"] == "train" and manifest["parent"]["outputs"] == parent["outputs"]
    assert manifest["inputs"]["model"]["files"] == parent["outputs"]
    config = manifest["config"]
    assert {k: config[k] for k in ("mode", "method", "sparsity", "scope", "exclude")} == {
        "mode": "unstructured", "method": "magnitude", "sparsity": 0.5, "scope": "global", "exclude": []}
    assert config["amount"] is None and config["calibration"] is None  # structured options stay unset

    before, after = load_file(str(digits_trained / "model.safetensors")), load_file(str(digits_pruned / "model.safetensors"))
    names = prunable(before)
    assert sorted(names) == ["classifier.1.weight", "classifier.3.weight", "features.0.weight", "features.2.weight"]
    real = zero_fraction(after[n] for n in names)
    assert abs(real - 0.5) <= 0.01
    metrics = manifest["metrics"]
    assert metrics["target_sparsity"] == 0.5 and metrics["sparsity"] == pytest.approx(real)
    assert metrics["params_total"] == sum(t.numel() for t in after.values())
    assert metrics["zero_params"] == sum(int((t == 0).sum()) for t in after.values())
    assert metrics["overall_sparsity"] == pytest.approx(metrics["zero_params"] / metrics["params_total"])
    # Only the smallest weights went, the rest are untouched; biases are untouched.
    for name in names:
        kept = after[name] != 0
        assert (after[name][kept] == before[name][kept]).all()
    for name in set(before) - set(names):
        assert (after[name] == before[name]).all(), f"{name} changed"
    # One global threshold: every zeroed weight is no larger than every kept one, across tensors.
    largest_zeroed = max(float(before[n][after[n] == 0].abs().max()) for n in names)
    smallest_kept = min(float(before[n][after[n] != 0].abs().min()) for n in names)
    assert largest_zeroed <= smallest_kept
    per_tensor = {t["name"]: t["sparsity"] for t in manifest["details"]["tensors"]}
    assert set(per_tensor) == set(names)
    assert max(per_tensor.values()) - min(per_tensor.values()) > 0.1  # global: tensors differ
    assert "no time" in manifest["details"]["note"]

    # The pruned model loads and predicts; accuracy holds.
    logits = load(digits_pruned).predict(digits_test.inputs[:16])
    assert logits.shape == (16, 10)
    drop = accuracy_of(digits_trained, digits_test) - accuracy_of(digits_pruned, digits_test)
    assert drop <= MAX_DIGITS_DROP_GLOBAL, f"accuracy dropped {drop:.2f} points"


def test_layer_scope_prunes_each_tensor_alike(tmp_path, digits_trained, digits_test):
    out = tmp_path / "layer"
    manifest = run_step("prune", digits_trained, out, {"sparsity": 0.5, "scope": "layer"})
    assert_outputs_match(out)
    after = load_file(str(out / "model.safetensors"))
    for name in prunable(after):
        assert abs(zero_fraction([after[name]]) - 0.5) <= 0.01, name
    assert all(abs(t["sparsity"] - 0.5) <= 0.01 for t in manifest["details"]["tensors"])
    assert abs(manifest["metrics"]["sparsity"] - 0.5) <= 0.01
    assert load(out).predict(digits_test.inputs[:4]).shape == (4, 10)


def test_exclude_leaves_tensors_dense(tmp_path, digits_trained):
    out = tmp_path / "excluded"
    manifest = run_step("prune", digits_trained, out, {"sparsity": 0.6, "exclude": ["features.0", "classifier.3"]})
    before, after = load_file(str(digits_trained / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in ("features.0.weight", "classifier.3.weight"):
        assert (after[name] == before[name]).all(), f"{name} was pruned"
    pruned = ["features.2.weight", "classifier.1.weight"]
    assert abs(zero_fraction(after[n] for n in pruned) - 0.6) <= 0.01
    assert sorted(t["name"] for t in manifest["details"]["tensors"]) == sorted(pruned)
    assert sorted(manifest["details"]["excluded"]) == ["classifier.3.weight", "features.0.weight"]


# ----------------------------------------------------------------------------- MiniLM (Hugging Face)


def test_prune_minilm_then_export(tmp_path, minilm_path, sts_small):
    pruned = tmp_path / "minilm-pruned"
    manifest = run_step("prune", minilm_path, pruned, {"sparsity": 0.3})
    assert_outputs_match(pruned)
    # An HF directory again: every file carried, config identical, weights rewritten with their metadata.
    assert files_of(pruned) == files_of(minilm_path)
    assert (pruned / "config.json").read_bytes() == (minilm_path / "config.json").read_bytes()
    assert describe(pruned) == describe(minilm_path)
    with safe_open(str(pruned / "model.safetensors"), "pt") as handle:
        assert handle.metadata().get("format") == "pt"
    after = load_file(str(pruned / "model.safetensors"))
    names = prunable(after)
    assert len(names) == 6 * 6 + 1  # q, k, v, attention out, intermediate, output per layer; pooler
    assert abs(zero_fraction(after[n] for n in names) - 0.3) <= 0.01
    assert zero_fraction([after["embeddings.word_embeddings.weight"]]) < 0.001  # embeddings stay dense
    assert manifest["metrics"]["overall_sparsity"] < manifest["metrics"]["sparsity"]

    exported = tmp_path / "minilm-pruned-onnx"
    done = run_cli("step", "export", "--model", pruned, "--out", exported)
    assert done.returncode == 0, done.stderr
    export_manifest = assert_outputs_match(exported)
    assert export_manifest["metrics"]["parity_max_abs_diff"] < 1e-3
    assert export_manifest["parent"]["step"] == "prune"
    before, now = spearman_of(minilm_path, sts_small), spearman_of(exported, sts_small)
    assert before - now <= MAX_MINILM_DROP, f"Spearman {before:.2f} -> {now:.2f}"


# ----------------------------------------------------------------------------- bad input (CLI)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_sparsity_out_of_range(tmp_path, digits_trained, value):
    out = tmp_path / "out"
    done = run_cli("step", "prune", "--model", digits_trained, "--out", out, "--set", f"sparsity={value}")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "sparsity" in line


def test_missing_sparsity(tmp_path, digits_trained):
    out = tmp_path / "out"
    done = run_cli("step", "prune", "--model", digits_trained, "--out", out)
    assert "sparsity" in assert_bad_input(done.returncode, done.stderr, out)


def test_onnx_input_is_refused(tmp_path, digits_onnx):
    out = tmp_path / "out"
    done = run_cli("step", "prune", "--model", digits_onnx, "--out", out, "--set", "sparsity=0.5")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "prune runs before export" in line and "source model" in line


def test_excluding_everything_is_bad_input(tmp_path, digits_trained):
    out = tmp_path / "out"
    done = run_cli("step", "prune", "--model", digits_trained, "--out", out, "--set", "sparsity=0.5",
                   "--set", "exclude=[features, classifier]")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "nothing to prune" in line and "exclude" in line


def test_exclude_matching_nothing_is_bad_input(tmp_path, digits_trained):
    """A misspelt exclude entry would silently prune the layer it meant to protect."""
    out = tmp_path / "out"
    done = run_cli("step", "prune", "--model", digits_trained, "--out", out, "--set", "sparsity=0.5",
                   "--set", "exclude=[clasifier.3]")
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "'clasifier.3' matches no tensor" in line
