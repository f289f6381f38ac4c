"""Structured pruning: remove whole channels, attention heads, FFN neurons or layers, so the model does less work.

- ``reshape``: rebuild a factory-built PyTorch module to the (narrower) tensor shapes of a weights file;
  the handler uses it, so a pruned module directory loads without any pickle.
- ``channels``: convolution / linear channel pruning of PyTorch modules through torch-pruning's dependency graph.
- ``transformer``: attention heads, FFN neurons and whole layers of Hugging Face BERT-family encoders.
- ``scores``: magnitude and first-order Taylor importance for the transformer units.
- ``measure``: parameters, MACs and measured latency before and after.
"""
