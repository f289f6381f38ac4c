"""A small real extractive question-answering model, built offline: the packaged all-MiniLM-L6-v2 fine-tuned
briefly (seeded) as a ``BertForQuestionAnswering`` on a generated, seeded QA set (short paragraphs of facts about
people, places, years and organisations; each question's answer is a span of its paragraph). The result is a plain
Hugging Face directory (config.json, model.safetensors, tokenizer files), as a team would hand it over.

    python -m slimops.zoo.qa_model OUT_DIR [--steps 300]              # the model
    python -m slimops.zoo.qa_model --data dev OUT.jsonl [--count 200]   # the generated data, as JSONL

The data is generated here from the templates below and the name lists of slimops.zoo.token_classifier (nothing is
downloaded, no licence attaches to it): one JSON object a line, SQuAD's layout, ``{"question": ..., "context": ...,
"answers": {"text": [...], "answer_start": [...]}}``. The dev split draws names the train split never shows (a
quarter of each list) and asks a third of its questions in wordings the train split never uses, so the dev score
measures more than memorisation.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from slimops.zoo.finetune import generated_set_main, minilm_with_head, save_with_minilm_tokenizer, seed_all, train
from slimops.zoo.token_classifier import FIRST, LAST, ORGS, PLACES, _pool

SEEDS = {"train": 0, "dev": 1}
# A fact (slots: PER, PER2, LOC, ORG, YEAR) and the questions it answers: (question, the slot that answers it). The
# third question of each fact is a wording only the dev split asks.
FACTS = (
    ("{PER} was born in {LOC} in {YEAR}.", (("Where was {PER} born?", "LOC"), ("In which year was {PER} born?", "YEAR"),
                                         ("What is the birthplace of {PER}?", "LOC"))),
    ("{PER} works for {ORG}.", (("Who works for {ORG}?", "PER"), ("Which organisation does {PER} work for?", "ORG"),
                                ("Who is employed by {ORG}?", "PER"))),
    ("{ORG} opened an office in {LOC} in {YEAR}.", (("Where did {ORG} open an office?", "LOC"),
                                                    ("When did {ORG} open its office in {LOC}?", "YEAR"),
                                                    ("In which city did {ORG} open an office?", "LOC"))),
    ("In {YEAR}, {PER} moved to {LOC}.", (("Where did {PER} move to?", "LOC"), ("When did {PER} move to {LOC}?", "YEAR"),
                                          ("To which city did {PER} move?", "LOC"))),
    ("{ORG} is led by {PER}.", (("Who leads {ORG}?", "PER"), ("Which organisation does {PER} lead?", "ORG"),
                               ("Who is the leader of {ORG}?", "PER"))),
    ("{PER} met {PER2} in {LOC}.", (("Who did {PER} meet in {LOC}?", "PER2"), ("Where did {PER} meet {PER2}?", "LOC"),
                                   ("Whom did {PER} see in {LOC}?", "PER2"))),
    ("The headquarters of {ORG} are in {LOC}.", (("Where are the headquarters of {ORG}?", "LOC"),
                                                 ("Which organisation has its headquarters in {LOC}?", "ORG"),
                                                 ("In which city is {ORG} based?", "LOC"))),
    ("{PER} won an award from {ORG} in {YEAR}.", (("Which organisation gave {PER} an award?", "ORG"),
                                                  ("Who won an award from {ORG}?", "PER"),
                                                  ("Who received an award from {ORG}?", "PER"))),
)
FILLERS = ("The weather was mild that spring.", "Few people noticed at the time.", "The story was told for years.",
           "Prices rose again that winter.")
SLOT = re.compile(r"\{(PER2|PER|LOC|ORG|YEAR)\}")


def generate(split: str, count: int, seed: int | None = None) -> list[dict]:
    """``count`` questions of the split, each on a paragraph of two or three facts (and maybe a filler sentence)."""
    rng = random.Random(SEEDS[split] if seed is None else seed)
    first, last, places, orgs = (_pool(n, split) for n in (FIRST, LAST, PLACES, ORGS))
    pick = {"PER": lambda: f"{rng.choice(first)} {rng.choice(last)}", "LOC": lambda: rng.choice(places),
            "ORG": lambda: rng.choice(orgs), "YEAR": lambda: str(rng.randint(1950, 2023))}
    pick["PER2"] = pick["PER"]
    examples = []
    for _ in range(count):
        facts = rng.sample(range(len(FACTS)), rng.choice((2, 3)))
        asked = rng.choice(facts)
        sentences = [(i, {slot: pick[slot]() for slot in dict.fromkeys(SLOT.findall(FACTS[i][0]))}) for i in facts]
        if rng.random() < 0.5:
            sentences.insert(rng.randint(0, len(sentences)), (None, {}))
        context, answer = "", None
        for fact, values in sentences:
            if context:
                context += " "
            template = FILLERS[rng.randrange(len(FILLERS))] if fact is None else FACTS[fact][0]
            if fact == asked:
                question, slot = rng.choice(FACTS[fact][1] if split == "dev" else FACTS[fact][1][:2])
                before = template.split("{" + slot + "}")[0]
                start = len(context) + len(SLOT.sub(lambda m: values[m.group(1)], before))
                answer = {"text": [values[slot]], "answer_start": [start]}
                question = SLOT.sub(lambda m: values[m.group(1)], question)
            context += SLOT.sub(lambda m: values[m.group(1)], template)
        examples.append({"question": question, "context": context, "answers": answer})
    return examples


def build(out: Path, steps: int = 300, batch_size: int = 16, lr: float = 1e-4, seed: int = 0,
          train_count: int = 2000, frozen_layers: int = 0, threads: int | None = None) -> dict:
    """Fine-tune and save to ``out`` (a Hugging Face directory); return the training record.

    Each answer is learnt as the tokens its characters cover (start and end positions, as the transformers
    question-answering examples train). ``frozen_layers``: the embeddings and this many lower encoder layers keep
    MiniLM's weights (a cheaper build for tests, the same architecture)."""
    import numpy as np
    import torch
    from transformers import BertForQuestionAnswering

    seed_all(seed, threads)
    train_set = generate("train", train_count)
    model, tokenizer = minilm_with_head(BertForQuestionAnswering, None, frozen_layers)
    order = np.random.default_rng(seed).permutation(len(train_set))

    def batch_loss(step):
        batch = [train_set[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        encoded = tokenizer([e["question"] for e in batch], [e["context"] for e in batch], padding=True,
                            truncation="only_second", max_length=384, return_offsets_mapping=True,
                            return_tensors="pt")
        offsets = encoded.pop("offset_mapping")
        starts, ends = torch.zeros(batch_size, dtype=torch.long), torch.zeros(batch_size, dtype=torch.long)
        for row, example in enumerate(batch):
            first_char = example["answers"]["answer_start"][0]
            last_char = first_char + len(example["answers"]["text"][0])
            context = [i for i, s in enumerate(encoded.sequence_ids(row)) if s == 1]
            starts[row] = next(i for i in context if offsets[row, i, 1] > first_char)
            ends[row] = next(i for i in reversed(context) if offsets[row, i, 0] < last_char)
        return model(**encoded, start_positions=starts, end_positions=ends).loss

    losses = train(model, steps, lr, batch_loss)
    save_with_minilm_tokenizer(model, out)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "frozen_layers": frozen_layers,
            "train_questions": len(train_set), "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:]))}


def main(argv: list[str] | None = None) -> int:
    return generated_set_main(argv, prog="python -m slimops.zoo.qa_model", description=__doc__.split("\n\n")[0],
                              build=build, generate=generate, splits=SEEDS, default_steps=300, unit="questions")


if __name__ == "__main__":
    sys.exit(main())
