"""Class: resource bombs. Small inputs that expand (YAML aliases, zstd frames, declared sizes) or nest without
limit are refused by a bounded read, in seconds and without the memory they ask for: exit 2, one line."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np

from .corpus import Case, Invocation, copy_model, edit_json

BOMB_TIMEOUT = 10  # seconds, interpreter start included: unbounded, each of these takes minutes or gigabytes


def _laughs(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document body: level i is ``width`` aliases of level i-1 (width**levels values)."""
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _flow_laughs(levels: int = 9, width: int = 9) -> str:
    """The same bomb as one flow value, for --set."""
    items = ['&l0 "lol"'] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


RECIPE_HEAD = """name: bomb
model:
  factory: slimops.zoo.digits:DigitsCNN
  input_shape: [1, 8, 8]
steps:
  - step: export
"""


def _recipe(text: str, has: str):
    def build(work: Path, bases) -> Invocation:
        recipe = work / "recipe.yaml"
        recipe.write_text(text)
        return Invocation(["run", recipe, "--out", work / "run"], out=work / "run", watch=[recipe], stderr_has=has,
                          timeout=BOMB_TIMEOUT)
    return build


def _config(text: str, has: str):
    def build(work: Path, bases) -> Invocation:
        config = work / "config.yaml"
        config.write_text(text)
        model = bases.get("digits_trained")
        return Invocation(["step", "export", "--model", model, "--out", work / "out", "--config", config],
                          out=work / "out", watch=[model, config], stderr_has=has, timeout=BOMB_TIMEOUT)
    return build


