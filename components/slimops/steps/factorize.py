"""factorize: low-rank factorization of linear layers by truncated SVD, the rank chosen by the energy kept.

``MatMul(A, W[k x n])`` becomes ``MatMul(MatMul(A, U_r S_r [k x r]), V_r [r x n])`` where r is the
smallest rank whose squared singular values hold ``energy`` of the total. A layer is rewritten only
when that rank really saves weights and multiply-adds (``r (k + n) <= max_rank_ratio k n``); the
factors are not fine-tuned, so the task metric is what tells whether the energy kept was enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from slimops.onnx_graph import gemm_to_matmul
from slimops.steps import Step, StepConfig, StepResult

# Above this many bytes of weights the graph cannot be one protobuf; it is saved with external data.
_PROTOBUF_LIMIT = 1_800_000_000
_FLOAT_TYPES = (1, 10, 11)  # TensorProto FLOAT, FLOAT16, DOUBLE


class FactorizeConfig(StepConfig):
    energy: float = Field(0.95, gt=0, le=1, description="keep the smallest rank whose squared singular values "
                                                         "sum to at least this fraction of the total (0 < energy <= 1)")
    min_weights: int = Field(65536, ge=1, description="only MatMul/Gemm layers whose constant 2-D weight has at "
                                                      "least this many elements")
    max_rank_ratio: float = Field(0.8, gt=0, le=1, description="factorize a k x n layer only when "
                                                               "rank*(k+n) <= max_rank_ratio*k*n (it saves "
                                                               "weights and MACs); otherwise leave it")
    exclude_nodes: list[str] = Field(default_factory=list, description="names of MatMul/Gemm nodes (as in the "
                                                                       "input graph) to leave alone")


class Factorize(Step):
    name = "factorize"
    summary = "low-rank factorization of MatMul/Gemm weights by truncated SVD (rank chosen by the energy kept)"
    Config = FactorizeConfig
    accepts = ("onnx",)
    produces = "onnx"

    def run(self, ctx, config: FactorizeConfig) -> StepResult:
        import onnx

        info = ctx.model_info
        ctx.require_onnx("factorize")
        ctx.carry_files()
        model = onnx.load(str(ctx.model_dir / info.file))
        params_before = count_params(model)
        details = factorize_model(model, config.energy, config.min_weights, config.max_rank_ratio,
                                  config.exclude_nodes)
        target = ctx.out_dir / "model.onnx"
        save_model(model, target)
        problem = check_output(target, ctx.model_dir / info.file)
        if problem:
            details["checker"] = problem
        out_info = info.model_copy(update={"file": "model.onnx"})
        metrics = {"params_before": params_before, "params_after": count_params(model),
                   "factorized_layers": len(details["factorized"]),
                   "parity_max_abs_diff": parity(ctx, info, out_info)}
        return StepResult(model_info=out_info, metrics=metrics, details=details)


# ----------------------------------------------------------------------------- the rewrite


@dataclass
class _Candidate:
    index: int  # position in graph.node of the node replaced (the MatMul, or the Gemm it came from)
    origin: object  # that node
    matmul: object  # MatMul(A, W) computing the product (a rewritten Gemm's, or the node itself)
    init: object  # W's TensorProto, shaped [k, n] (a transB Gemm's weight comes transposed)
    key: str  # identifies W as used: consumers of one weight share one pair of factors
    bias: object | None = None  # a rewritten Gemm's bias Add

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.init.dims[0]), int(self.init.dims[1])

    def weight(self) -> np.ndarray:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.init)


def factorize_model(model, energy: float, min_weights: int, max_rank_ratio: float,
                    exclude: list[str] = ()) -> dict:
    """Rewrite ``model`` in place; return what was factorized and what was skipped, and why."""
    graph = model.graph
    exclude = set(exclude)
    candidates = _candidates(model)
    taken = _tensor_names(graph)
    factored: dict[str, tuple[str, str, int, float]] = {}  # weight key -> (U name, V name, rank, energy kept)
    replacements: dict[int, list] = {}
    factorized, skipped = [], []
    for cand in candidates:
        name = cand.origin.name
        k, n = cand.shape
        row = {"node": name, "shape": [k, n]}
        if name in exclude:
            skipped.append({**row, "reason": "excluded"})
            continue
        if k * n < min_weights:
            skipped.append({**row, "reason": "too small", "weights": k * n, "min_weights": min_weights})
            continue
        if cand.key not in factored:
            weight = cand.weight()
            rank, kept = rank_for(np.linalg.svd(weight.astype(np.float64), compute_uv=False), energy)
            if rank * (k + n) > max_rank_ratio * k * n:
                skipped.append({**row, "reason": "not worth it at this rank", "rank": rank,
                                "energy_kept": round(kept, 6), "max_rank": int(max_rank_ratio * k * n // (k + n))})
                continue
            weight_name = cand.origin.input[1]
            u_name, v_name = _unique(f"{weight_name}_lowrank_U", taken), _unique(f"{weight_name}_lowrank_V", taken)
            first, second = low_rank_factors(weight, rank)
            graph.initializer.extend([_tensor(first, u_name), _tensor(second, v_name)])
            factored[cand.key] = (u_name, v_name, rank, kept)
        u_name, v_name, rank, kept = factored[cand.key]
        replacements[cand.index] = _low_rank_nodes(cand, u_name, v_name, taken)
        factorized.append({**row, "rank": rank, "energy_kept": round(kept, 6),
                           "params_before": k * n, "params_after": rank * (k + n)})

    if replacements:
        replaced_weights = {graph.node[i].input[1] for i in replacements}
        nodes = []
        for i, node in enumerate(graph.node):
            nodes.extend(replacements.get(i, [node]))
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused(graph, replaced_weights)
    details = {"factorized": factorized, "skipped": skipped}
    if not factorized:
        details["note"] = "no layer qualified; the graph is written unchanged"
    unmatched = sorted(exclude - {c.origin.name for c in candidates})
    if unmatched:
        details["unmatched_exclude_nodes"] = unmatched
    return details


def rank_for(singular_values: np.ndarray, energy: float) -> tuple[int, float]:
    """Smallest rank whose squared singular values hold ``energy`` of the total, and the fraction it holds."""
    squares = np.asarray(singular_values, dtype=np.float64) ** 2
    total = squares.sum()
    if total == 0:
        return 1, 1.0  # an all-zero weight: rank 1 (of zeros) is exact
    fraction = np.cumsum(squares) / total
    fraction[-1] = 1.0  # the full rank keeps everything, whatever the rounding says
    rank = min(int(np.searchsorted(fraction, energy, side="left")) + 1, len(fraction))
    return rank, float(fraction[rank - 1])


def low_rank_factors(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(U_r * S_r [k x r], V_r [r x n]) in the weight's dtype: their product is W's best rank-r approximation."""
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    dtype = weight.dtype if weight.dtype in (np.float16, np.float64) else np.float32
    return (np.ascontiguousarray((u[:, :rank] * s[:rank]).astype(dtype)),
            np.ascontiguousarray(vt[:rank].astype(dtype)))


