"""What is distilled: the teacher's outputs, the student, the loss between them, and how the student is saved.

- ``EncoderTask``: a Hugging Face sentence encoder; the student's pooled, normalised embeddings (pooled as
  the handlers pool) learn the teacher's, by cosine or MSE.
- ``ClassifierTask``: a PyTorch tensor classifier; the student learns the teacher's temperature-softened
  outputs (KL x T^2) plus ``alpha`` x cross-entropy when the data has labels.

The teacher's outputs on the transfer data are computed once, when the task is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class EncoderTask:
    def __init__(self, config, info, data, teacher_dir: Path, student_dir: Path | None = None):
        """``student_dir``: a given student (``student.from_input``); otherwise one is cut from the teacher."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        from slimops.distillation.students import check_encoder_pair, encoder_student

        self.info = info
        self.teacher = AutoModel.from_pretrained(str(teacher_dir), use_safetensors=True, trust_remote_code=False).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir), trust_remote_code=False)
        if student_dir is not None:
            self.student = AutoModel.from_pretrained(str(student_dir), use_safetensors=True, trust_remote_code=False)
            check_encoder_pair(self.teacher, self.student, AutoTokenizer.from_pretrained(str(student_dir), trust_remote_code=False),
                               self.tokenizer)
        else:
            self.student = encoder_student(self.teacher, config.student.layers, config.student.intermediate_size)
        if config.freeze_embeddings:
            self.student.get_input_embeddings().weight.requires_grad_(False)
        self.loss_kind = config.loss
        self.inputs = list(data.inputs)
        self.targets = self._embed(self.teacher, self.inputs)  # teacher outputs, computed once

    def _encode(self, texts):
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.info.max_length,
                              return_tensors="pt")

    def _pool(self, hidden, mask):
        import torch

        if self.info.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1) if self.info.normalize else pooled

    def forward(self, model, texts):
        encoded = self._encode(texts)
        return self._pool(model(**encoded).last_hidden_state, encoded["attention_mask"])

    def _embed(self, model, texts, batch_size=64):
        import torch

        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = torch.cat([self.forward(model, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
        model.train(was_training)
        return out

    def loss(self, idx):
        import torch

        predicted = self.forward(self.student, [self.inputs[i] for i in idx])
        target = self.targets[idx]
        if self.loss_kind == "cosine":
            return (1 - torch.nn.functional.cosine_similarity(predicted, target, dim=1)).mean()
        return ((predicted - target) ** 2).sum(1).mean()

    def outputs(self, model, eval_data):
        return self._embed(model, list(eval_data.inputs)).numpy()

    def save(self, out_dir: Path, state):
        """Write the student into ``out_dir``, which already holds the input's tokenizer and config files."""
        from slimops.handlers.info import describe

        for name in ("config.json", "model.safetensors"):
            (out_dir / name).unlink(missing_ok=True)  # never write through a hard link to the teacher
        self.student.load_state_dict(state)
        self.student.save_pretrained(str(out_dir), safe_serialization=True)
        return describe(out_dir).model_copy(update={"max_length": self.info.max_length})


class ClassifierTask:
    def __init__(self, config, info, data, teacher_dir: Path, student_dir: Path | None = None, student_info=None,
                 threads: int | None = None):
        """``student_dir`` and ``student_info``: a given student (``student.from_input``); otherwise
        ``config.student.factory`` builds a fresh one."""
        import torch

        from slimops.distillation.students import check_classifier_pair, factory_student
        from slimops.handlers.runtime import TorchModule

        self.info = info
        self.config = config
        self.teacher = TorchModule(teacher_dir, info, threads).model.eval()
        num_labels = info.num_labels
        x = torch.from_numpy(np.asarray(data.inputs, dtype=np.float32))
        with torch.inference_mode():
            self.targets = torch.cat([self.teacher(x[i:i + 256]) for i in range(0, len(x), 256)])
        if num_labels is None:
            num_labels = self.targets.shape[1]
        self.num_labels = num_labels
        if student_dir is not None:
            self.student = TorchModule(student_dir, student_info, threads).model.train()
            check_classifier_pair(self.student, student_info.input_shape or info.input_shape, num_labels, student_dir)
            self.factory, self.kwargs = student_info.factory, student_info.kwargs
        else:
            self.student = factory_student(config.student.factory, config.student.kwargs, info.input_shape, num_labels)
            self.factory, self.kwargs = config.student.factory, config.student.kwargs
        self.x = x
        self.y = None if data.labels is None else torch.from_numpy(np.asarray(data.labels, dtype=np.int64))

    def loss(self, idx):
        import torch.nn.functional as F

        t = self.config.temperature
        logits = self.student(self.x[idx])
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(self.targets[idx] / t, dim=1),
                      log_target=True, reduction="batchmean") * t * t
        if self.y is not None and self.config.alpha > 0:
            return kl + self.config.alpha * F.cross_entropy(logits, self.y[idx])
        return kl

    def outputs(self, model, eval_data):
        import torch

        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = model(torch.from_numpy(np.asarray(eval_data.inputs, dtype=np.float32))).float().numpy()
        model.train(was_training)
        return out

    def save(self, out_dir: Path, state):
        from safetensors.torch import save_file

        from slimops.handlers.info import ModelInfo
        from slimops.handlers.runtime import dump_architecture

        out_info = ModelInfo(format="torch", task="tensor-classification", file="model.safetensors",
                             factory=self.factory, kwargs=self.kwargs,
                             input_shape=self.info.input_shape, num_labels=self.num_labels, normalize=False)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / out_info.file))
        dump_architecture(out_dir / "architecture.json", out_info)
        return out_info
