"""The example recipe (examples/digits-pipeline.yaml) as a Kubeflow pipeline, and its compiled specs.

    python pipelines/kfp/digits_pipeline.py                    # -> pipelines/kfp/digits-pipeline.yaml
    python pipelines/kfp/digits_pipeline.py --kind container   # -> pipelines/kfp/digits-pipeline.container.yaml

The image comes from one setting: --image, else $SLIMOPS_IMAGE, else components/slimops/image.json (written by
infra/container/build.sh, by digest). Inside the image the examples live at /opt/slimops/examples, so the
recipe's relative data paths resolve there. Upload the YAML in the KFP UI, or
``kfp.Client().create_run_from_pipeline_package(path)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[1] / "examples" / "digits-pipeline.yaml"
IMAGE_EXAMPLES = "/opt/slimops/examples"  # the Containerfile's SLIMOPS_EXAMPLES


def spec_path(kind: str) -> Path:
    return HERE / ("digits-pipeline.yaml" if kind == "python" else f"digits-pipeline.{kind}.yaml")


def pipeline(image: str | None = None, kind: str = "python"):
    from slimops.adapters.kfp import build_pipeline

    return build_pipeline(RECIPE, image=image, kind=kind, recipe_dir=IMAGE_EXAMPLES)


def compile_spec(out: Path, image: str | None = None, kind: str = "python") -> Path:
    from kfp import compiler

    compiler.Compiler().compile(pipeline(image, kind), str(out))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("python", "container"), default="python")
    parser.add_argument("--image", help="component image (default: $SLIMOPS_IMAGE or components/slimops/image.json)")
    parser.add_argument("--out", type=Path, help="where to write the compiled YAML")
    args = parser.parse_args()
    print(compile_spec(args.out or spec_path(args.kind), args.image, args.kind))
