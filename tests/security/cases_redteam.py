"""Found by a red-team pass over the CLI: odd-but-valid models, registry directories and CLI values."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .corpus import Case, Invocation

DIGITS_TEST = '{"format": "digits", "split": "test", "limit": 20}'


def _onnx(kind: str):
    """A small ONNX model of a shape a tensor classifier cannot have, built with onnx.helper."""
    def build(work: Path, bases) -> Invocation:
        import onnx
        from onnx import TensorProto, helper

        model_dir = work / "model"
        model_dir.mkdir()
        elem = {"int8-input": TensorProto.INT8, "string-input": TensorProto.STRING}.get(kind, TensorProto.FLOAT)
        out_elem = TensorProto.STRING if kind == "string-output" else TensorProto.FLOAT
        inputs = [] if kind == "no-input" else [helper.make_tensor_value_info("x", elem, ["N", 1, 8, 8])]
        if kind == "no-input":
            node = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("c", TensorProto.FLOAT, [1, 10],
                                                                                     [0.0] * 10))
        elif kind == "string-output":
            node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)
        else:
            node = helper.make_node("Identity", ["x"], ["y"])
        out_shape = ["N", 1, 8, 8] if kind in ("string-output", "rank4-output", "int8-input", "string-input") \
            else [1, 10]
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", out_elem, out_shape)])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model_dir / "model.onnx"))
        return Invocation(["step", "validate", "--model", model_dir, "--baseline", bases.get("digits_onnx"),
                           "--out", work / "out", "--set", f"data={DIGITS_TEST}"], out=work / "out",
                          watch=[model_dir])
    return build


def _device_model(work: Path, bases) -> Invocation:
    return Invocation(["step", "quantize", "--model", "/dev/null", "--out", work / "out"], out=work / "out",
                      stderr_has="not a directory")


def _registry_link(name: str):
    """A registry directory whose serving/ or audit.jsonl links elsewhere: promote must not write through it."""
    def build(work: Path, bases) -> Invocation:
        registry = work / "registry"
        registry.mkdir()
        (registry / "registry.json").write_text('{"tracking_uri": "sqlite:///%s/mlflow.db"}' % registry)
        elsewhere = work / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "victim.txt").write_text("user file\n")
        os.symlink(elsewhere if name == "serving" else elsewhere / "victim.txt", registry / name)
        return Invocation(["promote", "--registry", registry, "--version", "1"], watch=[elsewhere, registry],
                          stderr_has="symbolic link")
    return build


def _version(value: str):
    def build(work: Path, bases) -> Invocation:
        registry = work / "registry"
        registry.mkdir()
        (registry / "registry.json").write_text('{"tracking_uri": "sqlite:///%s/mlflow.db"}' % registry)
        return Invocation(["promote", "--registry", registry, "--version", value], watch=[registry],
                          stderr_has="version")
    return build


def _source_kwargs(kwargs: str):
    def build(work: Path, bases) -> Invocation:
        return Invocation(["source", "--out", work / "src", "--set", "factory=slimops.zoo.digits:DigitsCNN",
                           "--set", "input_shape=[1,8,8]", "--set", f"kwargs={kwargs}"], out=work / "src")
    return build


def _long_out(work: Path, bases) -> Invocation:
    model = Path(shutil.copytree(bases.get("digits_onnx"), work / "model"))
    return Invocation(["step", "quantize", "--model", model, "--out", work / ("y" * 5000)], watch=[model],
                      stderr_has="too long")


def cases() -> list[Case]:
    return [
        *[Case(f"redteam/onnx-{kind}", _onnx(kind)) for kind in
          ("no-input", "int8-input", "string-input", "string-output", "rank4-output")],
        Case("redteam/model-is-a-device", _device_model),
        Case("redteam/registry-serving-is-a-link", _registry_link("serving")),
        Case("redteam/registry-audit-is-a-link", _registry_link("audit.jsonl")),
        *[Case(f"redteam/promote-version-{i}", _version(v)) for i, v in
          enumerate(("0", "abc", "1 OR 1=1", "99999999999999999999999", "１"))],
        *[Case(f"redteam/source-kwargs-{i}", _source_kwargs(k)) for i, k in
          enumerate(('{"channels": -4}', '{"bogus": 1}', '{"channels": "4"}'))],
        Case("redteam/out-name-too-long", _long_out),
    ]
