"""Compilation techniques, one function each: ORT graph optimisation with the BERT fusions, OpenVINO IR, and
OpenVINO INT8 through NNCF (``nncf.quantize`` and ``nncf.quantize_with_accuracy_control``).

A library: the compile step and the candidate search (``search``) call these; nothing here imports the step layer.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from slimops.errors import BadInput


def bert_shape(model_dir: Path, task: str):
    """(num_heads, hidden_size) from the HF config carried with a text model, else None."""
    config_path = Path(model_dir) / "config.json"
    if task == "tensor-classification" or not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    if "num_attention_heads" not in config:
        return None
    return config["num_attention_heads"], config["hidden_size"]


def ort_optimize(source: Path, target: Path, shape, fusions: str = "auto", opt_level: int = 1,
                 use_gpu: bool = False) -> dict:
    """ORT's transformer optimizer: the BERT fusions for a BERT-like model (``shape`` = heads, hidden), else
    ORT's generic graph optimisations. Returns the fused operator counts and the model type used."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = "bert" if (fusions == "bert" or (fusions == "auto" and shape)) else None
    heads, hidden = shape or (0, 0)
    with contextlib.redirect_stdout(io.StringIO()):
        if model_type:
            optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden,
                                       opt_level=opt_level, use_gpu=use_gpu)
        else:
            optimized = optimize_model(str(source), model_type="bert", opt_level=max(opt_level, 1),
                                       only_onnxruntime=True, use_gpu=use_gpu)
    fused = {op: n for op, n in (optimized.get_fused_operator_statistics() or {}).items() if n}
    optimized.save_model_to_file(str(target))
    return {"fusions": fused, "model_type": model_type or "generic"}


def import_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise BadInput("target 'openvino' needs the OpenVINO runtime: pip install 'slimops[openvino]'") from None
    return ov


def openvino_ir(source: Path, target: Path) -> str:
    """ONNX -> OpenVINO IR (``target`` = model.xml beside its model.bin), weights kept fp32. The OpenVINO version."""
    ov = import_openvino()
    model = ov.convert_model(str(source))
    ov.save_model(model, str(target), compress_to_fp16=False)
    return ov.__version__


def ran_precision_of(xml: Path, precision: str) -> str:
    """The precision OpenVINO computes an IR in when slimops compiles it for ``precision``, read back."""
    from slimops.handlers.openvino_model import compile_properties, ran_precision

    ov = import_openvino()
    return ran_precision(ov.Core().compile_model(str(xml), "CPU", compile_properties(precision)))


def nncf_int8(source_xml: Path, target_xml: Path, calibration: list[dict], transformer: bool,
              accuracy: dict | None = None) -> dict:
    """OpenVINO INT8 through NNCF: ``nncf.quantize`` (transformer preset for text encoders), or with ``accuracy``
    = {validation, validation_fn, max_drop, drop_type} ``nncf.quantize_with_accuracy_control``, which reverts the
    layers that cost the most metric to float until the drop is within ``max_drop``."""
    try:
        import nncf
    except ImportError:
        raise BadInput("OpenVINO INT8 needs NNCF: pip install 'slimops[openvino]'") from None
    ov = import_openvino()
    model = ov.Core().read_model(str(source_xml))
    kwargs = {"subset_size": len(calibration), "model_type": nncf.ModelType.TRANSFORMER if transformer else None,
              "preset": nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE}
    with _quiet():
        if accuracy is None:
            quantized = nncf.quantize(model, nncf.Dataset(calibration), **kwargs)
        else:
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration), nncf.Dataset(accuracy["validation"]), accuracy["validation_fn"],
                max_drop=accuracy["max_drop"],
                drop_type=nncf.DropType.RELATIVE if accuracy.get("drop_type") == "relative" else nncf.DropType.ABSOLUTE,
                **kwargs)
    ov.save_model(quantized, str(target_xml), compress_to_fp16=False)
    return {"nncf": nncf.__version__, "mode": "quantize_with_accuracy_control" if accuracy else "nncf.quantize",
            "preset": kwargs["preset"].value, "model_type": "transformer" if transformer else None,
            "calibration_batches": len(calibration)}


@contextlib.contextmanager
def _quiet():
    """NNCF reports progress bars and INFO lines on its own logger; a step's output is its manifest."""
    import logging

    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
