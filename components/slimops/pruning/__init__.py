"""Pruning: zero single weights (unstructured), or remove whole channels, attention heads, FFN neurons or layers
(structured), so the model does less work.

- ``unstructured``: magnitude pruning of a safetensors weights file (same shapes; pays off in the pack step).
- ``structured``: a structured prune of a model directory, end to end: load, score, cut, write, check, measure.
- ``reshape``: rebuild a factory-built PyTorch module to the (narrower) tensor shapes of a weights file;
  the handler uses it, so a pruned module directory loads without any pickle.
- ``channels``: convolution / linear channel pruning of PyTorch modules through torch-pruning's dependency graph.
- ``transformer``: attention heads, FFN neurons and whole layers of Hugging Face BERT-family encoders.
- ``scores``: magnitude and first-order Taylor importance for the transformer units.
- ``measure``: parameters, MACs and measured latency before and after.
"""

from dataclasses import dataclass


@dataclass
class Pruned:
    """What a prune measured (manifest metrics) and did (manifest details)."""

    metrics: dict
    details: dict
