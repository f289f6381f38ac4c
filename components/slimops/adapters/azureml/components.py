"""Azure ML command components generated from the step registry (no SDK needed to generate them).

One component per step: environment = the slimops image, command = ``slimops step NAME --model ... --out ...``
with ``${{inputs.x}}`` / ``${{outputs.y}}`` bindings, one typed input per top-level config option (optional
ones inside ``$[[...]]``, so the step's own default applies when a pipeline leaves them out). Structured
options (data, gate, lists) are string inputs holding JSON; the command passes every option as
``--set 'key=<value>'``, which the CLI reads as YAML, so a pipeline that passes StepCall's JSON text gets
exactly the configs ``slimops run`` uses.

The validate component is the gate: a failed gate exits 3, so the node fails and nothing that takes its output
(publish, register, promote, deploy) ever runs. No control-flow node is needed: azure-ai-ml 1.35 treats
``if_else`` as a private-preview node type, and a pipeline holding one fails the SDK's own validation, dump and
submission. An inconclusive gate is no verdict: Azure ML command nodes have no retry settings, so the component
retries it in its own process (optional inputs ``retry_inconclusive``, ``retry_backoff``, ``retry_factor`` ->
``slimops step --retry-inconclusive ...``); if it stays inconclusive the node fails (exit 4). Model outputs use
``mode: upload``: the CLI writes its output atomically (temp sibling, then rename), which a read-write mounted
output folder does not allow.

``is_deterministic`` (Azure ML reuses a deterministic node's earlier outputs) is false for every step with side
effects (register, promote, deploy, and publish, which registers a model asset); transforms and the gate are
deterministic. A gate against the registry's champion is not (the champion changes between runs): the pipeline
builder gives that one node an uncached copy of the component.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

import slimops
from slimops.errors import BadInput
from slimops.plan import image_reference

SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"
THREADS_INPUT = "num_threads"  # not "threads": pack has a config option of that name
SOURCE = "source"
PUBLISH = "publish"
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string"}
# A gate's in-process retry of an inconclusive verdict: input -> (type, CLI option, description).
RETRY_INPUTS = {
    "retry_inconclusive": ("integer", "--retry-inconclusive", "reruns of an inconclusive gate (default 0)"),
    "retry_backoff": ("number", "--retry-backoff", "seconds before the first rerun (default 60)"),
    "retry_factor": ("number", "--retry-factor", "each later wait is this many times the one before (default 2)"),
}


def component_name(step: str) -> str:
    return f"slimops_{step}"


def input_type(annotation) -> str:
    """The component input type for a config option: scalars keep their type, everything else is JSON text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return input_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        kinds = {type(a) for a in typing.get_args(annotation)}
        return _SCALARS[kinds.pop()] if len(kinds) == 1 and next(iter(kinds), None) in (int, str) else "string"
    return _SCALARS.get(annotation, "string")


