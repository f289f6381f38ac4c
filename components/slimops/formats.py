"""Cheap checks of the files a model directory is made of, run when the directory is described.

Every file a step reads from a model directory is untrusted. The libraries that read them later (safetensors,
transformers, tokenizers, onnx, ONNX Runtime) fail on malformed files with tracebacks, panics or huge
allocations; these checks look at what those libraries would trust (a header, the declared shapes, the data
offsets, the JSON structure) and refuse a bad file with one ``BadInput`` line naming the file, before any of
them sees it. None of them reads weights: a safetensors file is checked from its header, an ONNX graph
without its external data.
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
import struct
from pathlib import Path

from slimops.errors import BadInput

MiB = 1024 * 1024
MAX_JSON_BYTES = 16 * MiB  # config.json, architecture.json, tokenizer_config.json, manifest.json, ...
MAX_TOKENIZER_JSON_BYTES = 128 * MiB  # tokenizer.json of a 256k-token vocabulary is ~35 MB
MAX_VOCAB_BYTES = 64 * MiB  # vocab.txt / merges.txt / sentencepiece models
MAX_JSON_DEPTH = 100
MAX_SAFETENSORS_HEADER = 32 * MiB  # the header of a file with ~300k tensors; safetensors itself allows 100 MB
MAX_DIM = 2**31 - 1  # one declared dimension of an ONNX graph input/output or a tensor
MAX_EXAMPLE_ELEMENTS = 2**24  # one example of a tensor model (a 4096 x 4096 image)
MAX_PACKED_BYTES = 2 * 1024 * MiB  # an ONNX protobuf cannot be larger
TEXT_TASKS = ("sentence-embedding", "text-classification", "causal-lm")
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model")


def quoted(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: messages quote what was given, never all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def library_error(err: BaseException, limit: int = 160) -> str:
    """A library's exception as a short single line, for a BadInput message."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def one_line(text: str, limit: int = 300) -> str:
    """The first line of a library's error message, capped."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


# ----------------------------------------------------------------------------- plain files


def _regular_size(path: Path, what: str) -> int:
    try:
        info = os.stat(path)
    except OSError as err:
        raise BadInput(f"cannot read {what} {path} ({err.strerror or err}); check the file") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{what} {path} is not a regular file; replace it with the file itself")
    return info.st_size


def read_capped(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refusing a file larger than ``limit`` before reading it."""
    path = Path(path)
    size = _regular_size(path, what)
    if size > limit:
        raise BadInput(f"{what} {path} is {size} bytes, over the {_mib(limit)} limit; "
                       "this is not an ordinary model file: check where it came from")
    try:
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as err:
        raise BadInput(f"cannot read {what} {path} ({err.strerror or err}); check the file") from None


def _mib(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit} bytes"


