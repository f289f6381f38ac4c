"""Model handlers: what a step can take in, and how to run it for evaluation.

A model directory is one of
- a Hugging Face directory (``config.json`` + ``model.safetensors``): a sentence-embedding encoder
  (mean pooling + normalisation, as sentence-transformers does) or a sequence classifier;
- a PyTorch module: ``architecture.json`` naming an importable ``package.module:factory`` plus
  safetensors weights;
- an ONNX model (``*.onnx``, external data files allowed), with its tokenizer beside it for text;
- a packed ONNX artifact (``model.onnx.zst``, written by the pack step), decompressed in memory;
- OpenVINO IR (``model.xml`` + ``model.bin``, written by compile with target openvino).
Nothing here unpickles: weights come from safetensors or ONNX only.
"""

from slimops.handlers.info import ModelInfo, describe
from slimops.handlers.runtime import load

__all__ = ["ModelInfo", "describe", "load"]
