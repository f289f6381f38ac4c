"""Saving a rewritten graph and measuring it against the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Above this many bytes of weights the graph cannot be one protobuf; it is saved with external data.
_PROTOBUF_LIMIT = 1_800_000_000


def count_params(model) -> int:
    return int(sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer))


def save_model(model, target) -> None:
    import onnx

    size = sum(len(init.raw_data) or int(np.prod(init.dims, dtype=np.int64)) * 4 for init in model.graph.initializer)
    if size > _PROTOBUF_LIMIT:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def check_output(target, source) -> str | None:
    """Run onnx.checker on the output. A failure is ours (raised) unless the input fails it already,
    e.g. the fp16 quantizer's graph whose input Casts come after their consumers; ORT still runs those."""
    import onnx

    try:
        onnx.checker.check_model(str(target))
        return None
    except onnx.checker.ValidationError:
        try:
            onnx.checker.check_model(str(source))
        except onnx.checker.ValidationError as err:
            return f"the input model already fails onnx.checker: {str(err).splitlines()[0][:200]}"
        raise


def output_difference(source_dir: Path, source_info, out_dir: Path, out_info, threads: int | None = None) -> float:
    """Max abs difference of the outputs (logits or pooled embeddings) on the sample batch: informational."""
    from slimops.handlers import load
    from slimops.handlers.runtime import sample_batch

    batch = sample_batch(source_info, 4)
    before = load(source_dir, source_info, threads).predict(batch)
    after = load(out_dir, out_info, threads).predict(batch)
    return float(np.max(np.abs(before - after)))
