"""Resumable training checkpoints beside a step's output: safetensors for tensors, JSON for the rest."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from slimops.errors import BadInput

CKPT_STATE = "state.json"
# What save_checkpoint writes: state.json (and its temp file), step-N/ folders (and their temp folders).
_OURS = re.compile(r"(\.state\.json\.tmp-\d+|\.?step-\d{8}(\.tmp-\d+)?)")
_STEP = re.compile(r"step-\d{8}")

def clone(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dir(out: Path) -> Path:
    """``.<OUT name>.ckpt`` beside OUT: outside the temporary output, so it survives a killed run."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.ckpt"


def check_ours(ckpt_dir: Path) -> None:
    """Refuse (exit 2) a checkpoint folder distill did not write: distill reuses it, and deletes it when stale
    or done. A link would send those deletes elsewhere; a folder of the user's that happens to be named
    ``.<OUT>.ckpt`` would be deleted whole."""
    if ckpt_dir.is_symlink() or (ckpt_dir.exists() and not ckpt_dir.is_dir()):
        raise BadInput(f"{ckpt_dir} (distill's checkpoint folder for this --out) is a link or a file; remove it "
                       "or give another --out")
    if not ckpt_dir.is_dir():
        return
    strays = [p.name for p in ckpt_dir.iterdir()
              if p.is_symlink() or not (p.name == CKPT_STATE and p.is_file() or _OURS.fullmatch(p.name))]
    if strays:
        raise BadInput(f"{ckpt_dir} (distill's checkpoint folder for this --out) holds files distill did not write "
                       f"({', '.join(sorted(strays)[:3])}); move it away or give another --out")


def flatten_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """Optimizer state as (tensors for safetensors, JSON-able rest): no pickle."""
    import torch

    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_dir: Path, config_hash: str, student, optimizer, best_state, meta: dict) -> None:
    """Write ``step-N/`` complete, then point ``state.json`` at it (atomically), then drop older ones."""
    import torch
    from safetensors.torch import save_file

    from slimops.manifest import write_json_atomic

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{meta['step']:08d}"
    tmp = ckpt_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp / "student.safetensors"))
    if best_state is not None:
        save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
    tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors["__torch_rng_state__"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    final = ckpt_dir / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json_atomic(ckpt_dir / CKPT_STATE, {"config_hash": config_hash, "latest": name, "optimizer": opt_meta, **meta})
    for old in ckpt_dir.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt_dir: Path, config_hash: str):
    """(meta, student weights, best weights or None, optimizer tensors), or None when absent or not ours."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((ckpt_dir / CKPT_STATE).read_text())
        if meta.get("config_hash") != config_hash or not _STEP.fullmatch(str(meta.get("latest"))):
            return None
        folder = ckpt_dir / meta["latest"]
        weights = load_file(str(folder / "student.safetensors"))
        best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").is_file() else None
        return meta, weights, best, load_file(str(folder / "optimizer.safetensors"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
