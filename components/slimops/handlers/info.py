"""Recognise a model directory and describe it without loading weights."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from slimops.errors import BadInput
from slimops.formats import (check_architecture, check_hf_files, check_model_files, check_onnx, check_packed,
                             check_tokenizer, has_tokenizer_files, load_json_file, parse_packed)
from slimops.manifest import read_manifest, within

Task = Literal["sentence-embedding", "text-classification", "tensor-classification", "token-classification",
               "causal-lm", "question-answering"]
PACKED_FILE = "model.onnx.zst"  # the pack step's output: one ONNX protobuf, zstd-compressed
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["hf", "torch", "onnx", "openvino", "onnx-packed"]
    task: Task
    file: str  # main weights / graph file, relative to the model directory
    factory: str | None = None  # torch: "package.module:callable"
    kwargs: dict = {}
    input_shape: list[int] | None = None  # tensor models: one example's shape
    num_labels: int | None = None
    max_length: int = 128  # text models: truncation length
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    precision: str = "fp32"  # fp32 / fp16 / int8 / int4, for reports


# Tasks as optimum names them, and the task slimops runs each as. A task named here but mapped to None is known
# (config.json says it) but has no metric in slimops yet: it is refused with that reason, never guessed.
TASKS: dict[str, str | None] = {
    "feature-extraction": "sentence-embedding",
    "sentence-similarity": "sentence-embedding",
    "sentence-embedding": "sentence-embedding",
    "text-classification": "text-classification",
    "token-classification": "token-classification",  # NER: word tags, scored with seqeval entity F1
    "question-answering": "question-answering",  # extractive: answer spans, SQuAD EM/F1
    "image-classification": "tensor-classification",  # a PyTorch factory (architecture.json), an HF vision model, ONNX
    "text-generation": "causal-lm",  # perplexity on plain text (slimops.tasks.causal_lm)
    "fill-mask": None,
}
SUPPORTED_TASKS = ("feature-extraction", "text-classification", "token-classification", "question-answering",
                   "image-classification", "text-generation")
# config.json architectures suffix -> optimum task.
HEADS = (("ForSequenceClassification", "text-classification"), ("ForTokenClassification", "token-classification"),
         ("ForQuestionAnswering", "question-answering"), ("ForImageClassification", "image-classification"),
         ("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"), ("ForMaskedLM", "fill-mask"))
HOW_TO_SET_TASK = ("set it in the recipe (model: {path: ..., task: text-classification}) or on the step "
                   "(--set task=text-classification); tasks: " + ", ".join(SUPPORTED_TASKS))


def task_of(name: str, where: str) -> Task:
    """The task slimops runs for an optimum task name, or BadInput saying which names work."""
    if name not in TASKS:
        raise BadInput(f"{where}: unknown task {name!r}; tasks: {', '.join(SUPPORTED_TASKS)}")
    if TASKS[name] is None:
        raise BadInput(f"{where}: task {name!r} is not supported by slimops yet (no export/metric for it); "
                       f"supported: {', '.join(SUPPORTED_TASKS)}")
    return TASKS[name]


def check_task_name(name: str | None) -> str | None:
    """A pydantic validator's body: a task name slimops runs (ValueError naming the ones it does otherwise)."""
    if name is not None:
        try:
            task_of(name, "task")
        except BadInput as err:
            raise ValueError(str(err).removeprefix("task: ")) from None
    return name


# A step config's `task` field: checked against the tasks slimops runs; None means "infer from config.json".
TaskName = Annotated[str | None, AfterValidator(check_task_name)]
TASK_HELP = ("the model's task as optimum names it (feature-extraction, text-classification); "
             "default: inferred from config.json (architectures, problem_type)")


