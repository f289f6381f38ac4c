"""Class: malformed input. Corrupt weights, graphs, tokenizers, data and options exit 2 with one line naming the
file (or option) and what is wrong; no library sees them first, nothing is written, no traceback."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from .corpus import Case, Invocation, copy_model, edit_json

# ----------------------------------------------------------------------------- building blocks


def _torch(work: Path, bases, manifest: bool = True) -> Path:
    model = copy_model(bases.get("digits_trained"), work / "model")
    if not manifest:
        (model / "manifest.json").unlink()  # described from architecture.json
    return model


def _hf(work: Path, bases, weights: bool = True) -> Path:
    """A private copy of the packaged MiniLM (a read-only package directory); without its 90 MB weights when the
    case writes its own."""
    ignore = None if weights else shutil.ignore_patterns("model.safetensors")
    return Path(shutil.copytree(bases.get("minilm_path"), work / "model", ignore=ignore))


def _onnx(work: Path, bases) -> Path:
    return copy_model(bases.get("digits_onnx"), work / "model")


def _step(step: str, model: Path, work: Path, has: str, *extra, **kw) -> Invocation:
    out = work / "out"
    return Invocation(["step", step, "--model", model, "--out", out, *extra], out=out, watch=[model],
                      stderr_has=has, **kw)


def _st_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _st_write(path: Path, header, data: bytes, length: int | None = None) -> None:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)


def _safetensors(change, has: str, hf: bool = False, manifest: bool = True):
    """Rewrite the weights of the digits torch model (or of MiniLM) with ``change(header, data) -> bytes``."""
    def build(work: Path, bases) -> Invocation:
        if hf:
            model = _hf(work, bases, weights=False)
            source = Path(bases.get("minilm_path")) / "model.safetensors"
        else:
            model = _torch(work, bases, manifest)
            source = model / "model.safetensors"
        header, data = _st_parts(source)
        (model / "model.safetensors").write_bytes(change(header, data))
        return _step("export", model, work, has)
    return build


def _st(header, data, length=None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def _first_tensor(header: dict) -> str:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[0]


def _set_entry(header: dict, **fields) -> dict:
    header[_first_tensor(header)].update(fields)
    return header


def _overlap(header: dict, data: bytes) -> bytes:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    a, b = names[0], names[1]
    size_b = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[a]["data_offsets"][0] + size_b]
    return _st(header, data)


# ----------------------------------------------------------------------------- tokenizer


def _tokenizer(edit, has: str, remove=()):
    def build(work: Path, bases) -> Invocation:
        model = _hf(work, bases)
        for name in remove:
            (model / name).unlink()
        edit(model)
        return _step("export", model, work, has)
    return build


def _tok_json(change):
    def edit(model: Path):
        edit_json(model / "tokenizer.json", change)
    return edit


def _write(name: str, text: str | bytes):
    def edit(model: Path):
        (model / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return edit


def _onnx_vocab_less(work: Path, bases) -> Invocation:
    """An ONNX directory with tokenizer_config.json but no vocabulary: a text model nobody can tokenize for."""
    model = _onnx(work, bases)
    (model / "manifest.json").unlink()  # described from its files: tokenizer files say it is a text model
    shutil.copy(Path(bases.get("minilm_path")) / "tokenizer_config.json", model / "tokenizer_config.json")
    return _step("quantize", model, work, "vocabulary")


def _tokenizer_fails_to_load(work: Path, bases) -> Invocation:
    """Files whose structure is fine but which transformers cannot build a tokenizer from: the loading error
    (raised deep in AutoTokenizer) is one line."""
    model = _onnx(work, bases)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(Path(bases.get("minilm_path")) / name, model / name)
    edit_json(model / "tokenizer_config.json", lambda c: c.update(tokenizer_class="NoSuchTokenizerFast"))
    edit_json(model / "manifest.json", lambda m: m["model"].update(task="sentence-embedding", input_shape=None))
    data = work / "sts.tsv"
    data.write_text("".join(f"g\tf\t2012\t{i}\t{i % 5}.0\tA man plays a guitar {i}.\tSomeone plays music {i}.\n"
                            for i in range(8)))
    return _step("validate", model, work, "tokenizer", "--baseline", model, "--set", "data.format=sts",
                 "--set", f"data.path={data}", "--set", "measure_memory=false", "--set", "latency_runs=5",
                 "--set", "rounds=1")


# ----------------------------------------------------------------------------- ONNX


VALIDATE_DIGITS = ("--set", "data.format=digits", "--set", "data.split=test", "--set", "data.limit=40",
                   "--set", "measure_memory=false", "--set", "latency_runs=5", "--set", "rounds=1")


def _graph_edit(change, has: str, step: str = "quantize"):
    def build(work: Path, bases) -> Invocation:
        import onnx

        model = _onnx(work, bases)
        proto = onnx.load(str(model / "model.onnx"))
        change(proto, work, model)
        (model / "model.onnx").write_bytes(proto.SerializeToString())
        extra = ("--baseline", bases.get("digits_onnx"), *VALIDATE_DIGITS) if step == "validate" else ()
        return _step(step, model, work, has, *extra)
    return build


def _undefined_op(m, *_):
    m.graph.node[1].op_type = "NoSuchOp"


def _custom_domain(m, *_):
    import onnx

    m.graph.node[1].domain = "evil.custom.ops"
    m.opset_import.append(onnx.helper.make_opsetid("evil.custom.ops", 1))


def _ms_unknown_op(m, *_):
    import onnx

    m.graph.node[1].domain = "com.microsoft"
    m.graph.node[1].op_type = "NoSuchFusedOp"
    m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


def _opset_too_new(m, *_):
    m.opset_import[0].version = 99


def _ir_too_new(m, *_):
    m.ir_version = 99


def _cycle(m, *_):
    # the first node now reads the last node's output: a loop through the whole graph
    m.graph.node[0].input[0] = m.graph.node[-1].output[0]


def _huge_input_dim(m, *_):
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**62


def _huge_initializer_dims(m, *_):
    m.graph.initializer[0].dims[0] = 2**62


def _raw_data_short(m, *_):
    tensor = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.raw_data = tensor.raw_data[:-64]


def _raw_data_long(m, *_):
    m.graph.initializer[1].raw_data = m.graph.initializer[1].raw_data + b"\0" * 16


def _external(location_of, write_data: bool = True, length_delta: int = 0):
    """Move the largest initializer's data out of model.onnx, to the place ``location_of(work, model)`` names."""
    def change(m, work: Path, model: Path):
        import onnx

        tensor = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        data = tensor.raw_data
        location, target = location_of(work, model)
        if write_data and target is not None:
            target.write_bytes(data[: len(data) + length_delta] if length_delta < 0 else data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return change


def _ext_absolute(work, model):
    return str(work / "outside.bin"), work / "outside.bin"


def _ext_dotdot(work, model):
    return "../outside.bin", work / "outside.bin"


def _ext_symlink(work, model):
    (work / "outside.bin").touch()
    (model / "weights.bin").symlink_to(work / "outside.bin")
    return "weights.bin", work / "outside.bin"


def _ext_missing(work, model):
    return "weights.bin", None


def _ext_inside(work, model):
    return "weights.bin", model / "weights.bin"


def _onnx_bytes(data: bytes, has: str):
    def build(work: Path, bases) -> Invocation:
        model = _onnx(work, bases)
        (model / "model.onnx").write_bytes(data)
        return _step("quantize", model, work, has)
    return build


# ----------------------------------------------------------------------------- --set and --config


def _set(*pairs: str, has: str):
    def build(work: Path, bases) -> Invocation:
        canary = work / "canary"
        argv = []
        for pair in pairs:
            argv += ["--set", pair.replace("CANARY", str(canary))]
        inv = _step("export", bases.get("digits_trained"), work, has, *argv)
        inv.canary = canary
        return inv
    return build


def _config_tag(work: Path, bases) -> Invocation:
    canary = work / "canary"
    config = work / "config.yaml"
    config.write_text(f"opset: !!python/object/apply:os.system ['touch {canary}']\n")
    inv = _step("export", bases.get("digits_trained"), work, "tag", "--config", config)
    inv.canary, inv.watch = canary, [config]
    return inv


# ----------------------------------------------------------------------------- data files


def _data(fmt: str, write, has: str, name: str = "data.txt"):
    """validate on the digits ONNX model (it is its own baseline) with a data file ``write(path)`` makes."""
    def build(work: Path, bases) -> Invocation:
        model = bases.get("digits_onnx")
        data = work / name
        write(data)
        inv = _step("validate", model, work, has, "--baseline", model, "--set", f"data.format={fmt}",
                    "--set", f"data.path={data}", "--set", "measure_memory=false", "--set", "latency_runs=5",
                    "--set", "rounds=1")
        inv.watch = [model, data]
        return inv
    return build


def _sts_rows(scores) -> str:
    return "".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\tA man is playing guitar {i}.\t"
                   f"A person plays an instrument {i}.\n" for i, s in enumerate(scores))


