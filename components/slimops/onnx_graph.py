"""Small ONNX graph rewrites shared by steps (int4 quantization, low-rank factorization)."""

from __future__ import annotations

import numpy as np


def gemm_to_matmul(model):
    """Rewrite Gemm(A, W, b) with a constant W as MatMul(A, W') + b: MatMulNBits only replaces MatMul,
    and torch.onnx writes every nn.Linear as Gemm."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    transposed: dict[tuple[str, bool], str] = {}  # one new initializer per (weight, transB), however many Gemms share it
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        key = (node.input[1], bool(attrs.get("transB", 0)))
        if key not in transposed:
            weight = numpy_helper.to_array(inits[node.input[1]])
            weight = weight.T if key[1] else weight
            transposed[key] = f"{node.input[1]}_matmul{'_t' if key[1] else ''}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), transposed[key]))
        weight_name = transposed[key]
        has_bias = len(node.input) > 2 and node.input[2]
        product = node.output[0] + "_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [product], name=node.name + "_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name + "_Bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # Drop only the Gemm weights this rewrite made unused (never what a subgraph might still read).
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer
            if init.name in used or init.name not in {weight for weight, _ in transposed}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model
