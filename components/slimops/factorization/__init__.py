"""Low-rank factorization of linear layers in an ONNX model by truncated SVD, the rank chosen by the energy kept.

``MatMul(A, W[k x n])`` becomes ``MatMul(MatMul(A, U_r S_r [k x r]), V_r [r x n])`` where r is the
smallest rank whose squared singular values hold ``energy`` of the total. A layer is rewritten only
when that rank really saves weights and multiply-adds (``r (k + n) <= max_rank_ratio k n``); the
factors are not fine-tuned, so the task metric is what tells whether the energy kept was enough.

- ``svd``: the rank for an energy, and the factors;
- ``rewrite``: which nodes qualify and the graph surgery (``factorize_model``);
- ``files``: saving the result (external data past protobuf's limit), onnx.checker, the output difference.
"""

from slimops.factorization.files import check_output, count_params, output_difference, save_model
from slimops.factorization.rewrite import factorize_model
from slimops.factorization.svd import low_rank_factors, rank_for

__all__ = ["check_output", "count_params", "factorize_model", "low_rank_factors", "output_difference", "rank_for",
           "save_model"]
