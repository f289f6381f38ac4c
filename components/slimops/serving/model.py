"""One served model: an ONNX Runtime session built by ``slimops.handlers`` (plain or packed ONNX), or an OpenVINO
compiled model (an IR that compile auto or target openvino kept, at the precision it was validated in), its OIP
metadata, and inference on validated arrays.

Text models take their token tensors (``input_ids``, ``attention_mask``, ``token_type_ids``, INT64) or, in
their place, a BYTES tensor ``text`` tokenized with the tokenizer files beside the model. Sentence encoders
also answer ``embedding`` (mean-pooled and normalised as in validation) and return only that by default:
the raw ``last_hidden_state`` (batch x tokens x 384 floats) is there when a request names it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from slimops.errors import BadInput
from slimops.handlers import describe, load
from slimops.serving.limits import Limits
from slimops.serving.oip import RequestError, TensorSpec, parse_request, quote, spec_from_ort, tensor_output

SERVABLE = ("onnx", "onnx-packed", "openvino")
TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"


class ServedModel:
    def __init__(self, name: str, version: str, model_dir: Path, threads: int | None = None):
        self.name, self.version, self.model_dir = name, str(version), Path(model_dir)
        self.info = describe(self.model_dir)
        if self.info.format not in SERVABLE:
            raise BadInput(f"{model_dir} holds a {self.info.format} model; serve runs ONNX models and OpenVINO IR "
                           "(run the export step first)")
        self.runnable = load(self.model_dir, self.info, threads)
        self.platform = "openvino_ir" if self.info.format == "openvino" else "onnxruntime_onnx"
        self.session = (OpenVinoSession(self.runnable.compiled) if self.info.format == "openvino"
                        else self.runnable.session)
        try:
            self.inputs = {s.name: s for s in map(spec_from_ort, self.session.get_inputs())}
            graph_outputs = [spec_from_ort(o) for o in self.session.get_outputs()]
        except ValueError as err:
            raise BadInput(f"{model_dir}: {err}; serve takes models with numeric or string tensors") from None
        self.graph_output_names = [o.name for o in graph_outputs]
        self.outputs = {o.name: o for o in graph_outputs}
        self.text = self.info.task != "tensor-classification"
        self.alternatives: dict[str, TensorSpec] = {}
        self.default_outputs = list(self.graph_output_names)
        if self.text:
            self.alternatives = {TEXT_INPUT: TensorSpec(TEXT_INPUT, "BYTES", (-1,))}
            self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two threads
            self._token_limits = _token_limits(self.model_dir, self.info.max_length)
            if self.info.task == "sentence-embedding":
                width = graph_outputs[0].shape[-1] if graph_outputs and graph_outputs[0].shape else -1
                self.outputs[EMBEDDING_OUTPUT] = TensorSpec(EMBEDDING_OUTPUT, "FP32", (-1, width))
                self.default_outputs = [EMBEDDING_OUTPUT]

    def metadata(self) -> dict:
        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": [s.metadata() for s in self.inputs.values()],
                "outputs": [s.metadata() for s in self.outputs.values()]}

    def parse(self, body, limits: Limits):
        """Validate a request for this model (RequestError on a client mistake)."""
        arrays, requested, request_id = parse_request(body, self.inputs, limits, self.alternatives)
        unknown = [name for name in requested or [] if name not in self.outputs]
        if unknown:
            raise RequestError(f"unknown output(s) {', '.join(map(quote, unknown[:5]))}; this model gives "
                               f"{', '.join(self.outputs)}")
        if self.text and TEXT_INPUT not in arrays:
            self._check_tokens(arrays)
        return arrays, requested, request_id

    def feeds(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs for a validated request: a text model's ``text`` is tokenized here, once for the
        whole batch, so every chunk is padded alike and the answer is the one an unchunked run gives."""
        if not (self.text and TEXT_INPUT in arrays):
            return arrays
        texts = [str(t) for t in arrays[TEXT_INPUT].reshape(-1)]
        with self._tokenizer_lock:
            encoded = self.runnable.tokenize(texts)
        return {name: encoded[name].astype(np.int64) for name in self.inputs if name in encoded}

    def run_options(self):
        """Per-request ONNX Runtime options: ``terminate`` stops a timed-out run between two nodes, and the
        arena shrinkage hands a large batch's buffers back after each run instead of keeping them for good."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4  # a terminated run is expected, not an error worth a log line
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options

    def run(self, feeds: dict[str, np.ndarray], names: list[str], options=None) -> dict[str, np.ndarray]:
        """Run one chunk (in a worker thread): the requested outputs by name. Client mistakes the graph finds
        are RequestError; anything else is the model's failure and propagates (500, counted by the canary)."""
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        wanted = [n for n in self.graph_output_names
                  if n in names or (EMBEDDING_OUTPUT in names and n == self.graph_output_names[0])]
        try:
            values = dict(zip(wanted, self.session.run(wanted, feeds, options)))
        except InvalidArgument as err:
            raise RequestError(f"the model refused the input: {str(err).splitlines()[0][:300]}") from None
        if EMBEDDING_OUTPUT in names:
            mask = feeds.get("attention_mask")
            if mask is None:
                mask = np.ones(values[self.graph_output_names[0]].shape[:2], dtype=np.int64)
            values[EMBEDDING_OUTPUT] = self.runnable.finish(values[self.graph_output_names[0]].astype(np.float32), mask)
        return {name: values[name] for name in names}

    def output_names(self, requested: list[str] | None) -> list[str]:
        return requested or self.default_outputs

    def _check_tokens(self, arrays: dict[str, np.ndarray]) -> None:
        """Token ids outside the embedding tables would make ONNX Runtime fail inside a Gather: a client
        mistake, refused here so it is answered 400 (not 500) and never counted against the model."""
        vocab, types, positions = self._token_limits
        shapes = {arr.shape for arr in arrays.values()}
        if len(shapes) > 1:
            raise RequestError(f"token tensors must share one shape [batch, tokens], got {sorted(map(list, shapes))}")
        tokens = next(iter(shapes))[-1]
        if tokens > positions:
            raise RequestError(f"{tokens} tokens is over the model's {positions} positions; truncate the input",
                               status=413)
        for name, upper in (("input_ids", vocab), ("token_type_ids", types), ("attention_mask", 2)):
            arr = arrays.get(name)
            if arr is not None and upper and arr.size and (arr.min() < 0 or arr.max() >= upper):
                raise RequestError(f"{name} values must lie in [0, {upper}), got {int(arr.min())}..{int(arr.max())}")


