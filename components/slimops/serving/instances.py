"""The platforms' JSON body, ``{"instances": [...]}`` in and ``{"predictions": [...]}`` out, as a view of the
Open Inference Protocol request and response: an instances body becomes an OIP request, goes through the same
validation and the same model run, and the OIP outputs are cut back into one prediction per instance. So a
platform route and ``/v2/models/{name}/infer`` give the same numbers for the same inputs.

Instances, one per row of the batch:
- a text model: a string, or ``{"text": "..."}`` (or its token tensors by name, as below);
- a model with one input: that row's value (a number or a nested list of the input's shape without the batch
  dimension), or ``{"<input name>": value}``;
- a model with several inputs: ``{"<input name>": value, ...}`` with every input.

Predictions: one per instance: the row of the output when the model gives one output (a sentence encoder
gives ``embedding``), else ``{"<output name>": row, ...}``.
"""

from __future__ import annotations

import numpy as np

from slimops.serving.model import TEXT_INPUT, ServedModel
from slimops.serving.oip import RequestError, quote

ALLOWED_KEYS = {"instances", "parameters"}


def is_oip(body) -> bool:
    return isinstance(body, dict) and "inputs" in body


def to_oip_request(body, model: ServedModel) -> dict:
    """An OIP v2 request holding the instances as one batch (RequestError on a malformed body)."""
    if not (isinstance(body, dict) and "instances" in body):
        raise RequestError('the request body must be {"instances": [...]} or an Open Inference Protocol request '
                           '{"inputs": [...]}')
    unknown = sorted(set(body) - ALLOWED_KEYS)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(map(quote, unknown[:5]))}: an instances body is "
                           '{"instances": [...], "parameters"?: {...}}')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list, one entry per input row")
    parameters = body.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError("'parameters' must be an object")
    if all(isinstance(item, dict) for item in instances):
        return {"inputs": _named(instances, model)}
    if any(isinstance(item, dict) for item in instances):
        raise RequestError("instances mix objects and plain values; give every instance the same form")
    if model.text:
        if not all(isinstance(item, str) for item in instances):
            raise RequestError(f"this text model takes instances that are strings or {{{TEXT_INPUT!r}: string}}")
        return {"inputs": [{"name": TEXT_INPUT, "shape": [len(instances)], "datatype": "BYTES", "data": instances}]}
    if len(model.inputs) != 1:
        raise RequestError(f"this model has {len(model.inputs)} inputs ({', '.join(model.inputs)}); give each "
                           "instance as an object naming them")
    [spec] = model.inputs.values()
    return {"inputs": [_tensor(spec.name, instances, spec.datatype)]}


def _named(instances: list[dict], model: ServedModel) -> list[dict]:
    names = list(instances[0])
    for index, item in enumerate(instances):
        if set(item) != set(names):
            raise RequestError(f"instances[{index}] names {', '.join(map(quote, list(item)[:5]))}, instances[0] "
                               f"names {', '.join(map(quote, names[:5]))}; every instance names the same inputs")
    if names == [TEXT_INPUT]:
        texts = [item[TEXT_INPUT] for item in instances]
        return [{"name": TEXT_INPUT, "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    # Instances carry no datatype: each input takes the model's own. An unknown name is answered by the OIP
    # check, which lists the model's inputs (the datatype given to it here is never looked at).
    specs = {**model.alternatives, **model.inputs}
    return [_tensor(name, [item[name] for item in instances], specs[name].datatype if name in specs else "FP32")
            for name in names]


def _tensor(name, rows: list, datatype: str) -> dict:
    return {"name": name, "shape": [len(rows), *_shape_of(rows[0])], "datatype": datatype, "data": rows}


def _shape_of(value) -> list[int]:
    """The shape of one row, read along its first elements (a ragged row is refused later, by the OIP check)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def to_predictions(outputs: list[dict]) -> list:
    """OIP outputs (flat data + shape) -> one prediction per row of the batch."""
    rows = [np.asarray(out["data"], dtype=object if out["datatype"] == "BYTES" else None).reshape(out["shape"])
            for out in outputs]
    batch = rows[0].shape[0] if rows and rows[0].ndim else 1
    if len(outputs) == 1:
        return [rows[0][i].tolist() for i in range(batch)] if rows[0].ndim else [rows[0].tolist()]
    return [{out["name"]: (row[i].tolist() if row.ndim else row.tolist()) for out, row in zip(outputs, rows)}
            for i in range(batch)]
