"""Open Inference Protocol v2 (REST) tensors: datatypes, request validation, response shapes.

Spec: https://github.com/kserve/open-inference-protocol (inference_rest.md). A request is
``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data", "parameters"?}], "outputs"?: [{"name"}]}``;
a response ``{"model_name", "model_version", "id", "outputs": [{"name", "shape", "datatype", "data"}]}``; an
error ``{"error": "..."}``. Tensor data is row-major, flat (nested lists are accepted too).

Everything a client can get wrong is checked here, before a model runs, and raised as ``RequestError`` with
the HTTP status to answer: the server answers 4xx and keeps serving, and the canary never counts a client's
mistake against a model.
"""

from __future__ import annotations

import json
import math
import reprlib
import sys
from dataclasses import dataclass

import numpy as np

from slimops.serving.limits import Limits

# OIP datatype <-> numpy dtype. BYTES is text here (UTF-8 strings in JSON).
DATATYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
# ONNX Runtime's type strings, e.g. "tensor(float)".
_ORT_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class RequestError(Exception):
    """A client error: answered with ``status`` and ``{"error": message}``; the model never ran."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# A client's values quoted in an error message are cut short: an error never echoes megabytes back.
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxlevel = 60, 60, 6, 2


def quote(value) -> str:
    return _short.repr(value)


def parse_json(raw: bytes):
    """A request body as JSON; anything that is not plain, finite JSON is the client's mistake (400).

    Python's json accepts NaN and Infinity, and raises ValueError (not a JSON error) on an integer longer than
    its int-to-string limit (4300 digits): both are refused here. Shorter integers beyond 64 bits are refused
    where the tensor is built (``_to_array``).
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON ({getattr(err, 'msg', None) or err})") from None
    except RecursionError:
        raise RequestError("the request body nests too deeply") from None
    except ValueError:  # only the integer digit limit: JSON's own errors are JSONDecodeError
        raise RequestError(f"the request body holds an integer of more than {sys.get_int_max_str_digits()} "
                           "digits; integers must fit in 64 bits") from None


def _refuse_constant(name: str):
    raise RequestError(f"{name} is not a number this server accepts (JSON has no NaN or Infinity)")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the metadata endpoint describes it; -1 is a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of_ort(type_string: str) -> str:
    try:
        return _ORT_TYPES[type_string]
    except KeyError:
        raise ValueError(f"ONNX type {type_string} has no Open Inference Protocol datatype") from None


def spec_from_ort(node) -> TensorSpec:
    """An ORT NodeArg (name, type, shape with ints, strings or None) -> TensorSpec with -1 for free dims."""
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (node.shape or []))
    return TensorSpec(node.name, datatype_of_ort(node.type), shape)


def parse_request(body, specs: dict[str, TensorSpec], limits: Limits,
                  alternatives: dict[str, TensorSpec] | None = None) -> tuple[dict[str, np.ndarray], list[str] | None, str | None]:
    """Validate an inference request against the model's inputs.

    ``alternatives`` are inputs accepted *instead of* all of ``specs`` (a text model takes a BYTES ``text``
    tensor in place of its token tensors). Returns (arrays by name, requested output names or None, request id).
    """
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object with an 'inputs' list")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of {name, shape, datatype, data}")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")

    names = [item.get("name") if isinstance(item, dict) else None for item in inputs]
    alternatives = alternatives or {}
    if alternatives and set(names) <= set(alternatives):
        expected = {name: alternatives[name] for name in names}
    else:
        expected = specs
    arrays: dict[str, np.ndarray] = {}
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise RequestError(f"inputs[{index}] must be an object with name, shape, datatype and data")
        name = item.get("name")
        if name not in expected:
            known = ", ".join(list(specs) + list(alternatives))
            raise RequestError(f"inputs[{index}]: unknown input {quote(name)}; this model takes {known}")
        if name in arrays:
            raise RequestError(f"inputs[{index}]: input {name!r} is given twice")
        used = sum(arr.size for arr in arrays.values())
        arrays[name] = _parse_tensor(item, expected[name], index, limits, used)
    missing = [name for name in expected if name not in arrays]
    if missing:
        raise RequestError(f"missing input(s) {', '.join(missing)}; this model needs "
                           + ", ".join(f"{s.name} ({s.datatype} {list(s.shape)})" for s in expected.values()))
    batches = {arr.shape[0] for arr in arrays.values() if arr.ndim}
    if len(batches) > 1:
        raise RequestError(f"inputs disagree on the batch size ({sorted(batches)}); give every input the same first dimension")

    outputs = body.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise RequestError("'outputs' must be a list of {\"name\": ...}")
        requested = [o["name"] for o in outputs]
    return arrays, requested, request_id


