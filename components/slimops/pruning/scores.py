"""Importance of attention heads, FFN neurons and whole layers of a BERT-family encoder.

``magnitude``: the Lp norm of the weights a unit owns (a head: its rows of Q, K, V and its columns of the
attention output projection; a neuron: its row of the FFN input and its column of the FFN output).
``taylor``: first-order Taylor, sum over those weights of |w * dL/dw| (Molchanov et al. 2019), with dL/dw
accumulated over calibration data. For the objective L, see ``objective``.
"""

from __future__ import annotations

import numpy as np
import torch

from slimops.errors import BadInput


def encoder_layers(model) -> list:
    """``encoder.layer`` of a BERT-family model (BERT, MiniLM, RoBERTa, ELECTRA), or BadInput."""
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(l, "attention") and hasattr(getattr(l.attention, "self", None), "query")
                                 and hasattr(l, "intermediate") for l in layers):
        raise BadInput(f"{type(model).__name__} is not a BERT-family encoder (encoder.layer.N with attention.self "
                       "and intermediate); heads/ffn/layers pruning supports BERT, MiniLM, RoBERTa, ELECTRA")
    return list(layers)


def head_slices(layer) -> list[slice]:
    attention = layer.attention.self
    size = attention.attention_head_size
    return [slice(h * size, (h + 1) * size) for h in range(attention.num_attention_heads)]


def _unit_score(weight_like: list[tuple[torch.Tensor, int, slice]], p: int) -> float:
    """Sum of |x|^p over the slices (dim 0 = rows, 1 = columns) of the given tensors."""
    total = 0.0
    for tensor, dim, part in weight_like:
        chunk = tensor[part] if dim == 0 else tensor[:, part]
        total += float(chunk.abs().pow(p).sum())
    return total


def _values(module_weight, importance: str):
    """The tensor whose entries are summed: |w|^p for magnitude, |w * grad| for taylor."""
    w = module_weight.detach()
    if importance == "taylor":
        if module_weight.grad is None:
            raise RuntimeError("taylor importance needs gradients; call taylor_gradients first")
        return (w * module_weight.grad).abs()
    return w


def head_scores(layers: list, importance: str, p: int) -> list[list[float]]:
    """Per layer, per current head: its importance."""
    power = 1 if importance == "taylor" else p
    scores = []
    for layer in layers:
        attention, out = layer.attention.self, layer.attention.output.dense
        tensors = [(_values(m.weight, importance), dim) for m, dim in
                   ((attention.query, 0), (attention.key, 0), (attention.value, 0), (out, 1))]
        scores.append([_unit_score([(t, dim, part) for t, dim in tensors], power) for part in head_slices(layer)])
    return scores


def neuron_scores(layers: list, importance: str, p: int) -> list[torch.Tensor]:
    """Per layer, a score per FFN neuron."""
    power = 1 if importance == "taylor" else p
    scores = []
    for layer in layers:
        w_in = _values(layer.intermediate.dense.weight, importance)
        w_out = _values(layer.output.dense.weight, importance)
        scores.append(w_in.abs().pow(power).sum(1) + w_out.abs().pow(power).sum(0))
    return scores


def layer_scores(layers: list) -> list[float]:
    """Per layer, the summed Taylor score of every weight it holds (needs gradients)."""
    return [float(sum((p.detach() * p.grad).abs().sum() for p in layer.parameters() if p.grad is not None))
            for layer in layers]


def taylor_gradients(model, tokenizer, dataset, info, batch_size: int = 16) -> str:
    """Accumulate dL/dw on calibration text; returns the objective used (for the manifest).

    Objective, by what the data holds:
    - STS pairs with scores: MSE between cos(embedding a, embedding b) and score / 5, the regression that
      sentence encoders are fine-tuned with; a unit matters if removing it moves these similarities.
    - labelled text for a classifier: cross-entropy on the labels.
    - plain text: the mean squared norm of the pooled (not yet normalised) embeddings. There is no target,
      and a loss that compares the model with itself has zero gradient; the output norm is the standard
      label-free proxy (first-order change of the representation each unit causes), not a task loss.
    """
    model.zero_grad(set_to_none=True)
    model.eval()  # no dropout: the gradients are of the deployed function
    texts = list(dataset.inputs)
    if dataset.kind == "sts" and info.task == "sentence-embedding":
        objective = "sts cosine regression (MSE of cos(a, b) against score / 5)"
        pairs, scores = dataset.pairs, torch.tensor(np.asarray(dataset.scores) / 5.0, dtype=torch.float32)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            a = _pooled(model, tokenizer, [texts[i] for i, _ in chunk], info)
            b = _pooled(model, tokenizer, [texts[j] for _, j in chunk], info)
            cos = torch.nn.functional.cosine_similarity(a, b)
            ((cos - scores[start:start + len(chunk)]) ** 2).sum().backward()
        return objective
    if dataset.kind == "classification" and info.task == "text-classification":
        labels = torch.as_tensor(dataset.labels)
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                max_length=info.max_length, return_tensors="pt")
            logits = model(**encoded).logits
            torch.nn.functional.cross_entropy(logits, labels[start:start + batch_size], reduction="sum").backward()
        return "cross-entropy on labels"
    for start in range(0, len(texts), batch_size):
        if info.task == "text-classification":
            encoded = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                max_length=info.max_length, return_tensors="pt")
            model(**encoded).logits.pow(2).sum().backward()
        else:
            _pooled(model, tokenizer, texts[start:start + batch_size], info).pow(2).sum().backward()
    return "squared norm of the output (label-free proxy)"


def _pooled(model, tokenizer, texts: list[str], info) -> torch.Tensor:
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=info.max_length, return_tensors="pt")
    hidden = model(**encoded).last_hidden_state
    if info.pooling == "cls":
        return hidden[:, 0]
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
