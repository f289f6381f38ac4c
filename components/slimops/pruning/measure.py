"""What a structured prune bought: parameters and MACs (counted) and latency (measured), before and after.

MACs come from torch-pruning's op counter (conv, linear, norm layers). For a transformer it does not see the
attention score / context matmuls (functional ops), so those are added analytically: 2 * L^2 * heads * head_dim
per layer at sequence length L. Latency is measured with the evaluate helpers, alternating the two models on
the same inputs so machine drift hits both alike; the ratios are what to read on a shared machine.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from slimops.evaluate import alternate_latency, alternate_throughput


def torch_cost(module, example) -> dict:
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(module.eval(), example)
    return {"macs": int(macs), "params": int(params)}


def encoder_cost(model, seq_len: int) -> dict:
    import torch
    import torch_pruning as tp

    from slimops.pruning.scores import encoder_layers

    feeds = {"input_ids": torch.ones(1, seq_len, dtype=torch.long),
             "attention_mask": torch.ones(1, seq_len, dtype=torch.long)}
    # The counter prints a batch-size warning for keyword inputs on stdout; the step's output stays clean.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        macs, params = tp.utils.count_ops_and_params(model.eval(), feeds)
    attention = sum(2 * seq_len * seq_len * layer.attention.self.all_head_size for layer in encoder_layers(model))
    return {"macs": int(macs) + attention, "params": int(params)}


def cost_metrics(before: dict, after: dict) -> dict:
    return {"params_before": before["params"], "params_after": after["params"],
            "params_ratio": after["params"] / before["params"],
            "macs_before": before["macs"], "macs_after": after["macs"], "macs_ratio": after["macs"] / before["macs"]}


def latency_metrics(before, after, inputs, *, rounds: int, latency_runs: int, batch_size: int = 32) -> dict:
    """Batch-1 p50 and batch-``batch_size`` throughput of both models, alternating rounds on the same inputs."""
    models = {"before": before, "after": after}
    latency = alternate_latency(models, inputs, runs=latency_runs, blocks=min(5, latency_runs))
    timing = alternate_throughput(models, inputs, batch_size=batch_size, rounds=rounds)
    ratios = [b / a for b, a in zip(timing["before"].seconds, timing["after"].seconds)]
    n = len(inputs)
    return {
        "p50_ms_before": latency["before"]["p50_ms"], "p50_ms_after": latency["after"]["p50_ms"],
        "latency_ratio": latency["after"]["p50_ms"] / latency["before"]["p50_ms"],
        f"throughput_b{batch_size}_before": n / timing["before"].median,
        f"throughput_b{batch_size}_after": n / timing["after"].median,
        "speedup": float(np.median(ratios)), "speedup_rounds": [round(r, 4) for r in ratios],
        "timing_samples": n, "timing_rounds": rounds,
    }
