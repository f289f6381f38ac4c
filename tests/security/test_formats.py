"""The format checks (slimops.formats, slimops.yamlsafe) accept what is valid, including what slimops writes
itself; the corpus (cases_malformed.py, cases_bombs.py) covers what they refuse, through the CLI."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from conftest import link_tree

from slimops.cli import _parse_sets
from slimops.errors import BadInput
from slimops.formats import check_safetensors, quoted
from slimops.yamlsafe import load_yaml


def _save(path, tensors: dict) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"format": "np"})


def test_valid_safetensors_pass(tmp_path):
    path = tmp_path / "w.safetensors"
    _save(path, {"a": np.zeros((3, 4), np.float32), "b": np.ones(7, np.int8), "empty": np.zeros((0, 5), np.float16),
                 "c": np.arange(6, dtype=np.float64).reshape(2, 3)})
    check_safetensors(path)


def test_safetensors_padded_header_passes(tmp_path):
    """The format allows trailing spaces after the header JSON (writers align the data to 8 bytes)."""
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode() + b"   "
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    check_safetensors(path)


def test_safetensors_corruption_is_named(tmp_path):
    good = tmp_path / "good.safetensors"
    _save(good, {"a": np.zeros(4, np.float32)})
    raw = good.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    broken = tmp_path / "broken-header.safetensors"
    broken.write_bytes(raw[:8] + raw[8:8 + length].replace(b"}", b" ") + raw[8 + length:])  # JSON never closed
    with pytest.raises(BadInput, match="not valid JSON"):
        check_safetensors(broken)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[:-1])
    with pytest.raises(BadInput, match="truncated"):
        check_safetensors(truncated)


def test_out_of_order_onnx_graph_is_accepted(digits_onnx, tmp_path):
    """ONNX Runtime sorts a graph itself (fp16 conversion appends its casts at the end): only a cycle is refused."""
    import onnx

    from slimops.handlers import describe, load

    model = link_tree(digits_onnx, tmp_path / "model")
    proto = onnx.load(str(model / "model.onnx"))
    proto.graph.node.reverse()
    (model / "model.onnx").unlink()  # a hard link to the session artifact: replace it, never write through it
    (model / "model.onnx").write_bytes(proto.SerializeToString())
    info = describe(model)
    assert load(model, info).predict(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_ordinary_yaml_loads():
    text = "base: &b {x: 1, y: [1, 2]}\nk:\n  <<: *b\n  y: 3\nl: [*b, *b]\nn: !!str 12\ndate: 2024-01-02\n"
    value = load_yaml(text, "t.yaml")
    assert value["k"] == {"x": 1, "y": 3} and value["l"][1]["y"] == [1, 2] and value["n"] == "12"
    assert load_yaml("", "t.yaml") is None


def test_set_pairs_merge_and_override():
    assert _parse_sets(["a.b=1", "a.c=x", "mode=static", "mode=dynamic", "d={e: 1}", "d.f=2"]) == \
        {"a": {"b": 1, "c": "x"}, "mode": "dynamic", "d": {"e": 1, "f": 2}}
    with pytest.raises(BadInput, match="conflicts"):
        _parse_sets(["a.b=1", "a={c: 2}"])


def test_quoted_caps():
    assert quoted("x" * 5000).endswith("...'") and len(quoted("x" * 5000)) == 80
    assert quoted("short") == "'short'"