def parse_json(data: bytes, where: str, what: str = "JSON file"):
    """JSON from bytes, as a BadInput naming ``where`` (and the line) when it is not readable JSON."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise BadInput(f"{what} {where}:{line} is not UTF-8 text; fix or replace the file") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"{what} {where}:{err.lineno} is not valid JSON ({err.msg}); fix or replace the file") from None
    except RecursionError:
        raise BadInput(f"{what} {where} nests too deeply to read; fix or replace the file") from None
    depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise BadInput(f"{what} {where} nests more than {MAX_JSON_DEPTH} levels deep; fix or replace the file")
    return value


def _depth(value, stop: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of parsed JSON, without recursion (stops counting just past ``stop``)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        if deepest > stop:
            return deepest
        stack.extend((child, level + 1) for child in item if isinstance(child, (dict, list)))
    return deepest


def load_json_file(path: Path, expect=(dict, list), limit: int = MAX_JSON_BYTES, what: str = "JSON file"):
    """A JSON file of a model directory: size-capped, depth-capped, of the expected top-level type."""
    path = Path(path)
    value = parse_json(read_capped(path, limit, what), str(path), what)
    if expect and not isinstance(value, expect):
        kinds = " or ".join({dict: "an object {...}", list: "a list [...]"}[k] for k in
                            (expect if isinstance(expect, tuple) else (expect,)))
        raise BadInput(f"{what} {path} holds a JSON {type(value).__name__}, not {kinds}; fix or replace the file")
    return value


def _need(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise BadInput(f"{path}: {what}; fix or replace the file")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- safetensors

# bits per element of every dtype the safetensors format defines
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64,
    "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def check_safetensors(path: Path) -> None:
    """Validate a safetensors file from its header alone: length, JSON, dtypes, shapes against data offsets,
    offsets contiguous and inside the file. Reads 8 bytes plus the header."""
    path = Path(path)
    size = _regular_size(path, "safetensors file")
    redo = "re-save the weights with safetensors (save_file / save_pretrained)"
    if size < 8:
        raise BadInput(f"safetensors file {path} is {size} bytes, too short to hold a header "
                       f"(empty or truncated); {redo}")
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise BadInput(f"safetensors file {path} declares a header of {length} bytes, longer than the file "
                               f"({size} bytes): truncated, or not a safetensors file; {redo}")
            if length > MAX_SAFETENSORS_HEADER:
                raise BadInput(f"safetensors file {path} declares a header of {length} bytes, over the "
                               f"{_mib(MAX_SAFETENSORS_HEADER)} limit; {redo}")
            header = handle.read(length)
    except OSError as err:
        raise BadInput(f"cannot read safetensors file {path} ({err.strerror or err}); check the file") from None
    if not header.lstrip(b" ").startswith(b"{"):
        raise BadInput(f"safetensors file {path}: the header is not a JSON object (it starts with "
                       f"{quoted(header[:16])}): not a safetensors file; {redo}")
    meta = parse_json(header, str(path), "safetensors header of")
    if not isinstance(meta, dict):
        raise BadInput(f"safetensors file {path}: the header is a JSON {type(meta).__name__}, not an object; {redo}")
    buffer = size - 8 - length
    spans = []
    for name, entry in meta.items():
        if name == "__metadata__":
            if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise BadInput(f"safetensors file {path}: __metadata__ must map strings to strings; {redo}")
            continue
        where = f"safetensors file {path}: tensor {quoted(name)}"
        if not isinstance(entry, dict):
            raise BadInput(f"{where} is described by a JSON {type(entry).__name__}, not an object; {redo}")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPE_BITS:
            raise BadInput(f"{where} has unknown dtype {quoted(dtype)} (known: "
                           f"{', '.join(SAFETENSORS_DTYPE_BITS)}); {redo}")
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise BadInput(f"{where} has shape {quoted(shape)}, not a list of non-negative integers; {redo}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise BadInput(f"{where} has data_offsets {quoted(offsets)}, not [begin, end] with 0 <= begin <= end; "
                           f"{redo}")
        bits = math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            raise BadInput(f"{where}: dtype {dtype} shape {quoted(shape, 60)} needs {bits / 8:g} bytes, but its "
                           f"data_offsets {offsets} span {offsets[1] - offsets[0]}; the header does not match the "
                           f"data: {redo}")
        if offsets[1] > buffer:
            raise BadInput(f"{where}: data_offsets {offsets} run past the end of the data ({buffer} bytes): "
                           f"truncated file; {redo}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    cursor, previous = 0, None
    for begin, end, name in spans:
        if begin < cursor:
            raise BadInput(f"safetensors file {path}: tensors {quoted(previous, 60)} and {quoted(name, 60)} overlap "
                           f"(data_offsets); {redo}")
        if begin > cursor:
            raise BadInput(f"safetensors file {path}: {begin - cursor} bytes before tensor {quoted(name, 60)} belong "
                           f"to no tensor (data_offsets leave a gap); {redo}")
        cursor, previous = end, name
    if cursor != buffer:
        raise BadInput(f"safetensors file {path}: the tensors cover {cursor} bytes but the file holds {buffer} bytes "
                       f"of data after the header ({'truncated' if cursor > buffer else 'trailing bytes'}); {redo}")


# ----------------------------------------------------------------------------- Hugging Face / torch JSON files


def check_hf_files(model_dir: Path) -> None:
    """config.json and the sentence-transformers files hold the structure describe and the steps read."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    config = load_json_file(path, dict, what="model config")
    architectures = config.get("architectures")
    _need(architectures is None or (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)),
          path, "'architectures' must be a list of class names")
    _need(config.get("id2label") is None or isinstance(config["id2label"], dict), path, "'id2label' must be an object")
    for key in ("num_attention_heads", "hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"):
        _need(key not in config or (_is_int(config[key]) and 0 < config[key] <= MAX_DIM), path,
              f"{key!r} must be a positive integer (got {quoted(config.get(key), 40)})")
    _need(config.get("model_type") is None or isinstance(config["model_type"], str), path, "'model_type' must be a string")
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.exists():
        load_json_file(pooling, dict, what="pooling config")
    modules_path = model_dir / "modules.json"
    if modules_path.exists():
        modules = load_json_file(modules_path, list, what="sentence-transformers modules")
        _need(all(isinstance(m, dict) and isinstance(m.get("type", ""), str) for m in modules), modules_path,
              "each module must be an object with a string 'type'")
    for name in ("config_sentence_transformers.json", "sentence_bert_config.json", "generation_config.json"):
        if (model_dir / name).exists():
            load_json_file(model_dir / name, dict)


