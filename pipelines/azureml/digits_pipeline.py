"""The digits example as an Azure ML pipeline job: train -> export -> static INT8 -> validate against the trained
model (a failed gate fails this node) -> publish the validated model as the model asset "digits-cnn".

    python pipelines/azureml/digits_pipeline.py             # regenerate components/*.yaml (offline)
    python pipelines/azureml/digits_pipeline.py --submit    # submit to your workspace (needs Azure)

IMAGE is a placeholder that keeps the checked-in component YAML deterministic: set SLIMOPS_IMAGE (or edit it)
to an image your workspace can pull before registering components or submitting.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[1] / "examples" / "digits-pipeline.yaml"
COMPONENTS = HERE / "components"
IMAGE = "slimopsregistry.azurecr.io/slimops:0.1.0"
COMPUTE = "cpu-cluster"


def build(recipe: str | Path = RECIPE, image: str | None = IMAGE, **overrides):
    from slimops.adapters.azureml import build_pipeline

    # The recipe's register/promote use a registry local to the run; here the publish node registers the
    # validated model as a workspace model asset instead (see the README's Azure ML section).
    settings = dict(image=image, compute=COMPUTE, recipe_promotion=False, model_name="digits-cnn")
    return build_pipeline(recipe, **{**settings, **overrides})


def write_components(directory: Path = COMPONENTS, image: str = IMAGE) -> list[Path]:
    from slimops.adapters.azureml import write_components

    return write_components(directory, image)


if __name__ == "__main__":
    if "--submit" in sys.argv:
        from azure.ai.ml import MLClient
        from azure.identity import DefaultAzureCredential

        client = MLClient(DefaultAzureCredential(), os.environ["AZURE_SUBSCRIPTION_ID"],
                          os.environ["AZURE_RESOURCE_GROUP"], os.environ["AZUREML_WORKSPACE"])
        print(client.jobs.create_or_update(build(image=os.environ.get("SLIMOPS_IMAGE", IMAGE)),
                                           experiment_name="slimops").studio_url)
    else:
        for path in write_components():
            print(f"wrote {path}")