def describe(model_dir: Path, task: str | None = None) -> ModelInfo:
    """What kind of model lives in ``model_dir``; raises BadInput with what to do when unusable.

    ``task`` (an optimum task name, from the recipe or the step config) overrides what config.json says."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise BadInput(f"model path not found: {model_dir}; give a model directory (or .onnx file) that exists")
    if model_dir.is_file():
        raise BadInput(f"model path {model_dir} is a file; give the directory that holds it")
    if not model_dir.is_dir():
        raise BadInput(f"model path {model_dir} is not a directory (a device or FIFO); give a model directory")
    try:
        names = {p.name for p in model_dir.iterdir()}
    except PermissionError:
        raise BadInput(f"model directory {model_dir} is not readable; fix its permissions") from None
    check_tree(model_dir)
    refuse_remote_code(model_dir)
    info = _describe(model_dir, names, task)
    _check_info(model_dir, info)
    check_model_files(model_dir, info)  # weights, graph, JSON and tokenizer files, before any library reads them
    return info


def _describe(model_dir: Path, names: set[str], task: str | None = None) -> ModelInfo:
    manifest = read_manifest(model_dir)
    if manifest and manifest.get("model"):
        try:
            info = ModelInfo.model_validate(manifest["model"])
            if task and "tensor-classification" not in (info.task, task_of(task, "task")) \
                    and info.task != task_of(task, "task"):
                info = info.model_copy(update={"task": task_of(task, "task"),
                                               "normalize": task_of(task, "task") == "sentence-embedding"})
            return info
        except ValidationError:
            raise BadInput(f"{model_dir / 'manifest.json'} has a 'model' section slimops did not write; remove "
                           "manifest.json to have the directory described from its files") from None
    if "architecture.json" in names:
        return _describe_torch(model_dir)
    if "model.safetensors" in names and not (model_dir / "model.safetensors").is_file():
        # transformers would fall back to pytorch_model.bin (torch.load, a pickle) beside it
        raise BadInput(f"{model_dir / 'model.safetensors'} is not a regular file; give the weights as a safetensors file")
    if "config.json" in names and ("model.safetensors" in names or "pytorch_model.bin" in names):
        return _describe_hf(model_dir, names, task)
    onnx_files = sorted(n for n in names if n.endswith(".onnx"))
    if onnx_files:
        return _describe_onnx(model_dir, onnx_files)
    if PACKED_FILE in names:
        return _describe_packed(model_dir)
    raise BadInput(
        f"{model_dir} is not a model directory: expected config.json + model.safetensors (Hugging Face), "
        f"architecture.json + *.safetensors (PyTorch), a *.onnx file or {PACKED_FILE} (packed ONNX)"
    )


MAX_ENTRIES = 10_000  # files and folders in one model directory


def check_tree(root: Path, kind: str = "model directory") -> None:
    """Refuse what a model directory (or a saved dataset's folder: ``kind``) must never hold: links that lead outside
    it, links to directories, and anything but regular files and folders (a FIFO named model.onnx would hang every
    reader). Nothing here
    follows a link, so a file outside the directory is never read, hashed or carried into an output."""
    real = os.path.realpath(root)
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.count(os.sep) - str(root).count(os.sep) > 32:
            raise BadInput(f"{root} nests folders more than 32 deep; give a {kind} with its own files alone")  # os.walk does not descend into linked folders
        for name in dirnames + filenames:
            count += 1
            if count > MAX_ENTRIES:
                raise BadInput(f"{root} holds more than {MAX_ENTRIES} files; give a {kind} with its own files alone")
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if target == real or not within(target, real):
                    raise BadInput(f"{path} links outside the {kind}; copy the file in instead of linking it")
                if os.path.isdir(target):
                    raise BadInput(f"{path} links to a directory; copy the files in instead of linking the folder")
                if not os.path.isfile(target):
                    raise BadInput(f"{path} is a broken link or links to a special file; remove it")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BadInput(f"{path} is not a regular file (a FIFO, socket or device); remove it from the {kind}")


def refuse_remote_code(model_dir: Path) -> None:
    """A Hugging Face config or tokenizer config with ``auto_map`` needs its bundled Python to load; slimops never
    runs code from a model directory (trust_remote_code is always False), so it refuses the model up front."""
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            data = _read_json(path)
            if isinstance(data, dict) and "auto_map" in data:
                raise BadInput(f"{path} has 'auto_map': the model needs its own Python code, which slimops never runs; "
                               "use a model whose architecture transformers ships")


def _check_info(model_dir: Path, info: ModelInfo) -> None:
    """The file a description names lies inside the directory and is a regular file; a factory is allowed."""
    real = os.path.realpath(model_dir)
    target = os.path.realpath(os.path.join(model_dir, info.file))
    if target == real or not within(target, real):
        raise BadInput(f"{model_dir}: model file {info.file[:80]!r} is outside the model directory; "
                       "name a file inside it")
    if not os.path.isfile(target):
        raise BadInput(f"{model_dir}: model file {info.file[:80]!r} is missing or not a regular file; "
                       "re-run the step that wrote it")
    if info.factory is not None:
        from slimops import factories

        factories.check(info.factory, f"{model_dir}")


def has_tokenizer(model_dir: Path) -> bool:
    return any((Path(model_dir) / name).is_file() for name in ("tokenizer.json", "vocab.txt"))


def _read_json(path: Path) -> dict:
    # Size- and depth-capped; an object or a list (modules.json): the callers' checks say which.
    return load_json_file(path)


def infer_task(model_dir: Path, config: dict, names: set[str]) -> str:
    """The optimum task of a Hugging Face directory, from config.json's architectures and problem_type (and a
    sentence-transformers layout); BadInput saying how to set it when they do not tell."""
    architectures = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    problem = config.get("problem_type")
    for suffix, task in HEADS:
        if any(a.endswith(suffix) for a in architectures):
            if task == "text-classification" and problem in ("multi_label_classification", "regression"):
                raise BadInput(f"{model_dir}/config.json: problem_type {problem!r} is not supported yet (slimops scores "
                               "single-label classifiers); set problem_type to single_label_classification if it is one")
            return task
    if problem == "single_label_classification":
        return "text-classification"
    if architectures and all(a.endswith("Model") for a in architectures):
        return "feature-extraction"  # a bare encoder (BertModel): its embeddings
    if not architectures and ({"modules.json", "1_Pooling"} & names):
        return "feature-extraction"  # a sentence-transformers directory
    said = f"architectures {architectures[:3]}" if architectures else "no architectures"
    raise BadInput(f"cannot infer the task of {model_dir}: config.json has {said} and no problem_type; "
                   + HOW_TO_SET_TASK)


def _describe_hf(model_dir: Path, names: set[str], task: str | None = None) -> ModelInfo:
    if "model.safetensors" not in names:
        raise BadInput(
            f"{model_dir} holds only pytorch_model.bin (a pickle, never loaded here); "
            "save the model with safe_serialization=True to get model.safetensors"
        )
    check_hf_files(model_dir)  # config.json, 1_Pooling, modules.json: the structure read below
    config = _read_json(model_dir / "config.json")
    name = task or infer_task(model_dir, config, names)
    kind = task_of(name, f"{model_dir}" if task is None else "task")
    if kind == "tensor-classification":  # a vision model: its pixel_values are the data's tensors, as they are
        return ModelInfo(format="hf", task=kind, file="model.safetensors", input_shape=vision_shape(model_dir, config),
                         num_labels=len(config.get("id2label", {})) or None, normalize=False)
    if kind in ("text-classification", "token-classification"):
        return ModelInfo(format="hf", task=kind, file="model.safetensors",
                         num_labels=len(config.get("id2label", {})) or None, normalize=False)
    if kind == "question-answering":  # question + context: the SQuAD examples' length, within the model's positions
        from slimops.tasks.question_answering import DEFAULT_MAX_LENGTH

        positions = config.get("max_position_embeddings")
        length = min(DEFAULT_MAX_LENGTH, positions) if isinstance(positions, int) and positions >= 64 else DEFAULT_MAX_LENGTH
        return ModelInfo(format="hf", task=kind, file="model.safetensors", max_length=length, normalize=False)
    if kind == "causal-lm":  # texts are cut to the positions the model has (GPT-2: n_positions)
        positions = config.get("n_positions", config.get("max_position_embeddings"))
        length = min(128, positions) if isinstance(positions, int) and positions >= 8 else 128
        return ModelInfo(format="hf", task="causal-lm", file="model.safetensors", max_length=length, normalize=False)
    pooling, normalize = "mean", True
    pooling_config = model_dir / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        pooling = "cls" if _read_json(pooling_config).get("pooling_mode_cls_token") else "mean"
    if (model_dir / "modules.json").is_file():
        modules = _read_json(model_dir / "modules.json")
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    return ModelInfo(format="hf", task="sentence-embedding", file="model.safetensors",
                     pooling=pooling, normalize=normalize)


def vision_shape(model_dir: Path, config: dict) -> list[int]:
    """One image's shape, [num_channels, height, width], from a vision model's config.json (image_size: a side, or
    [height, width]); BadInput saying which field to fix when it is missing or not a size."""
    where = f"{model_dir}/config.json"
    channels, size = config.get("num_channels"), config.get("image_size")
    if not (_positive(channels) and channels <= 64):
        raise BadInput(f"{where}: image-classification needs 'num_channels' (1 to 64, e.g. 3 for RGB), got "
                       f"{_shown(channels)}; set it to the channels of the model's pixel_values")
    side = [size, size] if _positive(size) else size
    if not (isinstance(side, list) and len(side) == 2 and all(_positive(d) and d <= 8192 for d in side)):
        raise BadInput(f"{where}: image-classification needs 'image_size' (pixels, 1 to 8192, or [height, width]), got "
                       f"{_shown(size)}; set it to the size of the model's pixel_values")
    return [channels, *side]


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _shown(value) -> str:
    return "nothing" if value is None else repr(value)[:40]


def _describe_torch(model_dir: Path) -> ModelInfo:
    arch = _read_json(model_dir / "architecture.json")
    check_architecture(arch, model_dir / "architecture.json")
    weights = arch.get("weights", "model.safetensors")
    if not (model_dir / weights).is_file():
        raise BadInput(f"{model_dir}/architecture.json names weights {weights!r}, which is missing; "
                       "save the state dict with safetensors.torch.save_file")
    if not isinstance(arch.get("factory"), str) or ":" not in arch["factory"]:
        raise BadInput(f"{model_dir}/architecture.json needs 'factory': 'package.module:callable'")
    return ModelInfo(format="torch", task=arch.get("task", "tensor-classification"), file=weights,
                     factory=arch["factory"], kwargs=arch.get("kwargs", {}),
                     input_shape=arch.get("input_shape"), num_labels=arch.get("num_labels"), normalize=False)


def _describe_onnx(model_dir: Path, onnx_files: list[str]) -> ModelInfo:
    file = "model.onnx" if "model.onnx" in onnx_files else onnx_files[0]
    import onnx

    try:
        # Reading the graph without external data is enough to learn its interface.
        model = onnx.load(str(model_dir / file), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise BadInput(f"{model_dir / file} is not a readable ONNX model ({type(err).__name__}); re-export it") from None
    info = _info_from_graph(model_dir, file, model.graph, "onnx")
    check_onnx(model_dir / file, model_dir, model)  # ops, opsets, dims, data sizes, external data, onnx.checker
    check_tokenizer(model_dir, required=has_tokenizer_files(model_dir))
    return info


def read_packed(path: Path) -> bytes:
    """The ONNX protobuf inside a packed file, decompressed in memory (no temporary file)."""
    import zstandard

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadInput(f"cannot read packed model {path} ({err.strerror}); re-run the pack step") from None
    try:
        # A stream decompressor also takes frames that do not record their content size.
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except zstandard.ZstdError as err:
        raise BadInput(f"{path} is not a readable zstd file ({err}); re-run the pack step") from None


def _describe_packed(model_dir: Path) -> ModelInfo:
    path = model_dir / PACKED_FILE
    model = parse_packed(path)  # decompressed under a bound: a zstd bomb is refused, not expanded
    info = _info_from_graph(model_dir, PACKED_FILE, model.graph, "onnx-packed")
    check_packed(path, model_dir, model)
    check_tokenizer(model_dir, required=has_tokenizer_files(model_dir))
    return info


def _config_head(model_dir: Path) -> str | None:
    """The optimum task of the head config.json names beside an exported graph (optimum copies it), or None."""
    path = Path(model_dir) / "config.json"
    config = _read_json(path) if path.is_file() else {}
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return next((task for suffix, task in HEADS for a in (architectures or [])
                 if isinstance(a, str) and a.endswith(suffix)), None)


def _logits_rank(graph) -> int | None:
    """The declared rank of a graph's ``logits`` output (3 for a token classifier), None when it has none."""
    logits = next((o for o in graph.output if o.name == "logits"), None)
    if logits is None or not logits.type.tensor_type.HasField("shape"):
        return None
    return len(logits.type.tensor_type.shape.dim)