def check_architecture(arch, path: Path) -> None:
    """architecture.json: the fields describe turns into a ModelInfo, with the types it needs."""
    from slimops.handlers.info import ModelInfo

    path = Path(path)
    _need(isinstance(arch, dict), path, "architecture.json must hold an object with 'factory' and 'input_shape'")
    weights = arch.get("weights", "model.safetensors")
    _need(isinstance(weights, str) and _plain_relative(weights), path,
          f"'weights' must name a file inside the model directory (got {quoted(weights, 60)})")
    tasks = ModelInfo.model_fields["task"].annotation.__args__
    _need(arch.get("task", tasks[-1]) in tasks, path, f"'task' must be one of {', '.join(tasks)} "
          f"(got {quoted(arch.get('task'), 40)})")
    _need(isinstance(arch.get("kwargs", {}), dict), path, "'kwargs' must be an object of keyword arguments")
    _need(arch.get("num_labels") is None or (_is_int(arch["num_labels"]) and 0 < arch["num_labels"] <= MAX_DIM),
          path, f"'num_labels' must be a positive integer (got {quoted(arch.get('num_labels'), 40)})")
    check_input_shape(arch.get("input_shape"), str(path))


def check_input_shape(shape, where: str) -> None:
    if shape is None:
        return
    if not (isinstance(shape, list) and all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)):
        raise BadInput(f"{where}: 'input_shape' must be a list of dimensions, e.g. [1, 8, 8] "
                       f"(got {quoted(shape, 60)}); fix the file")
    if math.prod(d for d in shape if d) > MAX_EXAMPLE_ELEMENTS:
        raise BadInput(f"{where}: input_shape {quoted(shape, 60)} makes one example of "
                       f"{math.prod(d for d in shape if d)} values, over the limit of {MAX_EXAMPLE_ELEMENTS}; "
                       "fix the shape")


def _plain_relative(name: str) -> bool:
    """A path inside the model directory: relative, no '..', no drive or root."""
    if not name or "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")) or ":" in name[:3]:
        return False
    return ".." not in Path(name.replace("\\", "/")).parts


# ----------------------------------------------------------------------------- tokenizer files