def _parse_tensor(item: dict, spec: TensorSpec, index: int, limits: Limits, used: int = 0) -> np.ndarray:
    """One input tensor; ``used`` is how many elements the request's earlier inputs hold."""
    where = f"inputs[{index}] ({spec.name})"
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(f"{where}: datatype {quote(datatype)} is not an Open Inference Protocol datatype "
                           f"({', '.join(DATATYPES)})")
    if datatype != spec.datatype:
        raise RequestError(f"{where}: datatype {datatype} does not match the model's {spec.datatype}; "
                           f"send {spec.datatype}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"{where}: 'shape' must be a list of non-negative integers")
    if len(shape) != len(spec.shape):
        raise RequestError(f"{where}: shape {quote(shape)} has {len(shape)} dimensions, the model takes "
                           f"{len(spec.shape)} ({list(spec.shape)}, -1 = any)")
    for axis, (got, want) in enumerate(zip(shape, spec.shape)):
        if want >= 0 and got != want:
            raise RequestError(f"{where}: shape {shape} does not fit the model's {list(spec.shape)} "
                               f"(dimension {axis} must be {want})")
    if shape and shape[0] > limits.max_batch:
        raise RequestError(f"{where}: batch {shape[0]} is over this server's limit of {limits.max_batch}; "
                           "split the request", status=413)
    count = math.prod(shape)
    if used + count > limits.max_elements:
        raise RequestError(f"{where}: the request's inputs hold {used + count} elements, over this server's limit "
                           f"of {limits.max_elements}; send fewer rows", status=413)
    if count == 0:
        raise RequestError(f"{where}: shape {shape} holds no elements")
    if "data" not in item:
        raise RequestError(f"{where}: 'data' is missing")
    return _to_array(item["data"], datatype, shape, where)


def _to_array(data, datatype: str, shape: list[int], where: str) -> np.ndarray:
    if datatype == "BYTES":
        flat = _flatten(data, where)
        if not all(isinstance(v, str) for v in flat):
            raise RequestError(f"{where}: BYTES data must be strings")
        if len(flat) != math.prod(shape):
            raise RequestError(f"{where}: {len(flat)} values do not fill shape {shape}")
        return np.array(flat, dtype=object).reshape(shape)
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"{where}: 'data' is not a regular array of numbers") from None
    if raw.dtype == object or raw.dtype.kind in "USV":
        big = next((v for v in _flatten(data, where) if type(v) is int and not -2**63 <= v < 2**64), None)
        if big is not None:
            raise RequestError(f"{where}: integer {quote(big)} does not fit in 64 bits")
        raise RequestError(f"{where}: 'data' must hold only numbers for {datatype} (ragged lists, strings and "
                           "nulls are refused)")
    allowed = {"BOOL": "b"}.get(datatype, "iu" if datatype.startswith(("INT", "UINT")) else "iuf")
    if raw.dtype.kind not in allowed:
        raise RequestError(f"{where}: {datatype} data must be "
                           + {"b": "true/false", "iu": "integers", "iuf": "numbers"}[allowed])
    if raw.size != math.prod(shape):
        raise RequestError(f"{where}: {raw.size} values do not fill shape {shape} ({math.prod(shape)} needed)")
    dtype = np.dtype(DATATYPES[datatype])
    # Checked before the cast, which would wrap integers and turn large floats into infinities.
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise RequestError(f"{where}: values out of range for {datatype} ([{info.min}, {info.max}])")
    if dtype.kind == "f" and raw.size:
        top = float(np.finfo(dtype).max)
        if not np.isfinite(raw).all() or raw.max() > top or raw.min() < -top:
            raise RequestError(f"{where}: data holds values that are not finite in {datatype} "
                               f"(beyond +-{top:.4g})")
    return raw.astype(dtype).reshape(shape)


def _flatten(data, where: str) -> list:
    if not isinstance(data, list):
        raise RequestError(f"{where}: 'data' must be a list")
    flat, stack = [], [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        else:
            flat.append(node)
    return flat


def tensor_output(name: str, array: np.ndarray) -> dict:
    array = np.asarray(array)
    datatype = next((dt for dt, np_type in DATATYPES.items() if np_type is not np.object_ and array.dtype == np_type),
                    "FP32")
    if datatype == "FP32" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.reshape(-1).tolist()}
