"""What every runtime shares: the ``Runnable`` interface, and the tokenisation and pooling of text models.

Its own module so that the optional runtimes (OpenVINO) build on it without importing ``runtime``, which loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from slimops.errors import BadInput
from slimops.handlers.info import ModelInfo


class Runnable:
    def __init__(self, model_dir: Path, info: ModelInfo):
        self.model_dir = Path(model_dir)
        self.info = info

    def predict(self, batch) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TextMixin:
    """Tokenise the way the baseline was trained to be fed, then pool like sentence-transformers."""

    def _init_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), trust_remote_code=False)
            self.tokenizer(["A probe sentence."])  # a tokenizer that loads can still fail on text (an empty vocabulary)
            if self.info.task == "causal-lm":  # batches are padded on the right; GPT-2 style tokenizers pad with EOS
                self.tokenizer.padding_side = "right"
                if self.tokenizer.pad_token is None and self.tokenizer.eos_token is None:
                    raise BadInput(f"the tokenizer in {self.model_dir} has no pad_token and no eos_token to pad "
                                   "batches with; set pad_token in its tokenizer_config.json")
                if self.tokenizer.pad_token is None:
                    self.tokenizer.pad_token = self.tokenizer.eos_token
        except (KeyboardInterrupt, SystemExit, MemoryError, BadInput):
            raise
        except BaseException as err:  # transformers' errors, and the tokenizers library's Rust panics
            from slimops.formats import one_line

            raise BadInput(f"cannot load the tokenizer in {self.model_dir} ({type(err).__name__}: "
                           f"{one_line(err, 200)}); copy the tokenizer files of the base model beside it") from None

    def tokenize(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """Single texts, or (text, text_pair) pairs: a pair classifier sees ``[CLS] a [SEP] b [SEP]``."""
        texts = list(texts)
        if self.info.task == "token-classification":  # word lists; adds word_index (slimops.tasks)
            from slimops.tasks.token_classification import tokenize_words

            return tokenize_words(self.tokenizer, texts, self.info.max_length)
        if self.info.task == "question-answering":  # (question, context) pairs; adds offset_mapping
            from slimops.tasks.question_answering import tokenize_pairs

            return tokenize_pairs(self.tokenizer, texts, self.info.max_length)
        if texts and isinstance(texts[0], (tuple, list)):
            return dict(self.tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True,
                                       truncation="longest_first", max_length=self.info.max_length,
                                       return_tensors="np"))
        encoded = dict(self.tokenizer(texts, padding=True, truncation=True,
                                      max_length=self.info.max_length, return_tensors="np"))
        if self.info.task == "causal-lm":  # GPT-2 would add token_type_ids through its token embedding
            encoded.pop("token_type_ids", None)
        return encoded

    def finish_outputs(self, outputs: list[np.ndarray], names: list[str], encoded: dict) -> np.ndarray:
        """A graph's outputs (ONNX Runtime, OpenVINO) -> what ``predict`` returns; ``names``: the outputs' names."""
        if self.info.task == "question-answering":  # both logits -> each question's best span
            from slimops.tasks.question_answering import best_spans

            start, end = (outputs[names.index(n)] if n in names else outputs[i]
                          for i, n in enumerate(("start_logits", "end_logits")))
            return best_spans(start, end, encoded["offset_mapping"])
        output = np.asarray(outputs[0], dtype=np.float32)
        if self.info.task == "causal-lm":
            from slimops.tasks.causal_lm import rows

            return rows(output, encoded["input_ids"], encoded["attention_mask"], self.info.max_length)
        return self.finish(output, encoded["attention_mask"], encoded.get("word_index"))

    def finish(self, output: np.ndarray, attention_mask: np.ndarray, word_index: np.ndarray | None = None) -> np.ndarray:
        if self.info.task == "token-classification" and word_index is not None:  # per-token -> per-word logits
            from slimops.tasks.token_classification import word_logits

            return word_logits(output, word_index, self.info.max_length)
        if self.info.task != "sentence-embedding":
            return output
        if self.info.pooling == "cls":
            pooled = output[:, 0]
        else:
            mask = attention_mask[..., None].astype(output.dtype)
            pooled = (output * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self.info.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32)
