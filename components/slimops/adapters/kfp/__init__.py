"""Kubeflow Pipelines (kfp 2.x) adapter: slimops steps as KFP components, and a recipe as a KFP pipeline.

    from slimops.adapters.kfp import build_pipeline, components

``kfp`` is imported only when one of those is used (the ``rejection`` and ``runtime`` modules run inside
tasks and need no kfp). Install with ``pip install slimops[kfp]``.
"""

__all__ = ["build_pipeline", "components"]


def __getattr__(name: str):
    if name == "build_pipeline":
        from slimops.adapters.kfp.builder import build_pipeline

        return build_pipeline
    if name == "components":
        import importlib

        return importlib.import_module(f"{__name__}.components")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
