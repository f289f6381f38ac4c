"""Class: a saved Hugging Face dataset folder (format hf-dataset) is data, not trusted: links out of it, special
files, a state.json naming files elsewhere, corrupt Arrow shards and URLs are refused in one line, before any read.
An image folder (format imagefolder) likewise: links out, decompression bombs, a file that is not one of the four
image formats."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from .corpus import Case, Invocation, copy_model

FAST = ["--set", "rounds=1", "--set", "latency_runs=5", "--set", "measure_memory=false",
        "--set", "throughput_samples=16", "--set", "gate.min_speedup=null"]


def _saved(work: Path) -> Path:
    from datasets import Dataset

    folder = work / "data" / "pairs"
    Dataset.from_dict({"sentence1": ["A man plays."], "sentence2": ["Someone plays."], "label": [1]}).save_to_disk(folder)
    return folder


def _validate(tamper, stderr_has: str, path=None):
    """validate with ``format: hf-dataset`` on a saved folder that ``tamper(folder, work)`` changed."""
    def build(work: Path, bases) -> Invocation:
        folder = _saved(work)
        tamper(folder, work)
        spec = json.dumps({"format": "hf-dataset", "path": str(path(folder) if callable(path) else path or folder)})
        argv = ["step", "validate", "--model", bases.get("digits_int8"), "--baseline", bases.get("digits_onnx"),
                "--out", work / "out", "--set", f"data={spec}", *FAST]
        return Invocation(argv, out=work / "out", watch=[work / "data"], stderr_has=stderr_has, timeout=60)
    return build


def _secret(work: Path) -> Path:
    secret = work / "data" / "secret.txt"
    secret.write_text("api-key=hunter2\n")
    return secret


def _link_out(folder: Path, work: Path) -> None:
    os.symlink(_secret(work), folder / "notes.txt")


def _fifo(folder: Path, work: Path) -> None:
    os.mkfifo(folder / "data-00001-of-00002.arrow")  # a reader would block forever


def _state_names(filename: str):
    def tamper(folder: Path, work: Path) -> None:
        _secret(work)
        state = json.loads((folder / "state.json").read_text())
        state["_data_files"] = [{"filename": filename}]
        (folder / "state.json").write_text(json.dumps(state))
    return tamper


def _corrupt_shard(folder: Path, work: Path) -> None:
    shard = next(folder.glob("*.arrow"))
    shard.write_bytes(b"\xff" * 64)


def _split_escapes(folder: Path, work: Path) -> None:
    (folder.parent / "dict").mkdir()
    (folder.parent / "dict" / "dataset_dict.json").write_text(json.dumps({"splits": ["../pairs"]}))


# A processor for the digits CNN (8x8, one channel, gray levels / 255): so image decoding is reached.
DIGITS_PROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 8, "width": 8},
                    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False,
                    "image_mean": [0.0], "image_std": [1.0]}


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` gray pixels: a few bytes that a decoder would blow up to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"\0" * ((width + 1) * height) if width * height <= 4096 else b"\0" * 64  # a bomb's data is never read
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _images(tamper, stderr_has: str):
    """validate with ``format: imagefolder`` on a class folder that ``tamper(folder, work)`` filled, for the digits
    models given a preprocessor_config.json (so the images are decoded)."""
    def build(work: Path, bases) -> Invocation:
        models = {}
        for name in ("digits_int8", "digits_onnx"):
            models[name] = copy_model(bases.get(name), work / name)
            (models[name] / "preprocessor_config.json").write_text(json.dumps(DIGITS_PROCESSOR))
        folder = work / "data" / "images"
        (folder / "7").mkdir(parents=True)
        (folder / "7" / "a.png").write_bytes(png_header(8, 8))
        tamper(folder / "7", work)
        spec = json.dumps({"format": "imagefolder", "path": str(folder)})
        argv = ["step", "validate", "--model", models["digits_int8"], "--baseline", models["digits_onnx"],
                "--out", work / "out", "--set", f"data={spec}", *FAST]
        return Invocation(argv, out=work / "out", watch=[work / "data"], stderr_has=stderr_has, timeout=60)
    return build


def _bomb(width: int, height: int):
    def tamper(folder: Path, work: Path) -> None:
        (folder / "bomb.png").write_bytes(png_header(width, height))
    return tamper


def _image_link_out(folder: Path, work: Path) -> None:
    (work / "data" / "secret.png").write_bytes(png_header(8, 8))
    os.symlink(work / "data" / "secret.png", folder / "b.png")


def _eps_as_png(folder: Path, work: Path) -> None:
    # PostScript would run Ghostscript if Pillow picked its EPS plugin from the bytes; only PNG/JPEG/BMP/WebP decode
    (folder / "b.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")


def cases() -> list[Case]:
    return [
        Case("data/hf-dataset-link-outside", _validate(_link_out, "links outside the dataset folder")),
        Case("data/hf-dataset-fifo-shard", _validate(_fifo, "not a regular file")),
        Case("data/hf-dataset-state-names-parent", _validate(_state_names("../secret.txt"), "outside its folder")),
        Case("data/hf-dataset-state-names-absolute", _validate(_state_names("/etc/passwd"), "outside its folder")),
        Case("data/hf-dataset-corrupt-shard", _validate(_corrupt_shard, "datasets cannot load")),
        Case("data/hf-dataset-url", _validate(lambda folder, work: None, "is a URL", path="s3://bucket/pairs")),
        Case("data/hf-dataset-split-escapes", _validate(_split_escapes, "has no folder with state.json",
                                                        path=lambda folder: folder.parent / "dict")),
        Case("data/imagefolder-link-outside", _images(_image_link_out, "links outside the image folder")),
        Case("data/imagefolder-bomb-png", _images(_bomb(40_000, 40_000), "decompression bomb")),
        Case("data/imagefolder-bomb-png-over-warning", _images(_bomb(10_000, 10_000), "decompression bomb")),
        Case("data/imagefolder-eps-named-png", _images(_eps_as_png, "is not a readable PNG, JPEG, BMP or WebP")),
    ]