def check_tokenizer(model_dir: Path, required: bool) -> None:
    """The tokenizer files beside a text model: JSON structure, sizes, and a vocabulary when one is needed."""
    model_dir = Path(model_dir)
    redo = "save the tokenizer again with save_pretrained"
    path = model_dir / "tokenizer.json"
    if path.exists():
        tok = load_json_file(path, dict, MAX_TOKENIZER_JSON_BYTES, "tokenizer file")
        model = tok.get("model")
        _need(isinstance(model, dict) and isinstance(model.get("vocab"), (dict, list)), path,
              f"'model' must be an object with a 'vocab' (not a tokenizer.json): {redo}")
        _need(isinstance(tok.get("added_tokens", []), list), path, f"'added_tokens' must be a list: {redo}")
        for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"):
            _need(tok.get(key) is None or isinstance(tok[key], dict), path, f"{key!r} must be an object or null: {redo}")
        _once(("tokenizer", str(path), _signature(model_dir)), lambda: _load_tokenizer(path, redo))
    path = model_dir / "tokenizer_config.json"
    if path.exists():
        cfg = load_json_file(path, dict, what="tokenizer config")
        _need(cfg.get("tokenizer_class") is None or isinstance(cfg["tokenizer_class"], str), path,
              "'tokenizer_class' must be a string")
        _need(cfg.get("model_max_length") is None or (isinstance(cfg["model_max_length"], (int, float))
                                                      and not isinstance(cfg["model_max_length"], bool)), path,
              "'model_max_length' must be a number")
        _need(isinstance(cfg.get("added_tokens_decoder", {}), dict), path, "'added_tokens_decoder' must be an object")
    path = model_dir / "special_tokens_map.json"
    if path.exists():
        load_json_file(path, dict, what="special tokens map")
    for name in ("vocab.txt", "merges.txt"):
        if (model_dir / name).exists():
            data = read_capped(model_dir / name, MAX_VOCAB_BYTES, "vocabulary file")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as err:
                line = data[: err.start].count(b"\n") + 1
                raise BadInput(f"vocabulary file {model_dir / name}:{line} is not UTF-8 text; {redo}") from None
    if (model_dir / "vocab.json").exists():
        load_json_file(model_dir / "vocab.json", dict, MAX_VOCAB_BYTES, "vocabulary file")
    if required and not any((model_dir / name).is_file() for name in VOCAB_FILES):
        present = [n for n in ("tokenizer_config.json", "special_tokens_map.json") if (model_dir / n).exists()]
        raise BadInput(f"text model {model_dir} has no tokenizer vocabulary (no tokenizer.json or vocab.txt"
                       f"{'; only ' + ', '.join(present) if present else ''}); copy the tokenizer files of the "
                       "base model beside it")


