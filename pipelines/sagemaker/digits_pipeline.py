"""The digits example as a SageMaker Pipeline: train -> export -> static INT8 -> validate against the trained
model -> register in the Model Registry if the gate passed, else fail with the gate's reasons.

    python pipelines/sagemaker/digits_pipeline.py            # rewrite digits-pipeline.definition.json (offline)
    python pipelines/sagemaker/digits_pipeline.py --upsert   # create/update it in your account (needs AWS)

The settings below are placeholders that keep the checked-in definition deterministic: set SLIMOPS_IMAGE to
your ECR image, and ROLE/BUCKET/REGION to yours, before upserting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[1] / "examples" / "digits-pipeline.yaml"
DEFINITION = HERE / "digits-pipeline.definition.json"

REGION = "us-east-1"
ROLE = "arn:aws:iam::111122223333:role/slimops-pipelines"
BUCKET = "slimops-artifacts-111122223333"
IMAGE = "111122223333.dkr.ecr.us-east-1.amazonaws.com/slimops:0.1.0"


def build(recipe: str | Path = RECIPE, image: str | None = IMAGE, **overrides):
    from slimops.adapters.sagemaker import build_pipeline

    # The recipe's register/promote steps use a registry local to the run; on SageMaker the ModelStep registers
    # the validated model in the Model Registry instead (see the README's SageMaker section).
    settings = dict(role=ROLE, bucket=BUCKET, region=REGION, image=image, name="slimops-digits-pipeline",
                    recipe_promotion=False)
    return build_pipeline(recipe, **{**settings, **overrides})


def definition(pipeline) -> str:
    """The definition as checked in: sorted keys, so a diff shows what changed. Checked against botocore's
    SageMaker service model first: a definition SageMaker would reject is never written."""
    from slimops.adapters.sagemaker import check_definition

    spec = check_definition(pipeline.definition(), pipeline_name=pipeline.name, role_arn=ROLE)
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    pipeline = build()
    if "--upsert" in sys.argv:
        definition(pipeline)  # refuses what the service model says SageMaker would reject
        print(pipeline.upsert(role_arn=ROLE))
    else:
        DEFINITION.write_text(definition(pipeline))
        print(f"wrote {DEFINITION}")