def _token_limits(model_dir: Path, max_length: int) -> tuple[int | None, int | None, int]:
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return (config.get("vocab_size"), config.get("type_vocab_size"),
            int(config.get("max_position_embeddings") or max_length))


_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
             "i32": "tensor(int32)", "i16": "tensor(int16)", "i8": "tensor(int8)", "u8": "tensor(uint8)",
             "u16": "tensor(uint16)", "u32": "tensor(uint32)", "u64": "tensor(uint64)", "boolean": "tensor(bool)"}


class _Port:
    """An OpenVINO port as ONNX Runtime's NodeArg reads (name, type, shape), for the OIP specs."""

    def __init__(self, port):
        self.name = port.get_any_name()
        type_name = port.get_element_type().get_type_name()
        if type_name not in _OV_TYPES:
            raise ValueError(f"OpenVINO type {type_name} has no Open Inference Protocol datatype")
        self.type = _OV_TYPES[type_name]
        self.shape = [dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()]


class OpenVinoSession:
    """The slice of ``onnxruntime.InferenceSession`` that serving uses, over an OpenVINO compiled model. One infer
    request per call: a compiled model is shared by the inference threads, an infer request is not."""

    def __init__(self, compiled):
        self.compiled = compiled

    def get_inputs(self):
        return [_Port(p) for p in self.compiled.inputs]

    def get_outputs(self):
        return [_Port(p) for p in self.compiled.outputs]

    def run(self, names, feeds, options=None):
        request = self.compiled.create_infer_request()
        results = request.infer(feeds)
        by_name = {port.get_any_name(): np.asarray(value) for port, value in results.items()}
        return [by_name[name] for name in names]
