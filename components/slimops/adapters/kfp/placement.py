"""A recipe's ``placement:`` (accelerator, node selector, tolerations, CPU and memory) on a KFP task.

The accelerator, CPU and memory go through KFP's own task settings (``set_accelerator_type``,
``set_cpu_request``, ``set_memory_limit``, ...); the node selector and tolerations are Kubernetes pod settings,
set through kfp-kubernetes.
"""

from __future__ import annotations

from slimops.recipe import Placement, Recipe

# Placement field -> the PipelineTask method that applies it.
RESOURCES = (("cpu_request", "set_cpu_request"), ("cpu_limit", "set_cpu_limit"),
             ("memory_request", "set_memory_request"), ("memory_limit", "set_memory_limit"))


def placements(recipe: Recipe) -> dict[str, Placement | None]:
    """Each step id's placement: the step's own, else the recipe's (a step's placement replaces it whole)."""
    return {step.id: step.placement or recipe.placement for step in recipe.steps}


def apply_placement(task, placement: Placement | None):
    if placement is None:
        return task
    if placement.accelerator:
        task.set_accelerator_type(placement.accelerator)
        if placement.accelerator_limit is not None:
            task.set_accelerator_limit(placement.accelerator_limit)
    for field, setting in RESOURCES:
        if getattr(placement, field) is not None:
            getattr(task, setting)(getattr(placement, field))
    if placement.node_selector or placement.tolerations:
        from kfp import kubernetes

        for key, value in sorted(placement.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in placement.tolerations:
            kubernetes.add_toleration(task, **toleration.model_dump(exclude_none=True))
    return task


def helper_placement(recipe: Recipe) -> Placement | None:
    """The recipe's placement for the tasks that are not recipe steps (source, gate-report, gate-rejected): the
    same pool, CPU and memory, but no accelerator (they only copy and describe files)."""
    if recipe.placement is None:
        return None
    return recipe.placement.model_copy(update={"accelerator": None, "accelerator_limit": None})