def _candidates(model) -> list[_Candidate]:
    """MatMuls with a constant 2-D float weight, including torch's nn.Linear Gemms (through gemm_to_matmul)."""
    import onnx

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    overridable = {i.name for i in graph.input}  # an initializer that is also an input is not a constant

    def constant(name) -> bool:
        init = inits.get(name)
        return (init is not None and name not in overridable and len(init.dims) == 2
                and init.data_type in _FLOAT_TYPES)

    # Gemms go through the shared rewrite on a model that holds only them and their weights, so the
    # Gemms left alone stay Gemms and the big graph is not copied.
    gemms = [i for i, node in enumerate(graph.node)
             if node.op_type == "Gemm" and node.domain in ("", "ai.onnx") and len(node.input) > 1]
    converted = {}
    if gemms:
        mini = onnx.ModelProto()
        for i in gemms:
            copy = mini.graph.node.add()
            copy.CopyFrom(graph.node[i])
            copy.name = f"gemm{i}"  # unique, whatever the original names
            if constant(copy.input[1]):
                # Each Gemm its own copy of the weight: gemm_to_matmul names the MatMul weight after
                # the Gemm's, and one weight may feed Gemms with and without transB.
                weight = mini.graph.initializer.add()
                weight.CopyFrom(inits[copy.input[1]])
                weight.name = copy.input[1] = f"gemm{i}_W"
        mini = gemm_to_matmul(mini)
        mini_inits = {init.name: init for init in mini.graph.initializer}
        by_name = {node.name: node for node in mini.graph.node}
        for i in gemms:
            matmul = by_name.get(f"gemm{i}_MatMul")
            if matmul is not None:
                converted[i] = (matmul, by_name.get(f"gemm{i}_Bias"), mini_inits[matmul.input[1]])

    found = []
    for i, node in enumerate(graph.node):
        if i in converted:
            matmul, bias, init = converted[i]
            if bias is not None:
                bias.name = (node.name or node.output[0]) + "_Bias"
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            found.append(_Candidate(i, node, matmul, init, node.input[1] + ("^T" if transposed else ""), bias))
        elif (node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(node.input) == 2
              and constant(node.input[1])):
            found.append(_Candidate(i, node, node, inits[node.input[1]], node.input[1]))
    return found


