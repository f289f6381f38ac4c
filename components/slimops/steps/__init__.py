"""The step registry. A step is a small class with a typed config, found by name (as Olive's passes are)."""

from __future__ import annotations

import copy
import importlib
import typing
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from slimops.errors import BadInput


class StepConfig(BaseModel):
    """Base of every step config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


Format = Literal["hf", "torch", "onnx", "onnx-packed", "openvino"]
FORMATS: tuple[str, ...] = ("hf", "torch", "onnx", "onnx-packed", "openvino")
Role = Literal["transform", "gate", "registry", "deploy"]


class Step:
    """A step declares its contract; the plan, the adapters and the CLI derive everything else from it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    accepts: ClassVar[tuple[str, ...]] = FORMATS  # model formats it takes
    produces: ClassVar[str | None] = None  # the format it writes; None: the input's (see output_format)
    # Extra model inputs beyond --model: required (validate compares against a baseline) and optional (distill
    # with student.from_input learns from its baseline as the teacher).
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    # transform: a model in, a model out; gate: measures and decides; registry / deploy: acts on a gated model.
    role: ClassVar[str] = "transform"
    side_effects: ClassVar[bool] = False  # touches something outside OUT: never cached, never deterministic
    extra: ClassVar[str | None] = None  # the pip extra it needs (slimops[...]), if any

    @classmethod
    def required_inputs(cls, config: StepConfig) -> tuple[str, ...]:
        """The extra model inputs this config needs (distill needs its teacher only with student.from_input)."""
        return cls.extra_inputs

    @classmethod
    def requires_gate(cls) -> bool:
        """Registry and deploy steps take only the output of a passing gate; checked before anything else."""
        return cls.role in ("registry", "deploy")

    @classmethod
    def output_format(cls, config: StepConfig, input_format: str | None) -> str | None:
        """The format it writes for this config and input (None: not known before it runs)."""
        return cls.produces or input_format

    @classmethod
    def writes(cls) -> str:
        """The output format, in words (``slimops steps``)."""
        return cls.produces or "the input's format"

    @classmethod
    def data_fields(cls) -> tuple[str, ...]:
        """Dotted paths of the config's dataset fields (``data``, ``calibration``, ``accuracy.data``)."""
        return _data_fields(cls.Config)

    def resolve(self, config: StepConfig) -> StepConfig:
        """Replace 'auto' values by what will run; the manifest and the cache key record the result."""
        return config

    def run(self, ctx: "StepContext", config: StepConfig) -> "StepResult":  # pragma: no cover - interface
        raise NotImplementedError


def _data_fields(model: type[BaseModel], prefix: str = "") -> tuple[str, ...]:
    from slimops.data import DataSpec

    found: list[str] = []
    for name, field in model.model_fields.items():
        for kind in _model_types(field.annotation):
            if kind is DataSpec:
                found.append(prefix + name)
            else:
                found += _data_fields(kind, f"{prefix}{name}.")
    return tuple(dict.fromkeys(found))


def _model_types(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (``DataSpec | None`` -> [DataSpec])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [kind for arg in typing.get_args(annotation) for kind in _model_types(arg)]


def map_data(step: str, config: dict, change) -> dict:
    """``config`` (a plain dict, as in a recipe) with ``change(value, path)`` applied to each dataset field the step
    declares. The one walker over data fields: recipes inline named datasets with it, plans place paths with it."""
    config = copy.deepcopy(config)
    for path in get_step(step).data_fields():
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) is not None:
            node[leaf] = change(node[leaf], path)
    return config


# Modules are imported on first use so `slimops steps` and cached runs stay fast.
_MODULES = {
    "export": "slimops.steps.export",
    "compile": "slimops.steps.compile",
    "quantize": "slimops.steps.quantize",
    "validate": "slimops.steps.validate",
    "train": "slimops.steps.train",
    "prune": "slimops.steps.prune",
    "factorize": "slimops.steps.factorize",
    "pack": "slimops.steps.pack",
    "distill": "slimops.steps.distill",
    "deploy": "slimops.steps.deploy",
    "register": "slimops.steps.register",
    "promote": "slimops.steps.promote",
}


def step_names() -> list[str]:
    return list(_MODULES)


def get_step(name: str) -> type[Step]:
    if name not in _MODULES:
        raise BadInput(f"unknown step {name!r}; known steps: {', '.join(_MODULES)} (see `slimops steps`)")
    module = importlib.import_module(_MODULES[name])
    return module.STEP


from slimops.steps.context import StepContext, StepResult  # noqa: E402  (re-export)

__all__ = ["Step", "StepConfig", "StepContext", "StepResult", "get_step", "step_names"]
