"""distill: teacher -> student on the CPU, for a PyTorch classifier (digits) and an HF encoder (MiniLM).

What is checked is what is written: the student directory loads with the ordinary handlers, its task metric is
measured here (not taken from the manifest), the HF student exports to ONNX with parity, an interrupted run
resumes from its checkpoint, and bad inputs exit 2 with nothing written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (EXAMPLES, STSB_DEV, accuracy_of, assert_bad_input, assert_outputs_match, cli_env, run_cli,
                      spearman_of)
from slimops.core import run_step
from slimops.handlers import describe, load

STSB_TRAIN = EXAMPLES / "data" / "stsb" / "sts-train.tsv"
MOBILENET = "slimops.zoo.digits:DigitsMobileNet"

# Measured (2 shared CPUs, torch 2.13): DigitsCNN teacher (channels=8, hidden=64; 18,346 params) 96.7% on the
# digits test split; DigitsMobileNet(channels=8) student (1,418 params) 92.4% after 200 steps (batch 64).
MIN_DIGITS_STUDENT_ACCURACY = 92.4 - 7.4
# MiniLM teacher 94.3 Spearman on 100 STS-B dev pairs; layers [0, 2, 4] student 76.6 untrained, 83.6 after
# 40 steps (batch 16) on 256 train sentences.
MIN_MINILM_STUDENT_SPEARMAN = 76.0


def digits_config(**extra) -> dict:
    return {"student": {"factory": MOBILENET, "kwargs": {"channels": 8}},
            "data": {"format": "digits", "split": "train"},
            "eval_data": {"format": "digits", "split": "test"},
            "max_steps": 200, "batch_size": 64, "eval_every": 25, **extra}


def minilm_config(**extra) -> dict:
    return {"student": {"layers": [0, 2, 4]},
            "data": {"format": "text", "path": str(STSB_TRAIN), "limit": 256},
            "eval_data": {"format": "sts", "path": str(STSB_DEV), "limit": 100},
            "max_steps": 30, "batch_size": 16, "eval_every": 15, **extra}


def ckpt_of(out: Path) -> Path:
    return out.parent / f".{out.name}.ckpt"


def no_pickles(model_dir: Path) -> None:
    assert not [p for p in model_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_distill_digits_mobilenet(tmp_path, digits_trained, digits_test):
    out = tmp_path / "student"
    manifest = run_step("distill", digits_trained, out, digits_config(), threads=2)
    assert_outputs_match(out)
    no_pickles(out)
    assert not ckpt_of(out).exists()
    info = describe(out)
    assert (info.format, info.factory, info.num_labels) == ("torch", MOBILENET, 10)
    assert json.loads((out / "architecture.json").read_text())["factory"] == MOBILENET

    student_accuracy = accuracy_of(out, digits_test)
    teacher_accuracy = accuracy_of(digits_trained, digits_test)
    metrics = manifest["metrics"]
    assert student_accuracy >= MIN_DIGITS_STUDENT_ACCURACY, metrics
    assert student_accuracy == pytest.approx(metrics["student_metric"], abs=1e-6)
    assert teacher_accuracy == pytest.approx(metrics["teacher_metric"], abs=1e-6)
    assert metrics["student_params"] < metrics["teacher_params"] / 5
    assert metrics["steps"] == 200 and 0 < metrics["best_step"] <= 200 and metrics["resumed_from_step"] == 0
    assert manifest["details"]["history"][0]["step"] == 0


def test_distill_minilm_layers(tmp_path, minilm_path):
    from slimops.data import DataSpec, load_dataset

    out = tmp_path / "minilm-3"
    manifest = run_step("distill", minilm_path, out, minilm_config(), threads=2)
    assert_outputs_match(out)
    no_pickles(out)
    assert not ckpt_of(out).exists()
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert (out / name).is_file(), name
    # the teacher's files are untouched (outputs are written, never through hard links)
    assert json.loads((minilm_path / "config.json").read_text())["num_hidden_layers"] == 6

    info = describe(out)
    assert (info.format, info.task, info.pooling, info.normalize) == ("hf", "sentence-embedding", "mean", True)
    assert load(out).predict(["a sentence", "another one"]).shape == (2, 384)
    dev = load_dataset(DataSpec(format="sts", path=str(STSB_DEV), limit=100))
    spearman = spearman_of(out, dev)
    metrics = manifest["metrics"]
    assert spearman == pytest.approx(metrics["student_metric"], abs=1e-3)
    assert spearman >= MIN_MINILM_STUDENT_SPEARMAN, metrics
    assert spearman >= manifest["details"]["history"][0]["spearman"] - 1e-6  # best checkpoint, never worse than start
    assert metrics["teacher_metric"] > spearman
    assert metrics["student_params"] < metrics["teacher_params"]

    exported = tmp_path / "minilm-3-onnx"
    result = run_cli("step", "export", "--model", out, "--out", exported, "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["parity_max_abs_diff"] <= 1e-3


def test_distill_resumes_after_kill(tmp_path, digits_trained, digits_test):
    out = tmp_path / "student"
    config = tmp_path / "distill.json"
    config.write_text(json.dumps(digits_config(max_steps=1500, batch_size=32, eval_every=20)))
    args = [sys.executable, "-m", "slimops", "step", "distill", "--model", str(digits_trained), "--out", str(out),
            "--config", str(config), "--threads", "1"]
    state = ckpt_of(out) / "state.json"
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        step = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file():
                try:
                    step = json.loads(state.read_text())["step"]
                except (OSError, ValueError):
                    step = 0
                if step > 0:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be interrupted; raise max_steps"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert step > 0 and not out.exists() and ckpt_of(out).is_dir()

    result = run_cli(*args[3:])
    assert result.returncode == 0, result.stderr
    manifest = assert_outputs_match(out)
    resumed = manifest["metrics"]["resumed_from_step"]
    assert resumed >= step > 0 and manifest["details"]["resumed_from_step"] == resumed
    assert manifest["metrics"]["steps"] <= 1500
    assert not ckpt_of(out).exists()
    assert not list(tmp_path.glob(".student.tmp-*"))
    assert accuracy_of(out, digits_test) >= MIN_DIGITS_STUDENT_ACCURACY


@pytest.mark.parametrize("planted", ["user_folder", "link", "link_inside"])
def test_a_checkpoint_folder_distill_did_not_write_is_refused_and_kept(tmp_path, digits_trained, planted):
    """distill deletes a stale or finished checkpoint folder (and old step folders in it): one it did not write,
    or a link to elsewhere, is bad input, and everything in it stays."""
    out = tmp_path / "student"
    elsewhere = tmp_path / "precious"
    (elsewhere / "step-00000001").mkdir(parents=True)
    (elsewhere / "notes.txt").write_text("mine")
    ckpt = ckpt_of(out)
    if planted == "user_folder":
        ckpt.mkdir()
        (ckpt / "notes.txt").write_text("mine")
    elif planted == "link":
        ckpt.symlink_to(elsewhere, target_is_directory=True)
    else:
        ckpt.mkdir()
        (ckpt / "step-00000002").symlink_to(elsewhere, target_is_directory=True)
    done = run_cli("step", "distill", "--model", digits_trained, "--out", out, "--threads", "1",
                   *[arg for key, value in digits_config(max_steps=20, eval_every=10).items()
                     for arg in ("--set", f"{key}={json.dumps(value)}")])
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "checkpoint folder for this --out" in line
    assert (elsewhere / "notes.txt").read_text() == "mine" and (elsewhere / "step-00000001").is_dir()
    if planted == "user_folder":
        assert (ckpt / "notes.txt").read_text() == "mine"


def test_checkpoint_of_other_config_is_not_resumed(tmp_path, digits_trained):
    out = tmp_path / "student"
    stale = ckpt_of(out)
    stale.mkdir()
    (stale / "state.json").write_text(json.dumps({"config_hash": "other", "latest": "step-00000010", "step": 10}))
    manifest = run_step("distill", digits_trained, out, digits_config(max_steps=20, eval_every=10), threads=1)
    assert manifest["metrics"]["resumed_from_step"] == 0
    assert manifest["details"]["stale_checkpoint_discarded"] is True
    assert not stale.exists()


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from slimops.distillation.checkpoint import flatten_optimizer, unflatten_optimizer

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    restored = torch.optim.AdamW(model.parameters(), lr=0.5)
    restored.load_state_dict(unflatten_optimizer(load_file(str(tmp_path / "optimizer.safetensors")),
                                                 json.loads(json.dumps(meta))))
    a, b = optimizer.state_dict(), restored.state_dict()
    assert b["param_groups"][0]["lr"] == 0.01
    for index, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key]))


@pytest.mark.parametrize("case", ["layer_out_of_range", "duplicate_layers", "empty_data", "onnx_teacher",
                                  "wrong_output_size", "limit_zero", "factory_for_encoder"])
def test_distill_bad_inputs(case, tmp_path, request):
    out = tmp_path / "out"
    if case in ("layer_out_of_range", "duplicate_layers", "empty_data", "factory_for_encoder"):
        teacher = request.getfixturevalue("minilm_path")
        config = minilm_config()
        if case == "layer_out_of_range":
            config["student"] = {"layers": [0, 2, 7]}
        elif case == "duplicate_layers":
            config["student"] = {"layers": [0, 2, 2]}
        elif case == "factory_for_encoder":
            config["student"] = {"factory": MOBILENET}
        else:
            empty = tmp_path / "empty.txt"
            empty.write_text("")
            config["data"] = {"format": "text", "path": str(empty)}
    else:
        teacher = request.getfixturevalue("digits_onnx" if case == "onnx_teacher" else "digits_trained")
        config = digits_config()
        if case == "wrong_output_size":
            config["student"]["kwargs"] = {"channels": 8, "num_classes": 5}
        elif case == "limit_zero":
            config["data"]["limit"] = 0
    config_file = tmp_path / "distill.json"
    config_file.write_text(json.dumps(config))
    result = run_cli("step", "distill", "--model", teacher, "--out", out, "--config", config_file, "--threads", "1")
    line = assert_bad_input(result.returncode, result.stderr, out)
    assert not ckpt_of(out).exists()
    expected = {
        "layer_out_of_range": "layer index 7 out of range for a 6-layer teacher",
        "duplicate_layers": "layer index 2 is listed twice",
        "empty_data": "holds no examples",
        "onnx_teacher": "is an onnx model",
        "wrong_output_size": "outputs shape [5]",
        "limit_zero": "limit",
        "factory_for_encoder": "give student.layers",
    }[case]
    assert expected in line, line


def test_encoder_student_copies_layers_and_narrows_ffn(minilm_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from slimops.errors import BadInput
    from slimops.distillation.students import encoder_student

    teacher = AutoModel.from_pretrained(str(minilm_path), use_safetensors=True).eval()
    encoded = AutoTokenizer.from_pretrained(str(minilm_path))(["A man is playing a guitar."], return_tensors="pt")
    with torch.inference_mode():
        full = encoder_student(teacher, list(range(6))).eval()  # every layer, in order: the teacher itself
        assert torch.allclose(full(**encoded).last_hidden_state, teacher(**encoded).last_hidden_state, atol=1e-5)
        narrow = encoder_student(teacher, [1, 3], intermediate_size=768).eval()
    assert narrow.config.num_hidden_layers == 2 and narrow.config.intermediate_size == 768
    layer = narrow.encoder.layer[1]
    assert layer.intermediate.dense.weight.shape == (768, 384) and layer.output.dense.weight.shape == (384, 768)
    assert torch.equal(layer.attention.self.query.weight, teacher.encoder.layer[3].attention.self.query.weight)
    with pytest.raises(BadInput, match="wider than the teacher's 1536"):
        encoder_student(teacher, [0], intermediate_size=4096)


# ----------------------------------------------------------------------------- student given as the input


def save_encoder_student(teacher_dir: Path, out: Path, layers: list[int] | None = None, hidden: int | None = None) -> Path:
    """An HF sentence-encoder directory derived from the teacher, as a structured-pruning step would write it."""
    import shutil

    from transformers import AutoModel

    from slimops.distillation.students import encoder_student

    teacher = AutoModel.from_pretrained(str(teacher_dir), use_safetensors=True)
    if hidden is None:
        student = encoder_student(teacher, layers)
    else:  # another width: the same tokenizer, embeddings of another size
        config = teacher.config.__class__(**{**teacher.config.to_dict(), "hidden_size": hidden,
                                             "num_attention_heads": 2, "num_hidden_layers": 1})
        student = AutoModel.from_config(config)
    shutil.copytree(teacher_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "config.json", "manifest.json"))
    student.save_pretrained(str(out), safe_serialization=True)
    return out


def test_distill_from_input_recovers_a_classifier(tmp_path, digits_trained, digits_test):
    """The recovery fine-tune after pruning: the input is the student, the teacher comes in as --baseline."""
    weak = tmp_path / "weak"
    run_step("distill", digits_trained, weak, digits_config(max_steps=10, eval_every=10), threads=1)
    recovered = tmp_path / "recovered"
    config = digits_config(max_steps=150, eval_every=50)
    config["student"] = {"from_input": True}
    manifest = run_step("distill", weak, recovered, config, inputs={"baseline": digits_trained}, threads=1)
    assert_outputs_match(recovered)
    assert json.loads((recovered / "architecture.json").read_text())["factory"] == MOBILENET
    assert manifest["inputs"]["baseline"]["path"] == str(digits_trained.absolute())
    before, after = accuracy_of(weak, digits_test), accuracy_of(recovered, digits_test)
    assert after >= before + 5, (before, after)
    assert manifest["metrics"]["teacher_metric"] == pytest.approx(accuracy_of(digits_trained, digits_test), abs=1e-6)
    assert manifest["metrics"]["student_params"] == manifest["metrics"]["student_trainable_params"] < 5000


def test_distill_from_input_encoder(tmp_path, minilm_path):
    student = save_encoder_student(minilm_path, tmp_path / "dropped", layers=[0, 5])
    out = tmp_path / "recovered"
    config = minilm_config(max_steps=30, eval_every=15)
    config["student"] = {"from_input": True}
    config_file = tmp_path / "distill.json"
    config_file.write_text(json.dumps(config))
    result = run_cli("step", "distill", "--model", student, "--baseline", minilm_path, "--out", out,
                     "--config", config_file, "--threads", "2")
    assert result.returncode == 0, result.stderr
    manifest = assert_outputs_match(out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    history = manifest["details"]["history"]
    # 30 steps from the copied layers gain points (measured: 80.2 -> ~83 on 100 dev pairs)
    assert manifest["metrics"]["student_metric"] >= history[0]["spearman"] + 1.0, history
    from slimops.data import DataSpec, load_dataset

    dev = load_dataset(DataSpec(format="sts", path=str(STSB_DEV), limit=100))
    assert spearman_of(out, dev) == pytest.approx(manifest["metrics"]["student_metric"], abs=1e-3)


@pytest.mark.parametrize("case", ["no_teacher", "kind_mismatch", "other_width", "layers_and_from_input",
                                  "ffn_without_layers", "ffn_wider"])
def test_distill_student_bad_inputs(case, tmp_path, request):
    minilm = request.getfixturevalue("minilm_path")
    out = tmp_path / "out"
    config = minilm_config()
    args = ["--model", minilm]
    if case == "no_teacher":
        config["student"] = {"from_input": True}
    elif case == "kind_mismatch":
        config["student"] = {"from_input": True}
        args = ["--model", request.getfixturevalue("digits_trained"), "--baseline", minilm]
    elif case == "other_width":
        config["student"] = {"from_input": True}
        args = ["--model", save_encoder_student(minilm, tmp_path / "narrow", hidden=128), "--baseline", minilm]
    elif case == "layers_and_from_input":
        config["student"] = {"layers": [0, 5], "from_input": True}
    elif case == "ffn_without_layers":
        config["student"] = {"from_input": True, "intermediate_size": 768}
    else:
        config["student"] = {"layers": [0, 5], "intermediate_size": 4096}
    config_file = tmp_path / "distill.json"
    config_file.write_text(json.dumps(config))
    result = run_cli("step", "distill", *args, "--out", out, "--config", config_file, "--threads", "1")
    line = assert_bad_input(result.returncode, result.stderr, out)
    assert not ckpt_of(out).exists()
    expected = {
        "no_teacher": "give the teacher as --baseline DIR",
        "kind_mismatch": "distill between models of one kind",
        "other_width": "the student's embeddings have 128 dimensions, the teacher's 384",
        "layers_and_from_input": "not layers + from_input",
        "ffn_without_layers": "intermediate_size applies to encoder students (with 'layers') only",
        "ffn_wider": "wider than the teacher's 1536",
    }[case]
    assert expected in line, line
