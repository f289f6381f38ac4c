"""Knowledge distillation on the CPU: a smaller student learns to reproduce a teacher.

- ``students``: build a student from the teacher (encoder layers kept, a classifier factory) or check a given one;
- ``tasks``: the teacher's outputs, the loss and how the student is saved, for encoders and classifiers;
- ``training``: the loop (``distill``), with evaluation, early stopping and resumable checkpoints;
- ``checkpoint``: those checkpoints on disk, safetensors + JSON (no pickle).
"""

from slimops.distillation.checkpoint import checkpoint_dir
from slimops.distillation.training import Distilled, distill

__all__ = ["Distilled", "checkpoint_dir", "distill"]
