"""A recipe's ``placement:`` (accelerator, node selector, tolerations) on a KFP task.

The accelerator goes through KFP's own task settings (``set_accelerator_type`` / ``set_accelerator_limit``); the
node selector and tolerations are Kubernetes pod settings, set through kfp-kubernetes.
"""

from __future__ import annotations

from slimops.recipe import Placement, Recipe


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
    if placement.node_selector or placement.tolerations:
        from kfp import kubernetes

        for key, value in sorted(placement.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in placement.tolerations:
            kubernetes.add_toleration(task, **toleration.model_dump(exclude_none=True))
    return task
