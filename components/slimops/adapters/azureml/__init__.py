"""Azure ML (azure-ai-ml + mldesigner): command components generated from the step registry, and a recipe as a
pipeline whose gate is an if_else node. The SDKs are imported only when components are loaded or a pipeline is
built; generating the component YAML needs neither."""

from slimops.adapters.azureml.components import all_components, step_component, write_components
from slimops.adapters.azureml.pipeline import add_steps, build_pipeline, load_components, node_inputs

__all__ = ["add_steps", "all_components", "build_pipeline", "load_components", "node_inputs", "step_component",
           "write_components"]
