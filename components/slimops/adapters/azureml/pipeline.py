"""A recipe as an Azure ML pipeline job (azure-ai-ml dsl): source -> the compression chain -> validate -> publish
(the validated model as a model asset) and the recipe's promotion steps. The gate needs no control-flow node:
validate exits 3 on a failed gate, the node fails, and every node after it takes validate's output, so none of
them runs; the validate node's log says why. (azure-ai-ml 1.35 only accepts ``if_else`` nodes with its private
preview features switched on: a job holding one fails ``_validate()``, ``dump()`` and ``create_or_update``.)

Recipe errors (unknown step, no gate, a gate that checks nothing, no image) raise BadInput when the pipeline
is built. The SDKs are imported only inside these functions.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from slimops.adapters.azureml.components import PUBLISH, SOURCE, THREADS_INPUT, all_components
from slimops.errors import BadInput
from slimops.plan import Plan, StepCall, image_reference, plan_recipe


def load_components(image: str | None = None) -> dict:
    """The generated components as azure-ai-ml component objects, by step name."""
    import yaml
    from azure.ai.ml import load_component

    return {name: load_component(source=io.StringIO(yaml.safe_dump(spec, sort_keys=False)))
            for name, spec in all_components(image_reference(image)).items()}


def node_inputs(config: dict, component) -> dict:
    """A config as component inputs: scalars as themselves, everything else (and strings) as JSON text, which
    the command passes to ``--set key=...`` and the CLI reads back as exactly this value."""
    values = {}
    for key, value in config.items():
        if key not in component.inputs:
            raise BadInput(f"{component.name} has no input {key!r}; regenerate the components for this slimops")
        kind = component.inputs[key].type
        text = json.dumps(value, sort_keys=True)
        if "'" in text:  # the command quotes values with single quotes
            raise BadInput(f"{component.name} {key}: a single quote in {text} cannot be passed on the command line")
        values[key] = value if kind in ("integer", "number", "boolean") else text
    return values


def check_shared_registry(plan: Plan) -> None:
    """register/promote keep their registry beside OUT unless told otherwise, and every node is a fresh
    container: promote would not find what register wrote."""
    local = [c.id for c in plan.promotion if c.role == "registry" and not c.config.get("tracking_uri")]
    if local:
        raise BadInput(f"steps {', '.join(local)} keep their model registry inside the job (no tracking_uri), and "
                       "each Azure ML node is a fresh container; set tracking_uri in the recipe (the workspace's "
                       "MLflow tracking URI) or build with recipe_promotion=False (the publish node registers the "
                       "validated model as a model asset)")


def _node_name(call_id: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", call_id.lower())


def add_steps(plan: Plan, components: dict, model=None, *, recipe_dir: str | None = None,
              recipe_promotion: bool = True, model_name: str | None = None) -> dict:
    """Add the plan's nodes to the pipeline being defined (call inside a ``@dsl.pipeline`` function).

    model: an upstream output or pipeline input holding a model directory; None runs the recipe's source.
    model_name: publish the validated model as this model asset when the gate passes (None: no publish node).
    Returns the nodes by step id (plus "source" and "publish" when made). Every node after the gate takes the
    gate's output (directly or through another promotion step), so it runs only when the gate passed.
    """
    from azure.ai.ml import Output

    from slimops.adapters.sagemaker.jobs import needs_data_files

    readers = needs_data_files(plan.calls)
    if readers and not recipe_dir:
        raise BadInput(f"steps {', '.join(readers)} read data files; give recipe_dir (where the recipe's data "
                       "files are inside the image or on the compute)")
    if recipe_promotion:
        check_shared_registry(plan)
    nodes, models = {}, {}
    if model is None:
        if "path" in plan.model:
            raise BadInput("the recipe's model is a local path; pass model=Input(type='uri_folder', path=...) "
                           "(a data asset or datastore URI) instead")
        source = components[SOURCE](**node_inputs(plan.model, components[SOURCE]))
        source.name = SOURCE
        nodes[SOURCE], model = source, source.outputs.model
    models[SOURCE] = model
    gate = plan.gate
    for call in plan.calls:
        if call.after_gate and not recipe_promotion:
            continue
        node = _step_node(call, components, models, plan, recipe_dir)
        nodes[call.id], models[call.id] = node, node.outputs.model
        if call is gate and model_name:
            publish = components[PUBLISH](model=models[gate.id])
            publish.name = PUBLISH
            # A named custom_model output is registered as a model asset version when the node runs.
            publish.outputs.model = Output(type="custom_model", name=model_name)
            nodes[PUBLISH] = publish
    return nodes


def _step_node(call: StepCall, components: dict, models: dict, plan: Plan, recipe_dir: str | None):
    component = components[call.step]
    inputs = {"model": models[call.input], **node_inputs(call.resolved_config(recipe_dir or "."), component)}
    if call.baseline is not None:
        inputs["baseline"] = models[call.baseline]
    if plan.threads:
        inputs[THREADS_INPUT] = plan.threads
    if call.gated and call.retry:
        # No retry settings for command nodes in Azure ML: the gate retries an inconclusive verdict itself.
        inputs.update(retry_inconclusive=call.retry.retries, retry_backoff=call.retry.backoff_s,
                      retry_factor=call.retry.factor)
    if component.is_deterministic and not call.cacheable:
        component = _uncached(component)
    node = component(**inputs)
    node.name = _node_name(call.id)
    node.display_name = call.id
    return node


def _uncached(component):
    """A copy of the component that Azure ML never reuses: for a gate against the champion, where the same inputs
    can give another verdict once the champion moved. Submission registers it as an anonymous component, so the
    shared (deterministic) component of the same name and version is left as it is."""
    import yaml
    from azure.ai.ml import load_component

    spec = {**component._to_dict(), "is_deterministic": False}
    return load_component(source=io.StringIO(yaml.safe_dump(spec, sort_keys=False)))


def build_pipeline(recipe: str | Path, *, image: str | None = None, compute: str = "serverless", model=None,
                   recipe_dir: str | None = None, recipe_promotion: bool = True, model_name: str | None = None,
                   name: str | None = None):
    """A PipelineJob for the recipe. model: an ``Input(type="uri_folder", path=...)`` to start from (else the
    recipe's source). model_name: the model asset the publish node registers on a passing gate (default: the
    recipe name). compute: a compute cluster's name, or "serverless" (the default). Submit with
    ``MLClient(...).jobs.create_or_update(job)``, or ``job.dump("job.yaml")`` for ``az ml job create --file``."""
    plan = plan_recipe(recipe)
    components = load_components(image)
    from azure.ai.ml.dsl import pipeline as dsl_pipeline

    def body(**given):
        add_steps(plan, components, given.get("model"), recipe_dir=recipe_dir, recipe_promotion=recipe_promotion,
                  model_name=model_name or plan.name)

    describe = f"slimops recipe {plan.name}: compress, gate, publish only what passes"
    if model is None:
        @dsl_pipeline(name=name or f"slimops_{_node_name(plan.name)}", description=describe, default_compute=compute)
        def slimops_pipeline():
            body()

        return slimops_pipeline()

    @dsl_pipeline(name=name or f"slimops_{_node_name(plan.name)}", description=describe, default_compute=compute)
    def slimops_pipeline_from_model(model):
        body(model=model)

    return slimops_pipeline_from_model(model=model)
