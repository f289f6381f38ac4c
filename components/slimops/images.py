"""``format: imagefolder``: image files, one subfolder per class, turned into the model's pixel_values by the model's
own image processor.

The layout is the one torchvision's ImageFolder and the ``datasets`` "imagefolder" builder read::

    images/
      cat/  001.jpg  002.png ...
      dog/  003.jpg ...

A subfolder's name is the class label, mapped through the model's ``label2id`` (config.json). The images go through
``transformers.AutoImageProcessor`` loaded from the model's ``preprocessor_config.json`` (JSON settings, never code:
trust_remote_code is False) at load time, so every runtime (PyTorch, ONNX, OpenVINO) and the input-shape check see
the same float32 tensors. Image files are untrusted: Pillow's decompression-bomb limit stays on (and its warning
is an error here), only PNG / JPEG / BMP / WebP decoders are used whatever the file claims to be, no link may lead
out of the folder, and the number of files and the bytes of one file are capped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from slimops.errors import BadInput

FORMAT = "imagefolder"
PROCESSOR_FILE = "preprocessor_config.json"
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DECODERS = ["PNG", "JPEG", "BMP", "WEBP"]  # Pillow never picks another plugin (EPS would run Ghostscript)
MAX_IMAGES = 100_000  # far more than an evaluation or calibration set needs
MAX_IMAGE_BYTES = 64 * 1024 * 1024
BATCH = 256  # images per processor call
BATCH_PIXELS = 64 * 1024 * 1024  # decoded pixels held at once: a batch is processed early when it reaches this


def check_folder(path: str | Path) -> Path:
    """The image folder; BadInput when it is not a local folder of class folders with nothing linking out."""
    path = Path(path)
    if not path.is_dir():
        raise BadInput(f"imagefolder path {path} is not a directory; give a folder holding one subfolder of images "
                       "per class")
    from slimops.handlers.info import check_tree

    check_tree(path, "image folder")  # no link out, no FIFO, at most MAX_ENTRIES entries
    return path


def list_images(root: Path) -> list[tuple[Path, str]]:
    """(image file, class name) for every image, sorted by class then name; BadInput on an empty layout."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))  # .ipynb_checkpoints
    if not classes:
        raise BadInput(f"image folder {root} holds no class folders; put the images in one subfolder per class, "
                       "named by the model's labels")
    found = []
    for folder in classes:
        images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                        and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not images:
            raise BadInput(f"class folder {folder} holds no images ({', '.join(SUFFIXES)}); add images or remove it")
        found.extend((image, folder.name) for image in images)
    if len(found) > MAX_IMAGES:
        raise BadInput(f"image folder {root} holds {len(found)} images, over the limit of {MAX_IMAGES}; give a "
                       "smaller evaluation set")
    return found


