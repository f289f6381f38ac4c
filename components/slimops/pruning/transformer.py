"""Remove attention heads, FFN neurons or whole layers of a BERT-family encoder, in a form its config describes.

- heads: transformers' own ``prune_heads``; ``config.json`` gets ``pruned_heads`` ({layer: [original head
  ids]}), which ``from_pretrained`` applies before loading, so any layer may keep its own number of heads.
- ffn: one ``intermediate_size`` for the whole model (a BERT config cannot give layers different widths, and
  optimum's exporter builds the model from that config): every layer keeps the same number of neurons, each
  layer its own most important ones.
- layers: ``num_hidden_layers`` shrinks and the kept layers are renumbered; ``pruned_heads`` follows them.
"""

from __future__ import annotations

import torch
from torch import nn

from slimops.errors import BadInput
from slimops.pruning import scores as S


def prune_heads(model, amount: float, scope: str, importance: str, p: int, skip: frozenset = frozenset()) -> dict:
    """Remove ``amount`` of the heads (per layer or ranked globally); layers in ``skip`` keep all theirs."""
    layers = S.encoder_layers(model)
    per_layer = S.head_scores(layers, importance, p)
    counts = [len(s) for s in per_layer]
    if scope == "layer":
        remove = [0 if i in skip else round(amount * n) for i, n in enumerate(counts)]
        for index, (n, r) in enumerate(zip(counts, remove)):
            if r >= n:
                raise BadInput(f"amount {amount} would remove all {n} attention heads of layer {index}; "
                               "lower 'amount' (a layer needs at least one head; drop whole layers with mode: layers)")
        chosen = {i: sorted(range(n), key=lambda h, s=per_layer[i]: s[h])[:r] for i, (n, r) in enumerate(zip(counts, remove))}
    else:
        # One ranking over all heads; scores are normalised per layer (each layer's mean = 1) so layers
        # with larger weights do not keep all their heads by scale alone.
        ranked = sorted(((s / (sum(layer) / len(layer) or 1.0), i, h)
                         for i, layer in enumerate(per_layer) if i not in skip for h, s in enumerate(layer)))
        total = round(amount * len(ranked))
        chosen = {i: [] for i in range(len(counts))}
        for _, i, h in ranked:
            if total == 0:
                break
            if len(chosen[i]) + 1 < counts[i]:  # never the last head of a layer
                chosen[i].append(h)
                total -= 1
    return apply_head_pruning(model, {i: heads for i, heads in chosen.items() if heads})


def apply_head_pruning(model, current: dict[int, list[int]]) -> dict:
    """Prune heads given by their current index; the config records original head ids, as transformers does."""
    layers = S.encoder_layers(model)
    original = {}
    for i, heads in current.items():
        layer_pruned = set(model.config.pruned_heads.get(i, []))
        alive = [h for h in range(model.config.num_attention_heads) if h not in layer_pruned]
        original[i] = sorted(alive[h] for h in heads)
    if original:
        model.prune_heads(original)
    return {"heads_removed": {str(i): h for i, h in original.items()},
            "heads_per_layer": [layer.attention.self.num_attention_heads for layer in layers]}


def prune_ffn(model, amount: float, importance: str, p: int) -> dict:
    layers = S.encoder_layers(model)
    width = layers[0].intermediate.dense.out_features
    keep = round((1 - amount) * width)
    if keep < 1:
        raise BadInput(f"amount {amount} would remove all {width} FFN neurons of every layer; lower 'amount'")
    for layer, score in zip(layers, S.neuron_scores(layers, importance, p)):
        kept = torch.sort(torch.topk(score, keep).indices).values
        layer.intermediate.dense = _take(layer.intermediate.dense, kept, dim=0)
        layer.output.dense = _take(layer.output.dense, kept, dim=1)
    model.config.intermediate_size = keep
    return {"intermediate_size_before": width, "intermediate_size_after": keep}


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear holding rows (dim 0: output neurons) or columns (dim 1: inputs) ``index`` of ``linear``."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[index] if dim == 0 else linear.bias.detach())
    return new


def check_layer_lists(keep: list[int] | None, drop: list[int] | None, total: int) -> None:
    for key, values in (("keep_layers", keep), ("drop_layers", drop)):
        for index in values or []:
            if not 0 <= index < total:
                raise BadInput(f"{key}: layer index {index} out of range for a {total}-layer encoder "
                               f"(valid: 0..{total - 1})")
        if values and len(set(values)) != len(values):
            raise BadInput(f"{key}: a layer index is listed twice; list each layer once")
    if keep is not None and not keep:
        raise BadInput("keep_layers is empty; an encoder needs at least one layer")
    if drop is not None and len(set(drop)) >= total:
        raise BadInput(f"drop_layers lists all {total} layers; an encoder needs at least one layer")


def choose_layers(model, keep: list[int] | None, drop: list[int] | None, amount: float | None) -> tuple[list[int], list | None]:
    """The layer indices to keep, in order, and the Taylor score per layer when they were ranked."""
    total = len(S.encoder_layers(model))
    check_layer_lists(keep, drop, total)
    if keep is not None:
        return sorted(keep), None
    if drop is not None:
        return [i for i in range(total) if i not in set(drop)], None
    removed = round(amount * total)
    if removed >= total:
        raise BadInput(f"amount {amount} would drop all {total} layers; lower 'amount'")
    scores = S.layer_scores(S.encoder_layers(model))
    dropped = set(sorted(range(total), key=lambda i: scores[i])[:removed])
    return [i for i in range(total) if i not in dropped], scores


def keep_layers(model, kept: list[int]) -> dict:
    layers = S.encoder_layers(model)
    before = len(layers)
    model.base_model.encoder.layer = nn.ModuleList([layers[i] for i in kept])
    for new_index, layer in enumerate(model.base_model.encoder.layer):
        attention = layer.attention.self
        if hasattr(attention, "layer_idx"):  # the key/value cache slot, unused by an encoder but kept in step
            attention.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    old_heads = model.config.pruned_heads
    model.config.pruned_heads = {new: old_heads[old] for new, old in enumerate(kept) if old_heads.get(old)}
    return {"layers_before": before, "layers_kept": kept}