def _plain_string(annotation) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _plain_string(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return annotation is str


def _options(config_class) -> dict[str, dict]:
    inputs = {}
    for name, field in sorted(config_class.model_fields.items()):
        kind = input_type(field.annotation)
        json_text = kind == "string" and not _plain_string(field.annotation)
        spec = {"type": kind, "description": (field.description or name) + (" (JSON)" if json_text else "")}
        if not field.is_required():
            spec["optional"] = True
        inputs[name] = spec
    return inputs


def _set_args(options: dict[str, dict]) -> list[str]:
    parts = []
    for name, spec in options.items():
        arg = f"--set '{name}=${{{{inputs.{name}}}}}'"
        parts.append(f"$[[{arg}]]" if spec.get("optional") else arg)
    return parts


def _component(step: str, summary: str, image: str, inputs: dict, outputs: dict, command: list[str],
               deterministic: bool = True) -> dict:
    return {
        "$schema": SCHEMA,
        "type": "command",
        "name": component_name(step),
        "version": slimops.__version__,
        "display_name": f"slimops {step}",
        "description": summary,
        "tags": {"slimops": slimops.__version__},
        # Azure ML reuses a deterministic component's earlier output: never for one with side effects.
        "is_deterministic": deterministic,
        "inputs": inputs,
        "outputs": outputs,
        "environment": {"image": image},
        "command": " ".join(command),
    }


def step_component(step: str, image: str | None = None) -> dict:
    """The command component spec (a dict, as in the YAML file) for one registered step."""
    from slimops.steps import get_step

    definition = get_step(step)
    image = image_reference(image)
    options = _options(definition.Config)
    inputs = {"model": {"type": "uri_folder", "description": "input model directory"}}
    command = ["slimops", "step", step, "--model", "${{inputs.model}}", "--out", "${{outputs.model}}"]
    for extra in definition.extra_inputs:
        inputs[extra] = {"type": "uri_folder", "description": f"{extra} model directory"}
        command += [f"--{extra}", f"${{{{inputs.{extra}}}}}"]
    clash = set(options) & {*inputs, THREADS_INPUT, *RETRY_INPUTS}
    if clash:
        raise BadInput(f"step {step}: config options {sorted(clash)} clash with the component's own inputs")
    inputs.update(options)
    command += _set_args(options)
    inputs[THREADS_INPUT] = {"type": "integer", "optional": True, "description": "CPU threads (default: all)"}
    command.append(f"$[[--threads ${{{{inputs.{THREADS_INPUT}}}}}]]")
    outputs = {"model": {"type": "uri_folder", "mode": "upload", "description": "output model directory"}}
    if definition.role == "gate":
        # No --on-gate-fail continue: a failed gate fails the node (exit 3), which stops everything after it.
        for name, (kind, option, description) in RETRY_INPUTS.items():
            inputs[name] = {"type": kind, "optional": True, "description": description}
            command.append(f"$[[{option} ${{{{inputs.{name}}}}}]]")
    return _component(step, definition.summary, image, inputs, outputs, command,
                      deterministic=not definition.side_effects)


def source_component(image: str | None = None) -> dict:
    """``slimops source``: a recipe's model section (package or seeded factory) as a model directory."""
    from slimops.recipe import ModelSource

    options = {name: spec for name, spec in _options(ModelSource).items() if name != "path"}
    for spec in options.values():
        spec["optional"] = True  # ModelSource itself checks that exactly one of package/factory is given
    command = ["slimops", "source", "--out", "${{outputs.model}}", *_set_args(options)]
    return _component(SOURCE, "A recipe's model section (package or seeded factory) as a model directory",
                      image_reference(image), options,
                      {"model": {"type": "uri_folder", "mode": "upload", "description": "model directory"}}, command)


def publish_component(image: str | None = None) -> dict:
    """Copies a validated model directory to a ``custom_model`` output: naming that output in a pipeline
    registers the directory as a model asset version, which the pipeline does only on a passing gate."""
    command = ["cp", "-a", "${{inputs.model}}/.", "${{outputs.model}}/"]
    return _component(PUBLISH, "Publish a validated model directory as a model asset (name the output)",
                      image_reference(image), {"model": {"type": "uri_folder", "description": "validated model"}},
                      {"model": {"type": "custom_model", "description": "the model asset"}}, command,
                      deterministic=False)  # registers a model asset: a side effect


def all_components(image: str | None = None) -> dict[str, dict]:
    """Every component: source, one per registered step, publish."""
    from slimops.steps import step_names

    image = image_reference(image)
    return {SOURCE: source_component(image), **{s: step_component(s, image) for s in step_names()},
            PUBLISH: publish_component(image)}


def write_components(directory: str | Path, image: str | None = None) -> list[Path]:
    """Write ``slimops_<step>.yaml`` for every component (what ``az ml component create --file`` takes)."""
    import yaml

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in all_components(image).values():
        path = directory / f"{spec['name']}.yaml"
        text = yaml.safe_dump(spec, sort_keys=False, width=1000)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written