def interleave(found: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """One image of each class in turn, so that ``limit:`` keeps every class (calibration sees them all)."""
    by_class: dict[str, list] = {}
    for item in found:
        by_class.setdefault(item[1], []).append(item)
    queues = list(by_class.values())
    return [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]


def processor_dir(model_dirs) -> Path | None:
    """The first model directory that carries a preprocessor_config.json."""
    for model_dir in model_dirs:
        if model_dir and (Path(model_dir) / PROCESSOR_FILE).is_file():
            return Path(model_dir)
    return None


def read_imagefolder(spec, model_dirs, label2id: dict[str, int] | None):
    """The images as the model's pixel_values (float32, N x C x H x W) with their class names as raw labels."""
    from slimops.data import Dataset

    root = check_folder(spec.path)
    found = list_images(root)
    if label2id:  # before any image is decoded: a class the model does not know is a layout error
        for folder in sorted({name for _, name in found}):
            if folder not in label2id and not (folder.isdigit() and int(folder) in label2id.values()):  # a class id
                from slimops.formats import quoted

                known = ", ".join(quoted(name) for name in sorted(label2id, key=label2id.get)[:20])
                raise BadInput(f"class folder {root / folder} is not among the model's labels ({known}); name the "
                               "folders by the model's labels (config.json label2id)")
    found = interleave(found)[: spec.limit]
    source = processor_dir(model_dirs)
    if source is None:
        shown = ", ".join(str(d) for d in model_dirs if d) or "the model"
        raise BadInput(f"image files need the model's {PROCESSOR_FILE} to become pixel_values, and {shown} has none; "
                       f"add it (save the model's image processor with save_pretrained) or give tensors (npz/digits)")
    processor = load_processor(source)
    mode = "L" if num_channels(source) == 1 else "RGB"
    batches, arrays = [], []
    for number, (path, _) in enumerate(found, 1):
        arrays.append(decode(path, mode))
        if len(arrays) == BATCH or sum(a.size for a in arrays) >= BATCH_PIXELS or number == len(found):
            batches.append(pixel_values(processor, arrays, root, source))
            arrays = []
    inputs = np.concatenate(batches).astype(np.float32)
    if not np.isfinite(inputs).all():
        raise BadInput(f"{source / PROCESSOR_FILE} turns the images into NaN or inf (image_std 0?); fix its settings")
    return Dataset(inputs=inputs, raw_labels=[name for _, name in found], label_where=[str(p.parent) for p, _ in found])


def load_processor(model_dir: Path):
    from transformers import AutoImageProcessor

    try:
        # use_fast=False: the fast processors need torchvision; the slow ones read the same JSON settings
        return AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=False, local_files_only=True,
                                                  use_fast=False)
    except Exception as err:  # noqa: BLE001 - ValueError / OSError / KeyError: the JSON does not name a processor
        from slimops.formats import library_error

        raise BadInput(f"cannot load the image processor from {model_dir / PROCESSOR_FILE} ({library_error(err)}); "
                       "save it with the model's image processor's save_pretrained") from None


def num_channels(model_dir: Path) -> int:
    """config.json's num_channels (the model's input), else the processor's image_mean length, else 3 (RGB)."""
    from slimops.formats import load_json_file

    for name, key in (("config.json", "num_channels"), (PROCESSOR_FILE, "image_mean")):
        path = model_dir / name
        if path.is_file():
            value = load_json_file(path)
            value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, int) and value > 0:
                return value
            if isinstance(value, list) and value:
                return len(value)
    return 3


def decode(path: Path, mode: str) -> np.ndarray:
    """One image file as an H x W x C uint8 array in ``mode``; BadInput naming the file when it cannot be."""
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise BadInput(f"image {path} is {size} bytes, over the limit of {MAX_IMAGE_BYTES}; shrink it")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; a warning is a refusal here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=DECODERS) as image:
                image = image.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadInput(f"image {path} is too large to decode ({err}); it may be a decompression bomb: "
                       "resize it") from None
    except UnidentifiedImageError:
        raise BadInput(f"image {path} is not a readable PNG, JPEG, BMP or WebP file; replace or remove it") from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt data inside a known format
        raise BadInput(f"image {path} cannot be decoded ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                       "replace or remove it") from None
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def pixel_values(processor, arrays: list[np.ndarray], root: Path, source: Path) -> np.ndarray:
    try:
        out = processor(images=arrays, input_data_format="channels_last", return_tensors="np")
    except Exception as err:  # noqa: BLE001 - ValueError when sizes differ and the processor does not resize, ...
        from slimops.formats import library_error

        raise BadInput(f"the image processor of {source} cannot turn the images in {root} into pixel_values "
                       f"({library_error(err)}); check {PROCESSOR_FILE} (do_resize) and the images") from None
    return np.asarray(out["pixel_values"])


def fingerprint(path: str | Path) -> str:
    """One sha256 over every image (relative path and content), for the manifest and the step cache."""
    from slimops.manifest import digest_of, sha256_file

    root = check_folder(path)
    return digest_of({image.relative_to(root).as_posix(): sha256_file(image) for image, _ in list_images(root)})