"""A small real causal language model, built offline: a 4-layer GPT-2 (``GPT2LMHeadModel``, d_model 256) with its own
byte-level BPE tokenizer (4096 tokens), both trained here, seeded, on the sentences of the STS-B train TSV shipped in
examples/data/stsb. The result is a plain Hugging Face directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, special_tokens_map.json): a model slimops has never seen, as a team would hand it over.

    python -m slimops.zoo.tiny_lm OUT_DIR [--steps 300] [--sts examples/data/stsb/sts-train.tsv]

The tokenizer starts every text with ``<|endoftext|>`` (its BOS), so every word of a text is predicted and counted
in its perplexity. Only local files are read (scores and sentences CC BY-SA 4.0; see examples/data/stsb/LICENSE.txt).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from slimops.zoo.finetune import seed_all, train

SPECIAL = "<|endoftext|>"  # BOS, EOS and padding, as GPT-2 has it


def sts_sentences(path: Path) -> list[str]:
    """The distinct sentences of an STS-B TSV (columns 5 and 6), in file order."""
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                for sentence in (row[5].strip(), row[6].strip()):
                    if sentence:
                        seen.setdefault(sentence)
    return list(seen)


def train_tokenizer(sentences: list[str], vocab_size: int = 4096, max_length: int = 128):
    """A byte-level BPE (GPT-2's scheme) trained on ``sentences``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIAL} $A", special_tokens=[(SPECIAL, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL,
                                   model_max_length=max_length, padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"])


def build(out: Path, sts: Path, steps: int = 300, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
          layers: int = 4, width: int = 256, vocab_size: int = 4096, max_length: int = 128,
          threads: int | None = None) -> dict:
    """Train the tokenizer and the model, save both to ``out`` (a Hugging Face directory); return the record."""
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel

    seed_all(seed, threads)
    sentences = sts_sentences(Path(sts))
    if not sentences:
        raise SystemExit(f"no STS-B sentences in {sts}")
    tokenizer = train_tokenizer(sentences, vocab_size, max_length)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max_length, n_embd=width, n_layer=layers,
                        n_head=max(1, width // 64), n_inner=4 * width, bos_token_id=0, eos_token_id=0,
                        pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    order = np.random.default_rng(seed).permutation(len(sentences))

    def batch_loss(step):
        batch = [sentences[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        return model(**encoded, labels=labels).loss

    losses = train(model, steps, lr, batch_loss, warmup=max(1, steps // 20), floor=0.05)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "layers": layers, "width": width,
            "vocab_size": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
            "sentences": len(sentences), "first_loss": losses[0], "last_loss": float(np.mean(losses[-20:]))}


def main(argv: list[str] | None = None) -> int:
    repo_data = Path(__file__).resolve().parents[3] / "examples" / "data" / "stsb"
    parser = argparse.ArgumentParser(prog="python -m slimops.zoo.tiny_lm", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the model to")
    parser.add_argument("--sts", type=Path, default=repo_data / "sts-train.tsv", help="STS-B TSV whose sentences to train on")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the same model on every machine)")
    args = parser.parse_args(argv)
    if not args.sts.is_file():
        parser.error(f"STS-B data not found: {args.sts}; give --sts PATH")
    record = build(args.out, args.sts, steps=args.steps, seed=args.seed, threads=args.threads)
    print(f"wrote {args.out} ({record['parameters']:,} parameters, {record['steps']} steps, "
          f"loss {record['first_loss']:.3f} -> {record['last_loss']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