def _load_tokenizer(path: Path, redo: str) -> None:
    """What transformers will do with tokenizer.json: build the tokenizers library's Tokenizer from it."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    try:
        Tokenizer.from_str(read_capped(path, MAX_TOKENIZER_JSON_BYTES, "tokenizer file").decode("utf-8-sig"))
    except (KeyboardInterrupt, SystemExit, MemoryError, BadInput):
        raise
    except BaseException as err:  # its errors, and Rust panics (pyo3's PanicException is a BaseException)
        raise BadInput(f"tokenizer file {path} is not a tokenizer the tokenizers library can build "
                       f"({one_line(err, 200)}); {redo}") from None


def has_tokenizer_files(model_dir: Path) -> bool:
    from slimops.handlers.info import TOKENIZER_FILES

    return any((Path(model_dir) / name).exists() for name in TOKENIZER_FILES)


# ----------------------------------------------------------------------------- ONNX

_ONNX_DOMAIN_ALIASES = {"ai.onnx": ""}
_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
         16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2}  # TensorProto.DataType
STRING_TYPE = 8
# data_type -> (typed field, values per element) for tensors stored without raw_data
_TYPED_FIELDS = {1: ("float_data", 1), 14: ("float_data", 2), 11: ("double_data", 1), 15: ("double_data", 2),
                 7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1), 8: ("string_data", 1),
                 **{t: ("int32_data", 1) for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 24)}}


@functools.lru_cache(maxsize=1)
def runtime_schemas() -> tuple[frozenset, dict]:
    """(domain, op) pairs ONNX Runtime knows, and the newest opset of each domain it knows."""
    import onnx
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    ops, newest = set(), {}
    for schema in C.get_all_operator_schema():
        ops.add((schema.domain, schema.name))
        newest[schema.domain] = max(newest.get(schema.domain, 0), schema.since_version)
    newest[""] = min(newest.get("", 0), onnx.defs.onnx_opset_version())
    if "ai.onnx.ml" in newest:
        newest["ai.onnx.ml"] = min(newest["ai.onnx.ml"], onnx.defs.onnx_opset_version_for_domain("ai.onnx.ml")
                                   if hasattr(onnx.defs, "onnx_opset_version_for_domain") else newest["ai.onnx.ml"])
    return frozenset(ops), newest


def _graphs(graph):
    """A graph and every subgraph under it (If/Loop/Scan bodies), without recursion."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _all_tensors(model):
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def check_onnx_model(model, where: str, model_dir: Path | None, packed: bool = False) -> None:
    """Checks onnx.checker does not make: opsets and ops this onnx/onnxruntime know, declared dimensions,
    tensor data sizes, external data inside the model directory."""
    redo = "re-export the model with slimops export (or a current torch.onnx / optimum)"
    if not model.graph.node or not model.graph.output:
        raise BadInput(f"ONNX model {where} holds no ONNX graph (empty or truncated file); {redo}")
    known_ops, newest = runtime_schemas()
    for opset in model.opset_import:
        domain = _ONNX_DOMAIN_ALIASES.get(opset.domain, opset.domain)
        if domain in ("", "ai.onnx.ml") and opset.version > newest.get(domain, 0):
            raise BadInput(f"ONNX model {where} needs opset {opset.version} of domain {opset.domain or 'ai.onnx'}; this "
                           f"onnx/onnxruntime supports up to {newest.get(domain, 0)}: re-export with a lower opset "
                           "or upgrade onnxruntime")
    local = {(f.domain, f.name) for f in model.functions}
    nodes = [node for graph in _graphs(model.graph) for node in graph.node]
    nodes += [node for function in model.functions for node in function.node]
    for node in nodes:
        domain = _ONNX_DOMAIN_ALIASES.get(node.domain, node.domain)
        if (node.domain, node.op_type) in local or (domain, node.op_type) in known_ops:
            continue
        name = f" (node {quoted(node.name, 60)})" if node.name else ""
        if domain in newest:
            raise BadInput(f"ONNX model {where} uses op {quoted(node.op_type, 60)}{name}, which domain "
                           f"{domain or 'ai.onnx'} does not define in this onnxruntime; {redo}")
        raise BadInput(f"ONNX model {where} uses op {quoted(node.op_type, 60)}{name} of unknown custom domain "
                       f"{quoted(node.domain, 60)}; only standard and onnxruntime (com.microsoft) ops are run: {redo}")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
                continue
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
            if any(d < 0 or d > MAX_DIM for d in dims):
                raise BadInput(f"ONNX model {where}: {kind} {quoted(value.name, 60)} declares dimension "
                               f"{max(dims, key=abs)} (limit {MAX_DIM}); {redo}")
            per_example = [d.dim_value for d in value.type.tensor_type.shape.dim[1:] if d.HasField("dim_value")]
            if kind == "input" and value.name not in initializers and math.prod(per_example) > MAX_EXAMPLE_ELEMENTS:
                raise BadInput(f"ONNX model {where}: input {quoted(value.name, 60)} declares "
                               f"{math.prod(per_example)} values per example (limit {MAX_EXAMPLE_ELEMENTS}); {redo}")
    root = os.path.realpath(model_dir) if model_dir is not None else None
    for tensor in _all_tensors(model):
        _check_tensor(tensor, where, root, packed, redo)


