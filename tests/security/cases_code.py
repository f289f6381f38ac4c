"""Class 1: code runs from inputs. Nothing a model directory, manifest or step config names is imported unless
the user's allowlist admits it; remote code and pickles are never loaded."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

from .corpus import Case, Invocation, copy_model, edit_json

DIGITS_DATA = '{"format": "digits", "split": "test", "limit": 40}'


class _Payload:
    """A pickle that runs a shell command when loaded: what torch.load of an untrusted file would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _torch_factory(factory, kwargs=None, step="export"):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get("digits_trained"), work / "model")
        canary = work / "canary"
        (model / "manifest.json").unlink()  # described from architecture.json alone
        edit_json(model / "architecture.json", lambda a: a.update(
            factory=factory, kwargs=kwargs if kwargs is not None else {"command": f"touch {canary}"}))
        return Invocation(["step", step, "--model", model, "--out", work / "out"], out=work / "out",
                          watch=[model], canary=canary)
    return build


def _manifest_factory(factory):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get("digits_trained"), work / "model")
        canary = work / "canary"
        edit_json(model / "manifest.json", lambda m: m["model"].update(factory=factory))
        edit_json(model / "manifest.json", lambda m: m["model"].update(kwargs={"command": f"touch {canary}"}))
        return Invocation(["step", "export", "--model", model, "--out", work / "out"], out=work / "out",
                          watch=[model], canary=canary)
    return build


def _recipe_factory(factory, extra: str = ""):
    def build(work: Path, bases) -> Invocation:
        canary = work / "canary"
        recipe = work / "recipe.yaml"
        recipe.write_text(f"""name: evil
{extra}model:
  factory: {json.dumps(factory)}
  kwargs: {{command: "touch {canary}"}}
  input_shape: [1, 8, 8]
steps:
  - step: export
""")
        return Invocation(["run", recipe, "--out", work / "run"], out=work / "run", watch=[recipe], canary=canary)
    return build


def _source_factory(work: Path, bases) -> Invocation:
    canary = work / "canary"
    return Invocation(["source", "--out", work / "src", "--set", "factory=os:system",
                       "--set", f'kwargs={{"command": "touch {canary}"}}', "--set", "input_shape=[1,8,8]"],
                      out=work / "src", canary=canary)


def _distill_student(factory):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get("digits_trained"), work / "model")
        canary = work / "canary"
        return Invocation(["step", "distill", "--model", model, "--out", work / "out",
                           "--set", f"student.factory={factory}",
                           "--set", f'student.kwargs={{"command": "touch {canary}"}}',
                           "--set", f"data={DIGITS_DATA}", "--set", "epochs=1"],
                          out=work / "out", watch=[model], canary=canary)
    return build


def _evil_module(directory: Path, canary: Path, name: str = "modeling_evil") -> None:
    (directory / f"{name}.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n"
                                          "class EvilModel: pass\nclass EvilTokenizer: pass\n")