def _text(content: str | bytes):
    def write(path: Path):
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return write


def _npz(**arrays):
    def write(path: Path):
        with open(path, "wb") as handle:  # np.savez would add .npz to a name without it
            np.savez(handle, **{k: v() if callable(v) else v for k, v in arrays.items()})
    return write


def _digits_x(n: int = 20):
    return np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)


def _with_nan():
    x = _digits_x()
    x[3, 0, 2, 2] = np.nan
    return x


def cases() -> list[Case]:
    header_len = lambda n: lambda h, d: _st(h, d, length=n)  # noqa: E731
    return [
        # safetensors: the digits torch model (with and without its manifest) and MiniLM
        Case("malformed/safetensors-header-too-long", _safetensors(header_len(2**40), "longer than the file")),
        Case("malformed/safetensors-header-not-json", _safetensors(lambda h, d: _st(b"{not json at all" + b" " * 8, d),
                                                                   "not valid JSON")),
        Case("malformed/safetensors-header-not-object", _safetensors(lambda h, d: _st(b"[1, 2, 3]", d), "JSON object")),
        Case("malformed/safetensors-header-is-a-string", _safetensors(lambda h, d: _st(b'{"a": "b"}', d), "tensor")),
        Case("malformed/safetensors-unknown-dtype", _safetensors(lambda h, d: _st(_set_entry(h, dtype="F33"), d),
                                                                 "dtype")),
        Case("malformed/safetensors-shape-mismatch", _safetensors(
            lambda h, d: _st(_set_entry(h, shape=[h[_first_tensor(h)]["shape"][0] * 2]), d), "does not match")),
        Case("malformed/safetensors-dtype-mismatch", _safetensors(lambda h, d: _st(_set_entry(h, dtype="F64"), d),
                                                                  "does not match")),
        Case("malformed/safetensors-offsets-out-of-bounds", _safetensors(
            lambda h, d: _st(_set_entry(h, data_offsets=[len(d) + 4096, len(d) + 4096 + 256], shape=[64]), d),
            "past the end")),
        Case("malformed/safetensors-offsets-overlap", _safetensors(_overlap, "overlap")),
        Case("malformed/safetensors-negative-offset", _safetensors(
            lambda h, d: _st(_set_entry(h, data_offsets=[-256, 0]), d), "data_offsets")),
        Case("malformed/safetensors-zero-bytes", _safetensors(lambda h, d: b"", "0 bytes")),
        Case("malformed/safetensors-truncated", _safetensors(lambda h, d: _st(h, d[:-100]), "truncated")),
        Case("malformed/safetensors-trailing-bytes", _safetensors(lambda h, d: _st(h, d + b"\0" * 64), "trailing")),
        Case("malformed/safetensors-no-manifest-truncated", _safetensors(lambda h, d: _st(h, d[: len(d) // 2]),
                                                                         "truncated", manifest=False)),
        Case("malformed/safetensors-hf-header-too-long", _safetensors(header_len(2**62), "longer than the file",
                                                                      hf=True)),
        Case("malformed/safetensors-hf-truncated", _safetensors(lambda h, d: _st(h, d[: 1 << 20]), "truncated",
                                                                hf=True)),
        Case("malformed/safetensors-hf-zero-bytes", _safetensors(lambda h, d: b"", "0 bytes", hf=True)),
        # tokenizer files (MiniLM, and an ONNX directory)
        Case("malformed/tokenizer-json-not-json", _tokenizer(_write("tokenizer.json", "{\"model\": {oops"),
                                                             "tokenizer.json")),
        Case("malformed/tokenizer-json-wrong-structure", _tokenizer(_tok_json(lambda t: t.update(model="WordPiece")),
                                                                    "tokenizer.json")),
        Case("malformed/tokenizer-json-unknown-model-type", _tokenizer(
            _tok_json(lambda t: t["model"].update(type="NoSuchModel")), "tokenizer.json")),
        Case("malformed/tokenizer-config-not-json", _tokenizer(_write("tokenizer_config.json", "model_max_length=512"),
                                                               "tokenizer_config.json")),
        Case("malformed/tokenizer-config-a-list", _tokenizer(_write("tokenizer_config.json", "[1, 2]"),
                                                             "tokenizer_config.json")),
        Case("malformed/tokenizer-config-bad-max-length", _tokenizer(
            lambda m: edit_json(m / "tokenizer_config.json", lambda c: c.update(model_max_length="lots")),
            "model_max_length")),
        Case("malformed/tokenizer-vocab-not-utf8", _tokenizer(_write("vocab.txt", b"[PAD]\n\xff\xfe\x00bad\n"),
                                                              "vocab.txt", remove=("tokenizer.json",))),
        Case("malformed/tokenizer-vocab-less-hf", _tokenizer(lambda m: None, "vocabulary",
                                                             remove=("tokenizer.json", "vocab.txt"))),
        Case("malformed/tokenizer-vocab-less-onnx", _onnx_vocab_less),
        Case("malformed/tokenizer-fails-to-load", _tokenizer_fails_to_load),
        Case("malformed/hf-config-not-an-object", _tokenizer(_write("config.json", "[\"BertModel\"]"), "config.json")),
        Case("malformed/hf-modules-wrong-structure", _tokenizer(_write("modules.json", "[1, 2]"), "modules.json")),
        # ONNX graphs
        Case("malformed/onnx-undefined-op", _graph_edit(_undefined_op, "NoSuchOp")),
        Case("malformed/onnx-unknown-custom-domain", _graph_edit(_custom_domain, "evil.custom.ops")),
        Case("malformed/onnx-unknown-microsoft-op", _graph_edit(_ms_unknown_op, "NoSuchFusedOp")),
        Case("malformed/onnx-opset-too-new", _graph_edit(_opset_too_new, "opset 99")),
        Case("malformed/onnx-ir-version-too-new", _graph_edit(_ir_too_new, "ir_version")),
        Case("malformed/onnx-cycle", _graph_edit(_cycle, "cycle")),
        Case("malformed/onnx-huge-input-dim", _graph_edit(_huge_input_dim, "dimension")),
        Case("malformed/onnx-huge-initializer-dims", _graph_edit(_huge_initializer_dims, "dimensions")),
        Case("malformed/onnx-raw-data-short", _graph_edit(_raw_data_short, "raw_data")),
        Case("malformed/onnx-raw-data-long", _graph_edit(_raw_data_long, "raw_data")),
        Case("malformed/onnx-not-protobuf", _onnx_bytes(b"\x08\x07\x12\xff\xff\xff\xff\x0fgarbage" * 64, "ONNX")),
        Case("malformed/onnx-zero-bytes", _onnx_bytes(b"", "no ONNX graph")),
        Case("malformed/onnx-validate-step", _graph_edit(_undefined_op, "NoSuchOp", step="validate")),
        # ONNX external data
        Case("malformed/onnx-external-absolute-path", _graph_edit(_external(_ext_absolute), "outside")),
        Case("malformed/onnx-external-dotdot", _graph_edit(_external(_ext_dotdot), "outside")),
        Case("malformed/onnx-external-symlink-out", _graph_edit(_external(_ext_symlink, write_data=False), "outside")),
        Case("malformed/onnx-external-missing", _graph_edit(_external(_ext_missing), "missing")),
        Case("malformed/onnx-external-truncated", _graph_edit(_external(_ext_inside, length_delta=-100), "truncated")),
        # --set and --config
        Case("malformed/set-yaml-python-tag", _set("opset=!!python/object/apply:os.system ['touch CANARY']", has="tag")),
        Case("malformed/set-yaml-python-name", _set("opset=!!python/name:os.system", has="tag")),
        Case("malformed/set-yaml-binary-tag", _set("opset=!!binary aGVsbG8=", has="!!binary")),
        Case("malformed/set-yaml-custom-tag", _set("opset=!custom 17", has="tag")),
        Case("malformed/set-conflict-value-then-table", _set("tolerance=1", "tolerance.x=2", has="conflicts")),
        Case("malformed/set-conflict-table-then-value", _set("gate.a=1", "gate=2", has="conflicts")),
        Case("malformed/set-empty-key-part", _set("a..b=1", has="empty")),
        Case("malformed/config-file-python-tag", _config_tag),
        # data files
        Case("malformed/data-line-over-1mib", _data("text-classification", _text("a,1\n" + "x" * (2 << 20) + ",1\n"),
                                                    "over the limit", "data.csv")),
        Case("malformed/data-field-over-csv-limit", _data("text-classification",
                                                          _text("a,1\n" + "y" * 200_000 + ",1\n"), ":2", "data.csv")),
        Case("malformed/data-not-utf8", _data("text-classification", _text(b"caf\xe9,1\nok,0\n"), "UTF-8", "data.csv")),
        Case("malformed/data-sts-nan-score", _data("sts", _text(_sts_rows([1.0, "nan", 3.0])), "finite", "sts.tsv")),
        Case("malformed/data-sts-inf-score", _data("sts", _text(_sts_rows([1.0, "inf", 3.0])), "finite", "sts.tsv")),
        Case("malformed/data-sts-one-pair", _data("sts", _text(_sts_rows([2.5])), "one pair", "sts.tsv")),
        Case("malformed/data-sts-constant-scores", _data("sts", _text(_sts_rows([3.0] * 6)), "correlation", "sts.tsv")),
        Case("malformed/data-npz-object-array", _data("npz", _npz(x=np.array([{"a": 1}, None], dtype=object)),
                                                      "object", "data.npz")),
        Case("malformed/data-npz-string-array", _data("npz", _npz(x=np.array(["a", "b"])), "dtype", "data.npz")),
        Case("malformed/data-npz-labels-mismatch", _data("npz", _npz(x=_digits_x, y=np.arange(7)), "y has shape",
                                                         "data.npz")),
        Case("malformed/data-npz-one-dimensional-x", _data("npz", _npz(x=np.arange(10, dtype=np.float32)),
                                                           "examples", "data.npz")),
        Case("malformed/data-npz-nan", _data("npz", _npz(x=_with_nan, y=np.zeros(20, np.int64)), "NaN", "data.npz")),
        Case("malformed/data-npz-fractional-labels", _data("npz", _npz(x=_digits_x, y=np.full(20, 0.5)), "integer",
                                                           "data.npz")),
        Case("malformed/data-npz-not-a-zip", _data("npz", _text(b"PK\x03\x04 not really a zip"), "npz", "data.npz")),
    ]