def _check_tensor(tensor, where: str, root: str | None, packed: bool, redo: str) -> None:
    label = f"ONNX model {where}: tensor {quoted(tensor.name, 60)}"
    dims = list(tensor.dims)
    if any(d < 0 or d > 2**40 for d in dims):
        raise BadInput(f"{label} declares dimensions {quoted(dims, 80)} (each must be 0..2^40); {redo}")
    count = math.prod(dims)
    if tensor.data_type not in _BITS and tensor.data_type != STRING_TYPE:
        raise BadInput(f"{label} has unknown data type {tensor.data_type}; {redo}")
    nbytes = None if tensor.data_type == STRING_TYPE else -(-count * _BITS[tensor.data_type] // 8)
    if tensor.data_location == 1:  # TensorProto.EXTERNAL
        _check_external(tensor, label, root, packed, nbytes)
        return
    if tensor.HasField("raw_data"):
        if nbytes is not None and len(tensor.raw_data) != nbytes:
            raise BadInput(f"{label}: dims {quoted(dims, 60)} need {nbytes} bytes of raw_data but it holds "
                           f"{len(tensor.raw_data)}; {redo}")
        return
    field, per = _TYPED_FIELDS.get(tensor.data_type, (None, 1))
    if field is None:
        return  # 2/4-bit types packed into int32_data: left to onnx.checker
    held = len(getattr(tensor, field))
    if held != count * per:
        raise BadInput(f"{label}: dims {quoted(dims, 60)} declare {count} values but {field} holds "
                       f"{held // per if per else held}; {redo}")


def _check_external(tensor, label: str, root: str | None, packed: bool, nbytes: int | None) -> None:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if packed or root is None:
        raise BadInput(f"{label} keeps its data in an external file ({quoted(location, 80)}), which a packed model "
                       "cannot have; pack a model whose weights are inside model.onnx")
    what = "move the data file into the model directory and name it relative to model.onnx"
    if not _plain_relative(location):
        raise BadInput(f"{label} points its external data at {quoted(location, 120)}, outside the model directory "
                       f"(absolute or with '..'); {what}")
    target = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, target]) != root:
        raise BadInput(f"{label} points its external data at {quoted(location, 120)}, which resolves outside the model "
                       f"directory (a symlink to {quoted(target, 120)}); {what}")
    try:
        info = os.stat(target)
    except OSError:
        raise BadInput(f"{label} keeps its data in {quoted(location, 120)}, which is missing; "
                       "copy the external data file beside model.onnx") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{label} keeps its data in {quoted(location, 120)}, which is not a regular file; {what}")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else info.st_size - offset
    except ValueError:
        raise BadInput(f"{label}: external data offset/length are not integers; re-save the model") from None
    if offset < 0 or length < 0 or offset + length > info.st_size:
        raise BadInput(f"{label}: external data [{offset}, {offset + length}) lies beyond the end of "
                       f"{quoted(location, 120)} ({info.st_size} bytes): truncated file; re-save the model")
    if nbytes is not None and length != nbytes:
        raise BadInput(f"{label}: dims {quoted(list(tensor.dims), 60)} need {nbytes} bytes but its external data "
                       f"holds {length}; re-save the model")


_CHECKED: dict = {}  # (what, path, directory signature) -> True: checks already passed in this process


def _once(key: tuple, check) -> None:
    if key in _CHECKED:
        return
    check()
    if len(_CHECKED) > 256:
        _CHECKED.clear()
    _CHECKED[key] = True


def check_onnx(path: Path, model_dir: Path, model=None) -> None:
    """An ONNX file of a model directory: the checks above, then onnx.checker on the path (large models too)."""
    import onnx

    path = str(path)

    def run():
        proto = model
        if proto is None:
            try:
                proto = onnx.load(path, load_external_data=False)
            except Exception as err:  # protobuf raises DecodeError and friends
                raise BadInput(f"{path} is not a readable ONNX model ({type(err).__name__}); re-export it") from None
        check_onnx_model(proto, path, Path(model_dir))
        order = topological_order(proto.graph, path)
        try:
            if order is None:
                onnx.checker.check_model(path)  # from the file: models over 2 GB too
            else:  # acyclic but listed out of order (ONNX Runtime sorts it itself): check it sorted
                onnx.checker.check_model(_sorted_copy(proto, order))
        except Exception as err:  # ValidationError, and C++ errors for unreadable files
            raise BadInput(f"ONNX model {path} is invalid: {one_line(err)}; re-export the model") from None

    _once(("onnx", path, _signature(model_dir)), run)


def check_onnx_bytes(model, where: str) -> None:
    """A packed model (in memory): the same checks; it can hold no external data."""
    import onnx

    check_onnx_model(model, where, None, packed=True)
    order = topological_order(model.graph, where)
    try:
        onnx.checker.check_model(model if order is None else _sorted_copy(model, order))
    except Exception as err:
        raise BadInput(f"ONNX model {where} is invalid: {one_line(err)}; re-run the pack step on a valid model") from None


