"""Azure ML (azure-ai-ml): command components generated from the step registry, and a recipe as a pipeline job
whose gate node fails on a failed gate, so nothing after it runs. The SDK is imported only when components are
loaded or a pipeline is built; generating the component YAML needs none."""

from slimops.adapters.azureml.components import all_components, step_component, write_components
from slimops.adapters.azureml.pipeline import add_steps, build_pipeline, load_components, node_inputs

__all__ = ["add_steps", "all_components", "build_pipeline", "load_components", "node_inputs", "step_component",
           "write_components"]