def _info_from_graph(model_dir: Path, file: str, graph, fmt: str) -> ModelInfo:
    if not graph.node or not graph.output:
        raise BadInput(f"{model_dir / file} holds no ONNX graph (empty or truncated file); re-export the model")
    outputs = [o.name for o in graph.output]
    if has_tokenizer(model_dir):
        task = "text-classification" if "logits" in outputs else "sentence-embedding"
        if {"start_logits", "end_logits"} <= set(outputs):  # an extractive QA head: a span's start and end
            from slimops.tasks.question_answering import DEFAULT_MAX_LENGTH

            return ModelInfo(format=fmt, task="question-answering", file=file, max_length=DEFAULT_MAX_LENGTH,
                             normalize=False)
        head = _config_head(model_dir) if "logits" in outputs else None
        if head in ("text-generation", "token-classification", "text-classification"):
            task = TASKS[head]  # config.json's head says what the logits are: per position, per token or per text
        elif "logits" in outputs and _logits_rank(graph) == 3:
            task = "token-classification"  # logits per token ([batch, tokens, labels]) and no config to say more
        return ModelInfo(format=fmt, task=task, file=file, normalize=task == "sentence-embedding")
    # A tensor classifier: one float input [batch, example dims...] and logits [batch, classes] first.
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if len(inputs) != 1:
        raise BadInput(f"{model_dir / file} has {len(inputs)} inputs; a tensor model takes one (a text model needs its "
                       "tokenizer files beside it)")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type not in (1, 10):  # FLOAT, FLOAT16
        raise BadInput(f"{model_dir / file}: input {inputs[0].name[:60]!r} is not float; slimops feeds float32 "
                       "tensors to a tensor model")
    first = graph.output[0].type.tensor_type
    if first.elem_type not in (1, 10, 11):  # FLOAT, FLOAT16, DOUBLE: logits
        raise BadInput(f"{model_dir / file}: its first output is not float; a tensor classifier returns logits")
    known = tensor.HasField("shape") and first.HasField("shape")  # only shapes the graph declares are checked
    if known and (len(tensor.shape.dim) < 2 or len(first.shape.dim) != 2):
        raise BadInput(f"{model_dir / file}: a tensor classifier takes [batch, ...] and returns [batch, classes] "
                       f"first; this one takes rank {len(tensor.shape.dim)} and returns rank {len(first.shape.dim)}")
    shape = [d.dim_value for d in tensor.shape.dim[1:]] if tensor.HasField("shape") else None
    num_labels = None
    if _config_head(model_dir) == "image-classification":  # an exported HF vision model (optimum copies config.json)
        config = _read_json(model_dir / "config.json")
        image = vision_shape(model_dir, config)  # optimum leaves channels, height and width dynamic: config.json says
        shape = image if shape is None or len(shape) != 3 else [d or c for d, c in zip(shape, image)]
        num_labels = len(config.get("id2label") or {}) or None
    return ModelInfo(format=fmt, task="tensor-classification", file=file, input_shape=shape, num_labels=num_labels,
                     normalize=False)
