"""The step registry. A step is a small class with a typed config, found by name (as Olive's passes are)."""

from __future__ import annotations

import importlib
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from slimops.errors import BadInput


class StepConfig(BaseModel):
    """Base of every step config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Step:
    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[StepConfig]]
    # Extra model inputs beyond --model (validate compares against a baseline).
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    # Takes only the output of a passing gate (register, promote, deploy): checked before anything else.
    requires_gate: ClassVar[bool] = False

    def resolve(self, config: StepConfig) -> StepConfig:
        """Replace 'auto' values by what will run; the manifest and the cache key record the result."""
        return config

    def run(self, ctx: "StepContext", config: StepConfig) -> "StepResult":  # pragma: no cover - interface
        raise NotImplementedError


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