def _hf_auto_map(where: str):
    def build(work: Path, bases) -> Invocation:
        model = copy_model(bases.get("minilm_path"), work / "model")
        canary = work / "canary"
        _evil_module(model, canary)
        if where == "config":
            edit_json(model / "config.json", lambda c: c.update(auto_map={"AutoModel": "modeling_evil.EvilModel"}))
        else:
            edit_json(model / "tokenizer_config.json",
                      lambda c: c.update(auto_map={"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}))
        return Invocation(["step", "export", "--model", model, "--out", work / "out"], out=work / "out",
                          watch=[model], canary=canary, stderr_has="auto_map", timeout=300)
    return build


def _onnx_with_auto_map(work: Path, bases) -> Invocation:
    """An exported text model's tokenizer config with auto_map (the tokenizer travels with ONNX models)."""
    model = work / "model"
    model.mkdir()
    minilm = bases.get("minilm_path")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy(minilm / name, model / name)
    shutil.copy(bases.get("digits_onnx") / "model.onnx", model / "model.onnx")
    canary = work / "canary"
    _evil_module(model, canary)
    edit_json(model / "tokenizer_config.json",
              lambda c: c.update(auto_map={"AutoTokenizer": ["modeling_evil.EvilTokenizer", None]}))
    return Invocation(["step", "quantize", "--model", model, "--out", work / "out"], out=work / "out",
                      watch=[model], canary=canary, stderr_has="auto_map")


def _pickle_weights(safetensors_dir: bool):
    def build(work: Path, bases) -> Invocation:
        minilm = bases.get("minilm_path")
        model = work / "model"
        model.mkdir()
        for name in os.listdir(minilm):
            if not name.endswith((".safetensors", ".bin", ".onnx", ".pt")) and (minilm / name).is_file():
                shutil.copy(minilm / name, model / name)
        canary = work / "canary"
        (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(f"touch {canary}")))
        if safetensors_dir:
            (model / "model.safetensors").mkdir()  # transformers would fall back to the pickle beside it
        return Invocation(["step", "export", "--model", model, "--out", work / "out"], out=work / "out",
                          watch=[model], canary=canary, timeout=300)
    return build


def _kwargs_bomb(work: Path, bases) -> Invocation:
    """An allowed factory with kwargs that would allocate terabytes."""
    model = copy_model(bases.get("digits_trained"), work / "model")
    (model / "manifest.json").unlink()
    edit_json(model / "architecture.json", lambda a: a["kwargs"].update(channels=200_000, hidden=200_000))
    return Invocation(["step", "export", "--model", model, "--out", work / "out"], out=work / "out", watch=[model],
                      timeout=60)


def _allowed_but_missing(work: Path, bases) -> Invocation:
    model = copy_model(bases.get("digits_trained"), work / "model")
    (model / "manifest.json").unlink()
    edit_json(model / "architecture.json", lambda a: a.update(factory="no_such_pkg_slimops.models:Net"))
    return Invocation(["step", "export", "--model", model, "--out", work / "out",
                       "--allow-factory", "no_such_pkg_slimops"], out=work / "out", watch=[model])


def cases() -> list[Case]:
    canary_cmd = None  # the default kwargs write the canary
    return [
        Case("code/architecture-os-system", _torch_factory("os:system", canary_cmd)),
        Case("code/architecture-subprocess", _torch_factory("subprocess:getoutput", {"cmd": "true"})),
        Case("code/architecture-builtins-exec", _torch_factory("builtins:exec", {"source": "print(1)"})),
        Case("code/architecture-zoo-attribute-chain", _torch_factory("slimops.zoo.digits:torch.load", {"f": "x"})),
        Case("code/architecture-zoo-imported-name", _torch_factory("slimops.zoo.digits:nn", {})),
        Case("code/architecture-allowlist-prefix-trick", _torch_factory("slimops.zoo_evil:run", {})),
        Case("code/architecture-factory-not-a-string", _torch_factory(["os", "system"], {})),
        Case("code/architecture-factory-with-newline", _torch_factory("os:system\nslimops.zoo.digits:DigitsCNN", {})),
        Case("code/architecture-quantize-step", _torch_factory("os:system", None, step="validate")),
        Case("code/manifest-factory-os-system", _manifest_factory("os:system")),
        Case("code/manifest-factory-posix", _manifest_factory("posix:system")),
        Case("code/recipe-factory-os-system", _recipe_factory("os:system")),
        Case("code/recipe-allow-factories-malformed", _recipe_factory("os:system", "allow_factories: ['os; rm']\n")),
        Case("code/source-factory-os-system", _source_factory),
        Case("code/distill-student-os-system", _distill_student("os:system")),
        Case("code/distill-student-importlib", _distill_student("importlib:import_module")),
        Case("code/hf-config-auto-map", _hf_auto_map("config")),
        Case("code/hf-tokenizer-auto-map", _hf_auto_map("tokenizer")),
        Case("code/onnx-tokenizer-auto-map", _onnx_with_auto_map),
        Case("code/hf-pickle-weights-only", _pickle_weights(safetensors_dir=False)),
        Case("code/hf-safetensors-dir-beside-pickle", _pickle_weights(safetensors_dir=True)),
        Case("code/factory-kwargs-memory-bomb", _kwargs_bomb),
        Case("code/allowed-factory-not-installed", _allowed_but_missing),
    ]
