"""pack: a Deep-Compression-style artifact. The ONNX model (typically pruned, then quantized) is
serialized as one protobuf, external data folded in, and entropy-coded with zstandard.

Pruned weights quantize to runs of zero bytes and int8 weights take few distinct values; a general-
purpose entropy coder turns both into real savings on disk, which a plain ONNX file does not show.
``slimops.handlers.load`` runs the packed directory: it decompresses in memory and builds the ONNX
Runtime session from bytes (no temporary file, no pickle).
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import Field

from slimops.errors import BadInput
from slimops.handlers.info import PACKED_FILE, read_packed
from slimops.steps import Step, StepConfig, StepResult

_PROTOBUF_LIMIT = 2**31 - 1  # one serialized ModelProto cannot be larger


class PackConfig(StepConfig):
    level: int = Field(19, ge=1, le=22, description="zstd compression level, 1 (fast) .. 22 (smallest; 20+ use "
                                                    "much more memory to compress)")
    threads: int = Field(0, ge=0, le=256, description="compression worker threads; 0 = single-threaded")


class Pack(Step):
    name = "pack"
    summary = "ONNX -> model.onnx.zst: one protobuf entropy-coded with zstd (Deep-Compression-style), loadable"
    Config = PackConfig
    accepts = ("onnx",)
    produces = "onnx-packed"

    def run(self, ctx, config: PackConfig) -> StepResult:
        import onnx
        import zstandard

        info = ctx.model_info
        ctx.require_onnx("pack")
        source = ctx.model_dir / info.file
        header = onnx.load(str(source), load_external_data=False)
        data_files = sorted({entry.value for tensor in _tensors(header.graph)
                             if tensor.data_location == onnx.TensorProto.EXTERNAL
                             for entry in tensor.external_data if entry.key == "location"})
        plain_files = [source] + [ctx.model_dir / name for name in data_files]
        plain_size = sum(p.stat().st_size for p in plain_files)
        if data_files:
            if plain_size > _PROTOBUF_LIMIT:
                raise BadInput(f"{source} with its external data is {plain_size / 1e9:.1f} GB, over the 2 GB "
                               "a single ONNX protobuf can hold; pack only takes models under 2 GB")
            model = onnx.load(str(source))  # folds the external data into the tensors
            serialized = model.SerializeToString()
        else:
            model = header
            serialized = source.read_bytes()  # exactly the file in
        digest = hashlib.sha256(serialized).hexdigest()

        ctx.carry_files(skip_suffixes=(".onnx", ".onnx.data", ".onnx_data", ".safetensors", ".bin", ".zst",
                                       *data_files))
        compressor = zstandard.ZstdCompressor(level=config.level, threads=config.threads, write_checksum=True)
        target = ctx.out_dir / PACKED_FILE
        target.write_bytes(compressor.compress(serialized))
        roundtrip = hashlib.sha256(read_packed(target)).hexdigest()
        if roundtrip != digest:
            raise RuntimeError(f"packed {target} does not decompress to the model written "
                               f"(sha256 {roundtrip} != {digest})")
        del serialized

        out_info = info.model_copy(update={"format": "onnx-packed", "file": PACKED_FILE})
        packed_size = target.stat().st_size
        zero_bytes, zero_values, weight_bytes, weight_values = _zero_stats(model)
        metrics = {
            "plain_size_bytes": plain_size,
            "packed_size_bytes": packed_size,
            "ratio": plain_size / packed_size,
            "roundtrip_ok": True,
            "parity_max_abs_diff": _parity(ctx, info, out_info),
        }
        details = {
            "zstd_level": config.level,
            "threads": config.threads,
            "zstandard_version": zstandard.__version__,
            "zstd_version": ".".join(map(str, zstandard.ZSTD_VERSION)),
            "sha256": digest,
            "plain_files": [p.name for p in plain_files],
            "weight_bytes": weight_bytes,
            "weight_zero_byte_fraction": zero_bytes / weight_bytes if weight_bytes else 0.0,
            "weight_zero_value_fraction": zero_values / weight_values if weight_values else 0.0,
        }
        return StepResult(model_info=out_info, metrics=metrics, details=details)


def _tensors(graph):
    """Every initializer in the graph and its subgraphs (If / Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _zero_stats(model) -> tuple[int, int, int, int]:
    """Zero bytes, zero values, bytes and values over the weights: why the packed file is small."""
    from onnx import numpy_helper

    zero_bytes = zero_values = total_bytes = total_values = 0
    for tensor in _tensors(model.graph):
        try:
            array = numpy_helper.to_array(tensor)
        except Exception:  # a type numpy cannot hold (e.g. int4 on an old onnx): skip it
            continue
        raw = np.frombuffer(np.ascontiguousarray(array).tobytes(), dtype=np.uint8)
        zero_bytes += int(np.count_nonzero(raw == 0))
        total_bytes += raw.size
        zero_values += int(array.size - np.count_nonzero(array))
        total_values += array.size
    return zero_bytes, zero_values, total_bytes, total_values


def _parity(ctx, info, out_info) -> float:
    """The packed directory loads through the runtime and predicts what the input model predicts."""
    from slimops.handlers import load
    from slimops.handlers.runtime import sample_batch

    batch = sample_batch(info)
    expected = load(ctx.model_dir, info, threads=ctx.threads).predict(batch)
    got = load(ctx.out_dir, out_info, threads=ctx.threads).predict(batch)
    return float(np.abs(expected - got).max())


STEP = Pack
