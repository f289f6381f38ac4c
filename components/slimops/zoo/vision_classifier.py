"""A small real Hugging Face vision classifier, built offline: a ``ViTForImageClassification`` from a config
(8x8 one-channel images in 2x2 patches, so 16 patch tokens; 4 layers of width 128, 0.53M parameters),
initialised from a seed and trained on the digits train split (scikit-learn's 8x8 digits, as slimops' ``digits``
data format reads them). The result is a plain Hugging Face directory (config.json with id2label "0".."9",
model.safetensors, preprocessor_config.json): a vision model slimops has never seen, as a team would hand it over.

    python -m slimops.zoo.vision_classifier OUT_DIR [--epochs 20] [--images IMAGES_DIR]

Its pixel_values are the digits data as slimops gives them (N x 1 x 8 x 8, gray levels 0..16 scaled to [0, 1]).
Its image processor (a ViTImageProcessor) reproduces that scale from 8-bit grayscale files: resize to 8x8, rescale
by 1/255, no normalisation. ``--images`` writes the digits test split as such files (gray level v as
round(v * 255 / 16), so the processor gives v / 16 within 1/510), one folder per label: ``format: imagefolder``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimops.zoo.finetune import seed_all, train

LABELS = tuple(str(d) for d in range(10))


def vit_config(hidden_size: int = 128, layers: int = 4, heads: int = 4):
    from transformers import ViTConfig

    return ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=hidden_size,
                     num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden_size * 2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
                     architectures=["ViTForImageClassification"])


def image_processor():
    """Pixel values as the model was trained on: 8x8, 8-bit gray levels / 255 (mean 0 and std 1: not normalised)."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=True, size={"height": 8, "width": 8}, do_rescale=True, rescale_factor=1 / 255,
                             do_normalize=False, image_mean=[0.0], image_std=[1.0])


def write_images(out: Path, split: str = "test") -> Path:
    """The digits ``split`` as 8-bit grayscale PNG files, ``out/<label>/<index>.png`` (the imagefolder layout)."""
    import numpy as np
    from PIL import Image

    from slimops.data import DataSpec, load_dataset

    data = load_dataset(DataSpec(format="digits", split=split))
    out = Path(out)
    for index, (image, label) in enumerate(zip(data.inputs, data.labels)):
        folder = out / LABELS[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.rint(image[0] * 255).astype(np.uint8)  # v / 16 in [0, 1] -> round(v * 255 / 16)
        Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return out


def build(out: Path, epochs: int = 20, lr: float = 3e-3, batch_size: int = 64, seed: int = 0, layers: int = 4,
          hidden_size: int = 128, threads: int | None = 1) -> Path:
    """Train the ViT on the digits train split (``epochs`` passes, seeded) and save it to ``out`` (safetensors)."""
    import torch
    from transformers import ViTForImageClassification

    from slimops.data import DataSpec, load_dataset

    seed_all(seed, threads)
    data = load_dataset(DataSpec(format="digits", split="train"))
    x, y = torch.from_numpy(data.inputs), torch.from_numpy(data.labels)
    model = ViTForImageClassification(vit_config(hidden_size, layers))
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(x) // batch_size)
    order: list = []

    def batch_loss(step: int):
        if step % per_epoch == 0:  # a fresh seeded shuffle each epoch
            order[:] = torch.randperm(len(x), generator=generator).split(batch_size)
        idx = order[step % per_epoch]
        return model(pixel_values=x[idx], labels=y[idx]).loss

    train(model, epochs * per_epoch, lr, batch_loss, warmup=per_epoch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    image_processor().save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimops.zoo.vision_classifier",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the Hugging Face model to")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the digits train split")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, metavar="IMAGES_DIR",
                        help="also write the digits test split as PNG files, one folder per label (imagefolder)")
    args = parser.parse_args(argv)
    build(args.out, epochs=args.epochs, layers=args.layers, seed=args.seed)
    if args.images:
        write_images(args.images)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
