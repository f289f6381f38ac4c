"""ONNX Runtime quantization, one function per mode; the accuracy-aware search is in ``accuracy``."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np

from slimops.errors import BadInput
from slimops.onnx_graph import gemm_to_matmul


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def count_quantized(path: Path) -> dict[str, int]:
    """How many nodes of each quantized op type the written graph holds (what the quantizer really changed)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if any(tag in node.op_type for tag in ("Integer", "QLinear", "QuantizeLinear", "NBits", "QAttention",
                                                 "DynamicQuantize", "QGemm", "QEmbed", "QGather", "BlockQuantized")):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_model(source: Path, target: Path, config, exclude: list[str], model_dir: Path, calibration=None) -> None:
    """Write ``target`` from ``source`` with the config's mode, keeping ``exclude`` nodes in float."""
    with _quiet_root_logger():
        {"dynamic": _dynamic, "static": _static, "int4": _int4, "fp16": _fp16}[config.mode](
            Path(source), Path(target), config, list(exclude), Path(model_dir), calibration)


@contextlib.contextmanager
def _quiet_root_logger():
    # ORT's quantizers log advice ("consider pre-processing") on the root logger at WARNING for
    # every call; the accuracy-aware search makes dozens of calls.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _dynamic(source, target, config, exclude, model_dir, calibration):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source), str(target),
        op_types_to_quantize=config.op_types,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        extra_options=_extra_options(config),
    )


def _static(source, target, config, exclude, model_dir, calibration):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration_method]
    reader = CalibrationFeeds(source, model_dir, calibration.inputs[: config.calibration_samples])
    quantize_static(
        str(source), str(target), reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=config.op_types,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=method,
        extra_options=_extra_options(config),
    )


def _extra_options(config) -> dict:
    import onnx

    # Fused contrib ops (Attention, SkipLayerNormalization) defeat ORT's shape inference; their
    # outputs are float, which is what DefaultTensorType tells the quantizer.
    return {"MatMulConstBOnly": config.matmul_const_b_only, "DefaultTensorType": onnx.TensorProto.FLOAT}


def _int4(source, target, config, exclude, model_dir, calibration):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = gemm_to_matmul(onnx.load(str(source)))
    large = _large_matmuls(model, config.int4_min_weights)
    include = [name for name in large if name not in exclude]
    if not include:
        raise BadInput(f"no MatMul or Gemm with at least {config.int4_min_weights} weights to quantize to int4; "
                       "lower 'int4_min_weights'")
    # Embedding tables (Gather on a constant, e.g. a causal LM's token embeddings) in int4 blocks along the hidden
    # axis (GatherBlockQuantized), when asked: for a small LM they are a large part of what is left in float.
    ops = ("MatMul", "Gather") if config.int4_embeddings else ("MatMul",)
    if config.int4_embeddings:
        include += [name for name in _large_gathers(model, config.int4_min_weights) if name not in exclude]
    axes = (("MatMul", 0), ("Gather", 1))
    # accuracy_level 4 computes with int8 activations: the VNNI path on x86 CPUs.
    algo = DefaultWeightOnlyQuantConfig(block_size=config.block_size, is_symmetric=True, accuracy_level=4,
                                        op_types_to_quantize=ops, quant_axes=axes)
    # The quantizer takes every node of its op types, whatever nodes_to_include says: the rest (small, or kept
    # float by name) must be named in nodes_to_exclude to stay float.
    keep = [node.name for node in model.graph.node if node.op_type in ops and node.name not in include]
    quantizer = MatMulNBitsQuantizer(model, block_size=config.block_size, is_symmetric=True, accuracy_level=4,
                                     nodes_to_include=include, nodes_to_exclude=keep, algo_config=algo,
                                     op_types_to_quantize=ops, quant_axes=axes)
    nbits_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = nbits_logger.level
    nbits_logger.setLevel(logging.WARNING)  # it logs every node it visits at INFO through its own handler
    try:
        quantizer.process()
    finally:
        nbits_logger.setLevel(level)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def _large_matmuls(model, min_weights: int) -> list[str]:
    weights = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and len(node.input) > 1 and weights.get(node.input[1], 0) >= min_weights]


def _large_gathers(model, min_weights: int) -> list[str]:
    """Gathers from a constant table of at least ``min_weights`` values (embedding lookups)."""
    weights = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "Gather" and weights.get(node.input[0], 0) >= min_weights]


def _fp16(source, target, config, exclude, model_dir, calibration):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    # keep_io_types: callers keep feeding fp32/int64; the casts sit at the graph edges.
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=exclude or None)
    onnx.save(converted, str(target))


class CalibrationFeeds:
    """ORT CalibrationDataReader over recipe data: tokenised text or tensor examples, one at a time."""

    def __init__(self, source: Path, model_dir: Path, examples):
        import onnxruntime as ort

        session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in session.get_inputs()]
        if isinstance(examples, np.ndarray):
            self.feeds = [{self.input_names[0]: examples[i:i + 1].astype(np.float32)} for i in range(len(examples))]
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
            self.feeds = []
            for start in range(0, len(examples), 8):
                chunk = list(examples[start:start + 8])
                if chunk and isinstance(chunk[0], list):  # a sentence's words: token data (NER)
                    encoded = tokenizer(chunk, is_split_into_words=True, padding=True, truncation=True, max_length=128,
                                        return_tensors="np")
                elif chunk and isinstance(chunk[0], tuple):  # (text, text_pair): a pair classifier's input
                    encoded = tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True,
                                        truncation="longest_first", max_length=128, return_tensors="np")
                else:
                    encoded = tokenizer(chunk, padding=True, truncation=True, max_length=128, return_tensors="np")
                self.feeds.append({n: encoded[n].astype(np.int64) for n in self.input_names})
        self._iter = iter(self.feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self.feeds)