def topological_order(graph, where: str) -> list[int] | None:
    """None when the nodes are listed in an order where every input is produced before it is read; otherwise
    an order that is (Kahn's algorithm); a cycle is refused. The ONNX spec asks for the listed order, ONNX
    Runtime sorts the graph itself, and fp16 conversion appends its casts at the end: only a cycle is fatal."""
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                producer[name] = index
    needs = [{producer[name] for name in node.input if name in producer} for node in graph.node]
    if all(dep < index for index, deps in enumerate(needs) for dep in deps):
        return None
    waiting = [len(deps) for deps in needs]
    users: list[list[int]] = [[] for _ in graph.node]
    for index, deps in enumerate(needs):
        for dep in deps:
            users[dep].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    order = []
    while ready:
        index = ready.pop()
        order.append(index)
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    if len(order) < len(graph.node):
        stuck = next(graph.node[i] for i, count in enumerate(waiting) if count > 0)
        raise BadInput(f"ONNX model {where} has a cycle in its graph (through node {quoted(stuck.name or stuck.op_type, 60)},"
                       f" which needs its own output); re-export the model")
    return order


def _sorted_copy(model, order: list[int]):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [copy.graph.node[i] for i in order]
    sorted_nodes = [onnx.NodeProto() for _ in nodes]
    for target, node in zip(sorted_nodes, nodes):
        target.CopyFrom(node)
    del copy.graph.node[:]
    copy.graph.node.extend(sorted_nodes)
    return copy


def _signature(model_dir: Path) -> tuple:
    """Names, sizes and mtimes of a directory's files: a repeated describe of an unchanged directory is free."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns, e.inode())
                            for e in os.scandir(model_dir) if e.is_file()))
    except OSError:
        return (os.urandom(8),)  # never cached


# ----------------------------------------------------------------------------- packed ONNX


def read_zstd_bounded(path: Path) -> bytes:
    """Decompress a packed model, refusing one that expands past what an ONNX model can be (a zstd bomb)."""
    import zstandard

    path = Path(path)
    size = _regular_size(path, "packed model")
    limit = min(MAX_PACKED_BYTES, max(64 * MiB, 64 * size))
    chunks, total = [], 0
    try:
        with open(path, "rb") as handle, zstandard.ZstdDecompressor().stream_reader(handle) as reader:
            while True:
                chunk = reader.read(8 * MiB)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise BadInput(f"packed model {path} expands past {_mib(limit)} ({size} bytes compressed): not a "
                                   "packed ONNX model; re-run the pack step")
                chunks.append(chunk)
    except zstandard.ZstdError as err:
        raise BadInput(f"{path} is not a readable zstd file ({one_line(err)}); re-run the pack step") from None
    except OSError as err:
        raise BadInput(f"cannot read packed model {path} ({err.strerror or err}); re-run the pack step") from None
    return b"".join(chunks)


def parse_packed(path: Path):
    """The ModelProto inside a packed model, decompressed under the bound."""
    import onnx

    data = read_zstd_bounded(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise BadInput(f"{path} does not hold an ONNX model ({type(err).__name__}); re-run the pack step") from None
    return model


def check_packed(path: Path, model_dir: Path, model=None) -> None:
    """A packed model: decompressed under the bound (unless ``model`` is the proto already read), then checked."""
    def run():
        check_onnx_bytes(model if model is not None else parse_packed(path), str(path))

    _once(("packed", str(path), _signature(model_dir)), run)


# ----------------------------------------------------------------------------- a described directory


def check_model_files(model_dir: Path, info) -> None:
    """The files a described model directory is made of (``info`` says which), checked before any library reads
    them: safetensors weights, an ONNX graph (or a packed one), the Hugging Face JSON files, the tokenizer."""
    model_dir = Path(model_dir)
    file = model_dir / info.file
    check_input_shape(info.input_shape, f"{model_dir}: model input_shape")
    if info.format in ("hf", "torch"):
        check_safetensors(file)
    if info.format == "hf":
        check_hf_files(model_dir)
    elif info.format == "onnx":
        check_onnx(file, model_dir)
    elif info.format == "onnx-packed":
        check_packed(file, model_dir)
    if info.task in TEXT_TASKS:
        check_tokenizer(model_dir, required=True)
