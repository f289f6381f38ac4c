"""A small real NER model, built offline: the packaged all-MiniLM-L6-v2 fine-tuned briefly (seeded) as a
``BertForTokenClassification`` on a generated, seeded NER set (people, places and organisations in sentence
templates, BIO tags). The result is a plain Hugging Face directory (config.json with id2label/label2id,
model.safetensors, tokenizer files): a model slimops has never seen, as a team would hand it over.

    python -m slimops.zoo.token_classifier OUT_DIR [--steps 150]           # the model
    python -m slimops.zoo.token_classifier --data dev OUT.jsonl [--count 200]   # the generated data, as JSONL

The data is generated here from the templates and name lists below (nothing is downloaded, no licence attaches to
it): one JSON object a line, ``{"tokens": [...], "ner_tags": ["O", "B-PER", ...]}``. The dev split draws names the
train split never shows (a quarter of each list), so the dev score measures more than memorisation.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from slimops.zoo.finetune import generated_set_main, minilm_with_head, save_with_minilm_tokenizer, seed_all, train

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")  # "O" is id 0
SEEDS = {"train": 0, "dev": 1}

FIRST = ("Anna", "Ben", "Carlos", "Diana", "Ethan", "Fatima", "George", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yusuf",
         "Zoe", "Jordan", "Paris", "Chelsea", "Austin", "Georgia", "Kim", "Lee")
LAST = ("Smith", "Garcia", "Nakamura", "Okafor", "Novak", "Schmidt", "Rossi", "Kowalski", "Haddad", "Silva",
        "Johansson", "Dubois", "Chen", "Patel", "Murphy", "Ivanova", "Bianchi", "Mensah", "Larsen", "Khan",
        "Washington", "Ford", "London", "Street")
PLACES = ("Berlin", "Lagos", "Lima", "Oslo", "Nairobi", "Toronto", "Madrid", "Hanoi", "Cairo", "Quito", "Dublin",
          "Perth", "New York", "San Francisco", "Buenos Aires", "Hong Kong", "Cape Town", "Rio de Janeiro",
          "Kuala Lumpur", "Tel Aviv", "Jordan", "Georgia", "Washington", "Chelsea", "Victoria", "Florence",
          "Sydney", "Chad", "Reading", "Nice", "Mobile", "Bath")
ORGS = ("Siemens", "Unilever", "Reuters", "Oxfam", "Greenpeace", "Nokia", "Airbus", "Interpol", "UNICEF", "FIFA",
        "Red Cross", "United Nations", "World Bank", "General Electric", "Deutsche Bahn", "Bank of England",
        "Apple", "Amazon", "Shell", "Oracle", "Target", "Ford Motor Company", "Harvard University",
        "Médecins Sans Frontières", "Stanford University", "European Space Agency", "Delta Air Lines", "Puma",
        "Jaguar", "Corona", "Mercury Records", "Sun Life")
TEMPLATES = (
    "{PER} visited {LOC} last week .",
    "{PER} works for {ORG} in {LOC} .",
    "The {ORG} office in {LOC} hired {PER} .",
    "{ORG} announced that {PER} will lead its new team .",
    "Yesterday {PER} flew from {LOC} to {LOC} .",
    "{PER} and {PER} met at the {ORG} conference .",
    "According to {ORG} , prices in {LOC} rose again .",
    "{PER} said the weather in {LOC} was cold .",
    "We drove to {LOC} to see {PER} .",
    "Shares of {ORG} fell after {PER} resigned .",
    "{LOC} is home to the headquarters of {ORG} .",
    "The mayor of {LOC} , {PER} , spoke on Monday .",
    "She bought a ticket to {LOC} in March .",
    "Nothing much happened in the village today .",
    "{PER} joined {ORG} in 2019 .",
    "My friend {PER} lives near {LOC} .",
    "{ORG} opened a new store in {LOC} .",
    "Reporters asked {PER} about the plans of {ORG} .",
    "The bank by the river was closed for the holiday .",
    "{PER} , a spokesperson for {ORG} , declined to comment .",
    "Flights between {LOC} and {LOC} were cancelled .",
    "{ORG} and {ORG} signed a deal on Tuesday .",
    "I read an apple pie recipe that my aunt sent .",
    "{PER} grew up in {LOC} before moving to {LOC} .",
    "The report by {ORG} praised {PER} .",
    "A storm hit {LOC} on Friday night .",
    "{PER} thanked {PER} for the help .",
    "Police in {LOC} said {ORG} had been warned .",
    "The team will travel by train next spring .",
    "{PER} spoke to students at {ORG} .",
)


def _pool(names: tuple[str, ...], split: str) -> tuple[str, ...]:
    """Train sees the first three quarters of a list; dev draws from all of it (a quarter unseen in training)."""
    return names[: len(names) * 3 // 4] if split == "train" else names


def generate(split: str, count: int, seed: int | None = None) -> list[dict]:
    """``count`` sentences of the split: {"tokens": [...], "ner_tags": [...]} (BIO tags, one per word)."""
    rng = random.Random(SEEDS[split] if seed is None else seed)
    first, last, places, orgs = (_pool(n, split) for n in (FIRST, LAST, PLACES, ORGS))
    examples = []
    for _ in range(count):
        tokens, tags = [], []
        for piece in rng.choice(TEMPLATES).split():
            if piece in ("{PER}", "{LOC}", "{ORG}"):
                kind = piece[1:4]
                if kind == "PER":
                    name = rng.choice(first) if rng.random() < 0.3 else f"{rng.choice(first)} {rng.choice(last)}"
                else:
                    name = rng.choice(places if kind == "LOC" else orgs)
                words = name.split()
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(piece)
                tags.append("O")
        examples.append({"tokens": tokens, "ner_tags": tags})
    return examples


def build(out: Path, steps: int = 150, batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
          train_count: int = 600, frozen_layers: int = 0, threads: int | None = None) -> dict:
    """Fine-tune and save to ``out`` (a Hugging Face directory); return the training record.

    Each word's tag is learnt on its first sub-token; the other sub-tokens are ignored (-100), as in the
    transformers token-classification examples. ``frozen_layers``: the embeddings and this many lower encoder
    layers keep MiniLM's weights (a cheaper build for tests, the same architecture)."""
    import numpy as np
    import torch
    from transformers import BertForTokenClassification

    seed_all(seed, threads)
    train_set = generate("train", train_count)
    model, tokenizer = minilm_with_head(BertForTokenClassification, LABELS, frozen_layers)
    label2id = model.config.label2id
    order = np.random.default_rng(seed).permutation(len(train_set))

    def batch_loss(step):
        batch = [train_set[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        encoded = tokenizer([e["tokens"] for e in batch], is_split_into_words=True, padding=True, truncation=True,
                            max_length=128, return_tensors="pt")
        labels = torch.full(encoded["input_ids"].shape, -100, dtype=torch.long)
        for row, example in enumerate(batch):
            previous = None
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word != previous:
                    labels[row, position] = label2id[example["ner_tags"][word]]
                previous = word
        return model(**encoded, labels=labels).loss

    losses = train(model, steps, lr, batch_loss)
    save_with_minilm_tokenizer(model, out)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "frozen_layers": frozen_layers,
            "train_sentences": len(train_set), "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:]))}


def main(argv: list[str] | None = None) -> int:
    return generated_set_main(argv, prog="python -m slimops.zoo.token_classifier", description=__doc__.split("\n\n")[0],
                              build=build, generate=generate, splits=SEEDS, default_steps=150, unit="sentences")


if __name__ == "__main__":
    sys.exit(main())