def _set_bomb(work: Path, bases) -> Invocation:
    model = bases.get("digits_trained")
    return Invocation(["step", "export", "--model", model, "--out", work / "out", "--set", f"kwargs={_flow_laughs()}"],
                      out=work / "out", watch=[model], stderr_has="aliases", timeout=BOMB_TIMEOUT)


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    """A file of ``size`` bytes that takes no disk space (a hole after ``head``)."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


def _model_file(base: str, edit, has: str, step: str = "export", manifest: bool = True):
    """A copy of a base model with ``edit(model_dir)`` applied; ``step`` is run on it."""
    def build(work: Path, bases) -> Invocation:
        if base == "minilm_path":
            model = Path(shutil.copytree(bases.get(base), work / "model",
                                         ignore=shutil.ignore_patterns("model.safetensors")))
            shutil.copy(Path(bases.get("digits_trained")) / "model.safetensors", model / "model.safetensors")
        else:
            model = copy_model(bases.get(base), work / "model")
            if not manifest:
                (model / "manifest.json").unlink()
        edit(model)
        return Invocation(["step", step, "--model", model, "--out", work / "out"], out=work / "out", watch=[model],
                          stderr_has=has, timeout=BOMB_TIMEOUT)
    return build


def _deep_json(depth: int) -> str:
    return '{"architectures": ' + "[" * depth + "]" * depth + "}"


def _write(name: str, text: str):
    return lambda model: (model / name).write_text(text)


def _st_header(header: bytes, data: bytes = b"", length: int | None = None):
    def edit(model: Path):
        (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header) if length is None else length)
                                                  + header + data)
    return edit


def _st_huge_header(model: Path) -> None:
    size = 40 << 20
    _sparse(model / "model.safetensors", size, struct.pack("<Q", size - 8) + b'{"x": ')


def _zstd_bomb(model: Path) -> None:
    import zstandard

    (model / "model.onnx").unlink()
    (model / "manifest.json").unlink()
    zeros = bytes(8 << 20)
    with open(model / "model.onnx.zst", "wb") as handle, \
            zstandard.ZstdCompressor(level=1).stream_writer(handle) as writer:
        for _ in range(32):  # 256 MiB of zeros in ~10 KB
            writer.write(zeros)


def _onnx_example_huge(model: Path) -> None:
    import onnx

    proto = onnx.load(str(model / "model.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 1 << 20
    (model / "model.onnx").write_bytes(proto.SerializeToString())


def _npz_declared_huge(work: Path, bases) -> Invocation:
    """An .npz whose x.npy header declares 2^31 x 64 float32 values (512 GiB) over a few bytes of data."""
    data = work / "data.npz"
    with zipfile.ZipFile(data, "w") as archive, archive.open("x.npy", "w") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (2**31, 64)})
        handle.write(bytes(64))
    model = bases.get("digits_onnx")
    return Invocation(["step", "validate", "--model", model, "--baseline", model, "--out", work / "out",
                       "--set", "data.format=npz", "--set", f"data.path={data}", "--set", "measure_memory=false"],
                      out=work / "out", watch=[model, data], stderr_has="values", timeout=BOMB_TIMEOUT)


def cases() -> list[Case]:
    return [
        # YAML: recipes, --config files, --set values
        Case("bombs/yaml-billion-laughs", _recipe(RECIPE_HEAD + "description: x\nx:\n" +
                                                  "".join("  " + line + "\n" for line in _laughs().splitlines()),
                                                  "aliases")),
        Case("bombs/yaml-billion-laughs-top-level", _recipe(_laughs() + RECIPE_HEAD, "aliases")),
        Case("bombs/yaml-billion-laughs-config", _config(_laughs(), "aliases")),
        Case("bombs/yaml-billion-laughs-set", _set_bomb),
        Case("bombs/yaml-recursive-alias", _recipe(RECIPE_HEAD + "description: &d [1, *d]\n", "refers to")),
        Case("bombs/yaml-deep-nesting", _recipe(RECIPE_HEAD + "description: " + "[" * 200_000 + "]" * 200_000 + "\n",
                                                "nest")),
        Case("bombs/yaml-deep-block-nesting", _config("".join("  " * i + f"k{i}:\n" for i in range(200)) +
                                                      "  " * 200 + "v: 1\n", "nested")),
        Case("bombs/yaml-huge-file", _recipe(RECIPE_HEAD + "description: '" + "x" * (5 << 20) + "'\n", "MiB")),
        Case("bombs/yaml-many-values", _recipe(RECIPE_HEAD + "description: [" + "1," * 1_000_000 + "1]\n",
                                               "values")),
        Case("bombs/yaml-huge-integer", _recipe(RECIPE_HEAD + "threads: " + "9" * 100_000 + "\n", "cannot be read")),
        # JSON in a model directory
        Case("bombs/json-config-deep-nesting", _model_file("minilm_path", _write("config.json", _deep_json(100_000)),
                                                           "config.json")),
        Case("bombs/json-config-depth-500", _model_file("minilm_path", _write("config.json", _deep_json(500)),
                                                        "levels")),
        Case("bombs/json-tokenizer-config-huge", _model_file(
            "minilm_path", _write("tokenizer_config.json", json.dumps({"pad": "x" * (17 << 20)})), "MiB")),
        Case("bombs/json-tokenizer-json-huge", _model_file(
            "minilm_path", lambda m: _sparse(m / "tokenizer.json", 130 << 20, b'{"model": '), "MiB")),
        Case("bombs/json-architecture-huge", _model_file(
            "digits_trained", lambda m: edit_json(m / "architecture.json", lambda a: a.update(pad="x" * (17 << 20))),
            "MiB", manifest=False)),
        Case("bombs/json-architecture-deep", _model_file(
            "digits_trained", _write("architecture.json", '{"kwargs": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            "architecture.json", manifest=False)),
        Case("bombs/json-manifest-deep", _model_file(
            "digits_trained", _write("manifest.json", '{"model": ' + "[" * 100_000 + "]" * 100_000 + "}"),
            "manifest.json")),
        Case("bombs/json-manifest-huge", _model_file(
            "digits_trained", lambda m: _sparse(m / "manifest.json", 70 << 20, b'{"model": '), "manifest.json")),
        Case("bombs/architecture-input-shape-huge", _model_file(
            "digits_trained", lambda m: edit_json(m / "architecture.json",
                                                  lambda a: a.update(input_shape=[1, 100_000, 100_000])),
            "input_shape", manifest=False)),
        # safetensors headers
        Case("bombs/safetensors-header-length-2-63", _model_file("digits_trained", _st_header(b"{}", length=2**63),
                                                                 "longer than the file")),
        Case("bombs/safetensors-header-40mib", _model_file("digits_trained", _st_huge_header, "limit")),
        Case("bombs/safetensors-header-deep-json", _model_file(
            "digits_trained", _st_header(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "deep")),
        Case("bombs/safetensors-shape-2-62", _model_file(
            "digits_trained", _st_header(json.dumps({"w": {"dtype": "F32", "shape": [2**62, 2**62],
                                                           "data_offsets": [0, 16]}}).encode(), bytes(16)),
            "does not match")),
        # ONNX and packed ONNX
        Case("bombs/onnx-packed-zstd-bomb", _model_file("digits_onnx", _zstd_bomb, "expands", step="quantize")),
        Case("bombs/onnx-input-example-2-40", _model_file("digits_onnx", _onnx_example_huge, "per example",
                                                          step="quantize")),
        # data
        Case("bombs/npz-declared-512gib", _npz_declared_huge),
    ]