def _low_rank_nodes(cand: _Candidate, u_name: str, v_name: str, taken: set[str]) -> list:
    from onnx import helper

    base = cand.origin.name or cand.matmul.output[0]
    product = cand.matmul.output[0]
    middle = _unique(f"{product}_lowrank", taken)
    nodes = [helper.make_node("MatMul", [cand.matmul.input[0], u_name], [middle],
                              name=_unique(f"{base}_lowrank_U", taken)),
             helper.make_node("MatMul", [middle, v_name], [product], name=_unique(f"{base}_lowrank_V", taken))]
    if cand.bias is not None:
        nodes.append(cand.bias)
    return nodes


def _tensor(array: np.ndarray, name: str):
    from onnx import numpy_helper

    return numpy_helper.from_array(array, name)


def _tensor_names(graph) -> set[str]:
    names = {init.name for init in graph.initializer}
    names |= {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _drop_unused(graph, names: set[str]) -> None:
    """Remove the replaced weights that nothing reads any more (subgraphs and graph outputs included)."""
    used = {o.name for o in graph.output}
    stack = list(graph.node)
    while stack:
        node = stack.pop()
        used.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                stack.extend(sub.node)
    kept = [init for init in graph.initializer if init.name not in names or init.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


# ----------------------------------------------------------------------------- saving and measuring


def count_params(model) -> int:
    return int(sum(int(np.prod(init.dims, dtype=np.int64)) for init in model.graph.initializer))


def save_model(model, target) -> None:
    import onnx

    size = sum(len(init.raw_data) or int(np.prod(init.dims, dtype=np.int64)) * 4 for init in model.graph.initializer)
    if size > _PROTOBUF_LIMIT:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(target))


def check_output(target, source) -> str | None:
    """Run onnx.checker on the output. A failure is ours (raised) unless the input fails it already,
    e.g. the fp16 quantizer's graph whose input Casts come after their consumers; ORT still runs those."""
    import onnx

    try:
        onnx.checker.check_model(str(target))
        return None
    except onnx.checker.ValidationError:
        try:
            onnx.checker.check_model(str(source))
        except onnx.checker.ValidationError as err:
            return f"the input model already fails onnx.checker: {str(err).splitlines()[0][:200]}"
        raise


def parity(ctx, info, out_info) -> float:
    """Max abs difference of the outputs (logits or pooled embeddings) on the sample batch: informational."""
    from slimops.handlers import load
    from slimops.handlers.runtime import sample_batch

    batch = sample_batch(info, 4)
    before = load(ctx.model_dir, info, ctx.threads).predict(batch)
    after = load(ctx.out_dir, out_info, ctx.threads).predict(batch)
    return float(np.max(np.abs(before - after)))


STEP = Factorize
